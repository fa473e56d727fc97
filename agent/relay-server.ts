// The agent's step relay: serves tessera.v1.StepRelay on --relay-listen. The leader (or the
// agent of the previous hop) hands it a route; it runs the hops whose instances live on this
// host over loopback and passes the output straight to the next host's agent, so at high rates
// a job's data flows host to host and the coordinator only plans, admits and records.
// With TLS, only coordinators, agents and admin clients (by certificate role) may call it. The same server
// serves AgentLogs (an instance's container output) to coordinators.
import * as grpc from '@grpc/grpc-js';
import { bind, clientCredentials, guardDeserializers, malformedReason, SERVER_OPTIONS, serverCredentials, serverStream, unary } from '../common/grpc';
import { serveMux } from '../common/mux';
import { InvalidArgumentError, PermissionDeniedError, toServiceError } from '../common/errors';
import type { Logger } from '../common/logger';
import { tesseraProto } from '../common/proto';
import { deadlineHere, RELAY_FEATURES, ROUTE_IDS, RouteTable, StepRunner } from '../common/relay';
import { LiveTls, peerIdentity } from '../common/tls';
import { StreamTickets, TicketKeys } from '../common/relay-ticket';
import type { RelayRequest__Output } from '../common/generated/tessera/v1/RelayRequest';
import type { RelayResult } from '../common/generated/tessera/v1/RelayResult';
import type { InstanceLogsRequest__Output } from '../common/generated/tessera/v1/InstanceLogsRequest';
import type { LogChunk } from '../common/generated/tessera/v1/LogChunk';
import type { ExecInstanceRequest__Output } from '../common/generated/tessera/v1/ExecInstanceRequest';
import { validateExec } from '../common/exec';
import type { ExecChunk } from '../common/generated/tessera/v1/ExecChunk';
import type { ExecInput__Output } from '../common/generated/tessera/v1/ExecInput';
import type { DockerRuntime } from './docker-runtime';
import type { VolumeTransfer } from './volumes';
import type { VolumeRef__Output } from '../common/generated/tessera/v1/VolumeRef';
import type { VolumeChunk, VolumeChunk__Output } from '../common/generated/tessera/v1/VolumeChunk';
import type { VolumeWritten } from '../common/generated/tessera/v1/VolumeWritten';

/**
 * The agent starts with V8's optimizing compiler off (it saves ~7 MB on a host that only runs
 * containers). A host that relays job steps needs it: the relay path is hot. Turned on at the
 * first relayed step (V8 honours --opt for functions that get hot from then on).
 */
let optimizing = false;
function relayTraffic(): void {
  if (optimizing) return;
  optimizing = true;
  if (process.env.TESSERA_AGENT_V8_OPT === '0') return;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const v8 = require('node:v8') as typeof import('node:v8');
  v8.setFlagsFromString('--opt');
  v8.setFlagsFromString('--sparkplug');
  // And code for speed again: with --optimize-for-size left on, a relaying agent spent 2.2x the
  // CPU per job (measured at 64 jobs in flight: 177 us against 79 us with both flags off).
  v8.setFlagsFromString('--no-optimize-for-size');
}

/**
 * Who may hand this agent a route: coordinators, other agents (the next hop of a chain), and
 * admin clients running direct jobs (Admin.DirectJobs: the leader leased them the route), these
 * only for jobs whose lease ticket holds (common/relay-ticket.ts).
 */
const RELAY_ROLES = new Set(['coordinator', 'agent', 'admin']);

export class RelayServer {
  readonly runner: StepRunner;
  private server?: grpc.Server;
  address = '';
  relayed = 0;
  /** The keys of relay tickets, from coordinators' Welcome messages. */
  readonly tickets = new TicketKeys();
  /** Told of each relay refused for its caller: a certificate that may not relay, or an admin certificate's lease ticket (why). */
  onRefused?: (reason: 'certificate' | 'ticket', why: string) => void;

  constructor(
    private readonly nodeId: string,
    private readonly log: Logger,
    private readonly tls?: LiveTls,
    /** The engine's output of this host's instances, for AgentLogs (see DockerRuntime.logs). */
    private readonly logs?: DockerRuntime['logs'],
    /** Commands in this host's instances, for AgentExec (see DockerRuntime.execInstance). */
    private readonly exec?: DockerRuntime['execInstance'],
    /** Slots' volumes read and written whole, for AgentVolumes (a migration the leader drives). */
    private readonly volumes?: VolumeTransfer,
  ) {
    this.runner = new StepRunner({ selfNodeId: nodeId, relayCredentials: clientCredentials(tls), chain: true });
  }

