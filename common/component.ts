// Writing a Tessera component in TypeScript: a few lines.
//
//   import { serveComponent } from '<tessera>/common/component';
//   serveComponent({ kind: 'parser', version: '1.0.0', operations: {
//     parse: async (input, step) => Buffer.from(JSON.stringify(parse(input.toString()))),
//   } });
//
// It serves tessera.v1.Component on 127.0.0.1:$PORT_GRPC (host networking), counts the steps
// it runs (queue depth, in flight, processed, failed, p95 latency) and reports them to the
// local agent's task-state endpoint every second, so scaling policies and the job scheduler
// see how it is doing. A handler's exception becomes the step's gRPC status; a TesseraError
// keeps its own code.
import * as grpc from '@grpc/grpc-js';
import { InvalidArgumentError, toServiceError } from './errors';
import { bind, guardDeserializers, malformedReason, SERVER_OPTIONS } from './grpc';
import { tesseraProto } from './proto';
import { reportTaskState } from './task-reporter';
import { serveMux } from './mux';
import type { Step__Output } from './generated/tessera/v1/Step';
import type { StepResult } from './generated/tessera/v1/StepResult';

/** A result with headers: they ride along to the next stages (and can steer a when_header rule). */
export interface OperationResult { payload: Buffer | string | Uint8Array; headers?: Record<string, string> }
export type Operation = (payload: Buffer, step: Step__Output) => Promise<Buffer | string | Uint8Array | OperationResult>;

export interface ComponentOptions {
  kind: string;
  version?: string;
  operations: Record<string, Operation>;
  /** The operation for steps that name none (default: the first one). */
  defaultOperation?: string;
  /** Where to listen (default 127.0.0.1:$PORT_GRPC, or a free port). */
  listen?: string;
  /** How many steps run at once; more wait in the queue. */
  concurrency?: number;
  reportIntervalMs?: number;
  env?: NodeJS.ProcessEnv;
  /** On SIGTERM, stop taking steps, finish the ones in flight, exit (default: true). */
  handleSignals?: boolean;
}

export interface RunningComponent {
  port: number;
  stats(): { queueDepth: number; inFlight: number; processed: number; failed: number; latencyP95Ms: number };
  stop(): Promise<void>;
}

export async function serveComponent(o: ComponentOptions): Promise<RunningComponent> {
  const env = o.env ?? process.env;
  const names = Object.keys(o.operations);
  if (!names.length) throw new Error('a component needs at least one operation');
  const concurrency = o.concurrency ?? 16;
  let inFlight = 0;
  let processed = 0;
  let failed = 0;
  const waiting: (() => void)[] = [];
  // The last 512 step latencies, as a ring.
  const latencies: number[] = [];
  let nextLatency = 0;

  const acquire = () => (inFlight < concurrency ? (inFlight++, Promise.resolve()) : new Promise<void>((r) => waiting.push(() => { inFlight++; r(); })));
  const release = () => {
    inFlight--;
    waiting.shift()?.();
  };
  const p95 = () => {
    if (!latencies.length) return 0;
    const s = latencies.slice().sort((a, b) => a - b);
    return s[Math.min(s.length - 1, Math.ceil(0.95 * s.length) - 1)];
  };

  /** Runs one step through the queue; rejects with a status error (a TesseraError keeps its code). */
  const runStep = async (step: Step__Output): Promise<StepResult> => {
    const op = step.operation || o.defaultOperation || names[0];
    const fn = o.operations[op];
    if (!fn) throw InvalidArgumentError.field('operation', `${o.kind} has no operation "${op}" (it has ${names.join(', ')})`);
    await acquire();
    const t0 = performance.now();
    try {
      const out = await fn(step.payload ?? Buffer.alloc(0), step);
      processed++;
      const r: OperationResult = typeof out === 'object' && out !== null && 'payload' in out && !(out instanceof Uint8Array) ? out : { payload: out as Buffer | string };
      return { payload: Buffer.isBuffer(r.payload) ? r.payload : Buffer.from(r.payload as string | Uint8Array), headers: r.headers ?? {} };
    } catch (err) {
      failed++;
      throw err;
    } finally {
      latencies[nextLatency] = performance.now() - t0;
      nextLatency = (nextLatency + 1) % 512;
      release();
    }
  };

  const server = new grpc.Server(SERVER_OPTIONS);
  // Broken protobuf bytes end a Stream with INVALID_ARGUMENT (serveMux) instead of INTERNAL.
  server.addService(guardDeserializers(tesseraProto().Component.service), {
    Invoke: (call: grpc.ServerUnaryCall<Step__Output, StepResult>, cb: grpc.sendUnaryData<StepResult>) => {
      const bad = malformedReason(call.request);
      if (bad !== undefined) return cb(toServiceError(InvalidArgumentError.field('step', `malformed protobuf message: ${bad}`)) as grpc.ServiceError);
      runStep(call.request).then((r) => cb(null, r), (err) => cb(toServiceError(err) as grpc.ServiceError));
    },
    Stream: (call: grpc.ServerDuplexStream<Record<string, unknown>, Record<string, unknown>>) => {
      serveMux(call, { req: 'steps', res: 'results' }, runStep, (code, error) => ({ errorCode: code, error }));
    },
    Describe: (_call: unknown, cb: grpc.sendUnaryData<unknown>) => cb(null, { kind: o.kind, version: o.version ?? '', operations: names }),
  } as grpc.UntypedServiceImplementation);
  const listen = o.listen ?? `127.0.0.1:${env.PORT_GRPC ?? 0}`;
  const port = await bind(server, listen, grpc.ServerCredentials.createInsecure());

  const stats = () => ({ queueDepth: waiting.length, inFlight, processed, failed, latencyP95Ms: Math.round(p95() * 100) / 100 });
  const timer = setInterval(() => void reportTaskState(stats(), env).catch(() => {}), o.reportIntervalMs ?? 1_000);
  timer.unref();
  const stop = () => new Promise<void>((resolve) => {
    clearInterval(timer);
    // tryShutdown refuses new calls and waits for the ones in flight: a rolling update or a
    // scale-down loses no step (the job scheduler retries refused ones elsewhere).
    server.tryShutdown(() => resolve());
  });
  if (o.handleSignals ?? true) {
    process.once('SIGTERM', () => void stop().then(() => process.exit(0)));
    process.once('SIGINT', () => void stop().then(() => process.exit(0)));
  }
  return { port, stats, stop };
}