  /** Listens; returns the address other hosts should use (advertise, or the bound address). */
  async start(listen: string, advertise?: string): Promise<string> {
    const server = new grpc.Server(SERVER_OPTIONS);
    const tls = this.tls;
    server.addService(guardDeserializers(tesseraProto().StepRelay.service), {
      Relay: unary<RelayRequest__Output, RelayResult>(this.log, 'Relay', async (req, call) => {
        if (tls) {
          const peer = peerIdentity(call);
          if (!RELAY_ROLES.has(peer.role)) {
            this.onRefused?.('certificate', `certificate role ${peer.role}`);
            throw new PermissionDeniedError(`certificate role ${peer.role} may not relay steps`);
          }
          const why = peer.role === 'admin' ? new StreamTickets(this.tickets).check(req.jobId, req.leaseTicket) : undefined;
          if (why) {
            this.onRefused?.('ticket', why);
            throw new PermissionDeniedError(why);
          }
        }
        req.leaseTicket = '';
        // A unary call has no stream to have named a route on: it must carry the route.
        const unknown = new RouteTable().resolve(req);
        if (unknown) return { ok: false, errorCode: grpc.status.FAILED_PRECONDITION, error: `${unknown} (a Relay call carries its route)`, failedIndex: req.firstIndex };
        this.relayed++;
        relayTraffic();
        deadlineHere(req);
        return this.runner.run(req);
      }),
      RelayStream: (call: grpc.ServerDuplexStream<Record<string, unknown>, Record<string, unknown>>) => {
        let tickets: StreamTickets | undefined;
        if (tls) {
          const peer = peerIdentity(call);
          if (!RELAY_ROLES.has(peer.role)) {
            this.onRefused?.('certificate', `certificate role ${peer.role}`);
            call.emit('error', { code: grpc.status.PERMISSION_DENIED, details: `certificate role ${peer.role} may not relay steps` });
            return;
          }
          if (peer.role === 'admin') tickets = new StreamTickets(this.tickets);
        }
        const routes = new RouteTable();
        // Tells the caller this relay understands route ids (RelayRequest.route_id).
        const md = new grpc.Metadata();
        md.set(RELAY_FEATURES, ROUTE_IDS);
        call.sendMetadata(md);
        serveMux<RelayRequest__Output, RelayResult>(call, { req: 'requests', res: 'results' }, async (req) => {
          if (malformedReason(req) !== undefined) return { ok: false, errorCode: grpc.status.INVALID_ARGUMENT, error: `malformed request: ${malformedReason(req)}`, failedIndex: -1 };
          const unknown = routes.resolve(req);
          if (unknown) return { ok: false, errorCode: grpc.status.FAILED_PRECONDITION, error: unknown, failedIndex: req.firstIndex };
          if (tickets) {
            // A failed relay, not a broken stream: the client's leader takes the job over.
            const why = tickets.check(req.jobId, req.leaseTicket);
            if (why) this.onRefused?.('ticket', why);
            if (why) return { ok: false, errorCode: grpc.status.PERMISSION_DENIED, error: why, failedIndex: req.firstIndex, failedInput: req.payload, failedHeaders: req.headers };
          }
          req.leaseTicket = '';
          this.relayed++;
          relayTraffic();
          deadlineHere(req);
          return this.runner.run(req);
        }, (code, error) => ({ ok: false, errorCode: code, error, failedIndex: -1 }));
      },
    } as grpc.UntypedServiceImplementation);
    if (this.logs) {
      const logs = this.logs;
      server.addService(guardDeserializers(tesseraProto().AgentLogs.service), {
        InstanceLogs: serverStream<InstanceLogsRequest__Output, LogChunk>(this.log, 'InstanceLogs', async (call) => {
          // Logs may hold what an app would not show anyone: coordinators only (they check the caller's token).
          const role = tls ? peerIdentity(call).role : 'coordinator';
          if (role !== 'coordinator') throw new PermissionDeniedError(`certificate role ${role} may not read logs`);
          const req = call.request;
          if (!req.instanceId) throw InvalidArgumentError.field('instance_id', 'is required');
          const ac = new AbortController();
          call.on('cancelled', () => ac.abort());
          call.on('close', () => ac.abort());
          await logs(req.instanceId, { tailLines: req.tailLines, follow: req.follow, timestamps: req.timestamps },
            (stream, data) => call.write({ stream, data }),
            () => new Promise<void>((r) => call.once('drain', r)),
            ac.signal);
        }),
      } as grpc.UntypedServiceImplementation);
    }
    if (this.exec) {
      const exec = this.exec;
      server.addService(guardDeserializers(tesseraProto().AgentExec.service), {
        ExecInstance: serverStream<ExecInstanceRequest__Output, ExecChunk>(this.log, 'ExecInstance', async (call) => {
          // A command in an instance is everything its container can do: coordinators only (they
          // check that the caller is an operator and record who ran what).
          const role = tls ? peerIdentity(call).role : 'coordinator';
          if (role !== 'coordinator') throw new PermissionDeniedError(`certificate role ${role} may not run commands in instances`);
          const req = validateExec(call.request);
          const ac = new AbortController();
          call.on('cancelled', () => ac.abort());
          this.log.info({ instance: req.instanceId, command: req.command }, 'exec in instance');
          const exitCode = await exec(req.instanceId, { command: req.command, stdin: req.stdin, timeoutMs: req.timeoutMs },
            (stream, data) => call.write({ stream, data }),
            () => new Promise<void>((r) => call.once('drain', r)),
            ac.signal);
          if (!ac.signal.aborted) call.write({ exited: true, exitCode });
        }),
        // As ExecInstance, with standard input as the caller types it and a terminal on request.
        ExecInteractive: (call: grpc.ServerDuplexStream<ExecInput__Output, ExecChunk>) => {
          const fail = (err: unknown) => { if (!call.cancelled) call.emit('error', toServiceError(err)); };
          void (async () => {
            const role = tls ? peerIdentity(call as unknown as grpc.ServerUnaryCall<unknown, unknown>).role : 'coordinator';
            if (role !== 'coordinator') throw new PermissionDeniedError(`certificate role ${role} may not run commands in instances`);
            const it = call[Symbol.asyncIterator]() as AsyncIterator<ExecInput__Output>;
            const first = await it.next();
            if (first.done || !first.value.start) throw InvalidArgumentError.field('start', 'the first message names the command');
            const req = validateExec({ ...first.value.start, stdin: Buffer.alloc(0) });
            const ac = new AbortController();
            call.on('cancelled', () => ac.abort());
            async function* input(): AsyncIterable<{ data?: Buffer; resize?: { rows?: number; cols?: number } | null; close?: boolean }> {
              for (let n = await it.next(); !n.done; n = await it.next()) yield { data: n.value.stdin, resize: n.value.resize, close: n.value.stdinClosed };
            }
            this.log.info({ instance: req.instanceId, command: req.command, tty: req.tty }, 'interactive exec in instance');
            const exitCode = await exec(req.instanceId, { command: req.command, stdin: Buffer.alloc(0), timeoutMs: req.timeoutMs, tty: req.tty, size: req.size, input: input() },
              (stream, data) => call.write({ stream, data }),
              () => new Promise<void>((r) => call.once('drain', r)),
              ac.signal);
            if (!ac.signal.aborted) call.write({ exited: true, exitCode });
            call.end();
          })().catch(fail);
        },
      } as grpc.UntypedServiceImplementation);
    }
    if (this.volumes) {
      const volumes = this.volumes;
      // A volume holds an app's data: coordinators only, as logs and exec.
      const coordinatorOnly = (call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerReadableStream<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>, what: string) => {
        const role = tls ? peerIdentity(call as grpc.ServerUnaryCall<unknown, unknown>).role : 'coordinator';
        if (role !== 'coordinator') throw new PermissionDeniedError(`certificate role ${role} may not ${what}`);
      };
      server.addService(guardDeserializers(tesseraProto().AgentVolumes.service), {
        FetchVolume: serverStream<VolumeRef__Output, VolumeChunk>(this.log, 'FetchVolume', async (call) => {
          coordinatorOnly(call, 'read volumes');
          const ac = new AbortController();
          call.on('cancelled', () => ac.abort());
          await volumes.fetch(call.request, (data) => call.write({ data }), () => new Promise<void>((r) => call.once('drain', r)), ac.signal);
        }),
        DropVolume: unary<VolumeRef__Output, VolumeWritten>(this.log, 'DropVolume', async (req, call) => {
          coordinatorOnly(call, 'remove volumes');
          volumes.drop(req);
          return { bytes: 0 };
        }),
        PutVolume: (call: grpc.ServerReadableStream<VolumeChunk__Output, VolumeWritten>, callback: grpc.sendUnaryData<VolumeWritten>) => {
          void (async () => {
            coordinatorOnly(call, 'write volumes');
            const it = call[Symbol.asyncIterator]() as AsyncIterator<VolumeChunk__Output>;
            const first = await it.next();
            if (first.done) throw InvalidArgumentError.field('ref', 'the first chunk names the volume; the stream had none');
            const ref = first.value.ref;
            async function* data(): AsyncIterable<Buffer> {
              if (first.value.data?.length) yield first.value.data;
              for (let n = await it.next(); !n.done; n = await it.next()) if (n.value.data?.length) yield n.value.data;
            }
            return { bytes: await volumes.put(ref, data()) };
          })().then((res) => callback(null, res), (err) => callback(toServiceError(err)));
        },
      } as grpc.UntypedServiceImplementation);
    }
    const port = await bind(server, listen, serverCredentials(tls));
    this.server = server;
    const host = listen.slice(0, listen.lastIndexOf(':'));
    this.address = advertise || `${host === '0.0.0.0' || host === '' ? '127.0.0.1' : host}:${port}`;
    return this.address;
  }

  stop(): void {
    this.server?.forceShutdown();
    this.runner.close();
  }
}

