// The Docker Engine, through dockerode. Containers carry their whole instance spec in labels,
// so a restarted agent finds them by label and adopts them with everything it needs (restart
// policy, health check) even before a coordinator answers. Images come from their registry by
// the spec's pull policy (agent/images.ts).
import './lean-dockerode'; // must come before dockerode: see the file
import Docker from 'dockerode';
import * as os from 'node:os';
import { DeadlineExceededError, FailedPreconditionError, NotFoundError } from '../common/errors';
import { withTimeout } from '../common/timeout';
import { ImagePuller, ImagePullError } from './images';
import { checkTimer } from './health';
import type { InstanceSpec__Output } from '../common/generated/tessera/v1/InstanceSpec';

/** How long a command killed before its process started is waited for, to kill it once it does. */
const KILL_WAIT_MS = 5_000;

export const LABEL = {
  managed: 'tessera.managed',
  node: 'tessera.node',
  app: 'tessera.app',
  component: 'tessera.component',
  instance: 'tessera.instance',
  version: 'tessera.version',
  slot: 'tessera.slot',
  spec: 'tessera.spec',
} as const;

export interface ObservedContainer {
  containerId: string;
  instanceId: string;
  running: boolean;
  /** Docker state: created, running, exited, dead, ... */
  status: string;
  exitCode: number;
  oomKilled: boolean;
  startedAtMs: number;
  spec?: InstanceSpec__Output;
}

export { ImageMissingError, ImagePullError } from './images';

const MIB = 1024 * 1024;

/** How long the Engine may take to list this node's containers before it counts as unreachable. */
const LIST_TIMEOUT_MS = 10_000;

export class DockerRuntime {
  readonly docker: Docker;
  readonly images: ImagePuller;

  constructor(private readonly nodeId: string, readonly volumeRoot: string, socketPath = '/var/run/docker.sock', registryAuthFile?: string) {
    this.docker = new Docker({ socketPath });
    this.images = new ImagePuller(this.docker, registryAuthFile);
  }

  async ping(): Promise<boolean> {
    try {
      await this.docker.ping();
      return true;
    } catch {
      return false;
    }
  }

  private listing?: Promise<ObservedContainer[]>;

  /**
   * Every container this node manages, found by label: what actually runs. An Engine that does
   * not answer within timeoutMs fails the call (the runtime is then reported unreachable); the
   * request it left hanging is shared by the next calls rather than joined by one more each.
   */
  list(timeoutMs = LIST_TIMEOUT_MS): Promise<ObservedContainer[]> {
    this.listing ??= this.listNow().finally(() => (this.listing = undefined));
    return withTimeout(this.listing, timeoutMs, 'container list');
  }

  private async listNow(): Promise<ObservedContainer[]> {
    const list = await this.docker.listContainers({ all: true, filters: { label: [`${LABEL.node}=${this.nodeId}`] } });
    return Promise.all(list.map(async (c) => {
      const labels = c.Labels ?? {};
      let exitCode = 0;
      let oomKilled = false;
      let startedAtMs = 0;
      // Exit code and OOM flag are only in inspect; a running container needs no second call.
      if (c.State !== 'running') {
        try {
          const info = await this.docker.getContainer(c.Id).inspect();
          exitCode = info.State.ExitCode;
          oomKilled = info.State.OOMKilled;
          startedAtMs = Date.parse(info.State.StartedAt) || 0;
        } catch {
          /* removed meanwhile */
        }
      }
      return {
        containerId: c.Id,
        instanceId: labels[LABEL.instance] ?? '',
        running: c.State === 'running',
        status: c.State,
        exitCode,
        oomKilled,
        startedAtMs,
        spec: decodeSpec(labels[LABEL.spec]),
      };
    }));
  }

  volumeDir(spec: InstanceSpec__Output, name: string): string {
    return `${this.volumeRoot}/${spec.app}/${spec.component}-${spec.slot}/${name}`;
  }

  /** Creates and starts the container for an instance; a stopped one with the same name is replaced. */
  async start(spec: InstanceSpec__Output, ensureDir: (dir: string) => void, extraEnv: Record<string, string> = {}): Promise<string> {
    const name = containerName(spec.instanceId);
    const binds = spec.volumes.map((v) => {
      const dir = this.volumeDir(spec, v.name);
      ensureDir(dir);
      return `${dir}:${v.path}${v.readOnly ? ':ro' : ''}`;
    });
    const opts: Docker.ContainerCreateOptions = {
      name,
      Image: spec.image,
      Env: Object.entries({ ...spec.env, ...extraEnv }).map(([k, v]) => `${k}=${v}`),
      Labels: {
        [LABEL.managed]: 'true',
        [LABEL.node]: this.nodeId,
        [LABEL.app]: spec.app,
        [LABEL.component]: spec.component,
        [LABEL.instance]: spec.instanceId,
        [LABEL.version]: String(spec.specVersion),
        [LABEL.slot]: String(spec.slot),
        [LABEL.spec]: encodeSpec(spec),
      },
      StopTimeout: Math.max(1, Math.ceil(Number(spec.stopGraceMs || 10_000) / 1000)),
      HostConfig: {
        NetworkMode: 'host',
        Init: true, // PID 1 forwards SIGTERM, so a stop does not wait out the grace period
        Memory: Number(spec.resources?.memoryMib ?? 0) * MIB || undefined,
        // CPU is a weight in proportion to the reservation (Kubernetes' "requests"): a hard
        // CFS quota at a small reservation (10m = 1% of a core) makes even the start of a
        // container take seconds, so a quota is only set when the spec asks (cpuHardLimit),
        // at most this host's cores (the Engine refuses more). Memory is a hard limit, so an
        // OOM kill is seen and reported.
        CpuShares: Math.max(2, Math.round((Number(spec.resources?.cpuMillis ?? 0) * 1024) / 1000)),
        NanoCpus: spec.cpuHardLimit ? cpuQuotaNanos(Number(spec.resources?.cpuMillis ?? 0)) : undefined,
        Binds: binds.length ? binds : undefined,
        RestartPolicy: { Name: 'no' }, // restarts are the agent's, by the spec's policy
        // Defaults that limit harm: never privileged, every capability dropped but those the
        // spec asks for, no privilege escalation, the root filesystem read-only on request.
        // Host paths are only the volumes above, all under the agent's state dir.
        Privileged: false,
        CapDrop: ['ALL'],
        CapAdd: spec.capabilities?.length ? spec.capabilities : undefined,
        SecurityOpt: ['no-new-privileges'],
        ReadonlyRootfs: !!spec.readOnlyRoot,
        LogConfig: { Type: 'json-file', Config: { 'max-size': '10m', 'max-file': '2' } },
      },
    };
    if (spec.command.length) opts.Entrypoint = spec.command;
    if (spec.args.length) opts.Cmd = spec.args;
    let container: Docker.Container;
    try {
      container = await this.docker.createContainer(opts);
    } catch (err) {
      const e = err as { statusCode?: number; message: string };
      // Gone since it was found or pulled (removed meanwhile): a failed start, tried again.
      if (e.statusCode === 404 && /image/i.test(e.message)) throw new ImagePullError(`image ${spec.image} is not on this host`);
      if (e.statusCode !== 409) throw err;
      // A leftover container with this name (not ours to adopt: no running spec): replace it.
      await this.remove(name);
      container = await this.docker.createContainer(opts);
    }
    await container.start();
    return container.id;
  }

  async stop(nameOrId: string, graceMs: number): Promise<void> {
    const c = this.docker.getContainer(nameOrId);
    try {
      await c.stop({ t: Math.max(0, Math.ceil(graceMs / 1000)) });
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode !== 304 && (err as { statusCode?: number }).statusCode !== 404) throw err;
    }
  }

  async remove(nameOrId: string): Promise<void> {
    try {
      await this.docker.getContainer(nameOrId).remove({ force: true, v: false });
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode !== 404) throw err;
    }
  }

  async restart(nameOrId: string): Promise<void> {
    await this.docker.getContainer(nameOrId).start().catch(async (err) => {
      if ((err as { statusCode?: number }).statusCode === 304) return; // already running
      throw err;
    });
  }

  /** The last lines a container wrote (stdout and stderr), for failure reports. */
  async lastLines(nameOrId: string, n = 10): Promise<string[]> {
    try {
      const buf = (await this.docker.getContainer(nameOrId).logs({ stdout: true, stderr: true, tail: n, follow: false })) as unknown as Buffer;
      return demux(buf).split('\n').map((l) => l.trimEnd()).filter(Boolean).slice(-n);
    } catch {
      return [];
    }
  }

  /**
   * An instance's container output, demultiplexed into stdout and stderr chunks (see LogFrames).
   * Without follow it ends at the end of the log; with it, when the container stops or `signal`
   * aborts. `write` returning false pauses the engine's stream until `drained` resolves.
   */
  async logs(
    instanceId: string,
    o: { tailLines: number; follow: boolean; timestamps: boolean },
    write: (stream: 'stdout' | 'stderr', data: Buffer) => boolean,
    drained: () => Promise<void>,
    signal: AbortSignal,
  ): Promise<void> {
    const frames = new LogFrames(write);
    // Streamed from the engine in both modes (dockerode's logs() reads a whole non-following
    // log into one buffer: a log of weeks would sit in the agent's memory).
    let stream: NodeJS.ReadableStream & { destroy: () => void };
    try {
      stream = await new Promise((resolve, reject) => {
        (this.docker.modem as { dial: (o: unknown, cb: (err: Error | null, data: unknown) => void) => void }).dial({
          path: `/containers/${containerName(instanceId)}/logs?`, method: 'GET', isStream: true, abortSignal: signal,
          statusCodes: { 200: true, 404: 'no such container', 500: 'server error' },
          options: { stdout: true, stderr: true, follow: o.follow, timestamps: o.timestamps, ...(o.tailLines > 0 ? { tail: o.tailLines } : {}) }, // no tail: the whole log
        }, (err, data) => (err ? reject(err) : resolve(data as typeof stream)));
      });
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode === 404) throw new NotFoundError('container of instance', instanceId);
      throw err;
    }
    await new Promise<void>((resolve, reject) => {
      const stop = () => { stream.destroy(); resolve(); };
      if (signal.aborted) return stop();
      signal.addEventListener('abort', stop, { once: true });
      stream.on('data', (chunk: Buffer) => {
        if (frames.push(chunk)) return;
        stream.pause();
        void drained().then(() => stream.resume());
      });
      stream.on('end', resolve);
      stream.on('close', resolve);
      stream.on('error', reject);
    });
  }

  /**
   * Runs a command in an instance's running container without a terminal (ExecInstance):
   * stdin written and closed, the output demultiplexed to `write` as it comes (pausing while
   * `drained` is pending), and the command's exit code once it ends. Past timeoutMs, or when
   * `signal` aborts (the caller went away), the command's process is killed: the Engine has no
   * call to stop an exec, so the agent (root, in the host's PID namespace) signals the PID the
   * Engine reports for it.
   */
  execInstance(instanceId: string, ...args: ExecArgs): Promise<number> {
    return this.runExec(containerName(instanceId), `instance ${instanceId}`, ...args);
  }

  /** An exec health check: its exit code; its output is not kept. Killed past its timeout, as ExecInstance is. */
  exec(nameOrId: string, cmd: string[], timeoutMs: number): Promise<number> {
    return this.runExec(nameOrId, nameOrId, { command: cmd, stdin: Buffer.alloc(0), timeoutMs }, () => true, async () => {}, new AbortController().signal);
  }

  private async runExec(container: string, what: string, ...[o, write, drained, signal]: ExecArgs): Promise<number> {
    const c = this.docker.getContainer(container);
    let ex: Docker.Exec;
    const attachStdin = o.stdin.length > 0 || !!o.input;
    try {
      ex = await c.exec({ Cmd: o.command, AttachStdout: true, AttachStderr: true, AttachStdin: attachStdin, Tty: !!o.tty });
    } catch (err) {
      const code = (err as { statusCode?: number }).statusCode;
      if (code === 404) throw new NotFoundError('container of instance', what.replace(/^instance /, ''));
      if (code === 409) throw new FailedPreconditionError(`the container of ${what} is not running: a command runs only in a running container`);
      throw err;
    }
    const stream = (await ex.start({ hijack: true, stdin: attachStdin, Tty: !!o.tty })) as unknown as NodeJS.ReadWriteStream & { destroy: () => void };
    // With a terminal the output comes raw (one stream, as a terminal shows it); without, multiplexed.
    const frames = o.tty ? { push: (chunk: Buffer) => write('stdout', chunk) } : new LogFrames(write);
    // Awaited: input typed after a resize must find the terminal at its new size.
    const resize = async (size?: { rows?: number; cols?: number } | null) => {
      if (o.tty && size?.rows && size.cols) await ex.resize({ h: size.rows, w: size.cols }).catch(() => {});
    };
    await resize(o.size);
    const kill = async () => {
      // On a busy host the Engine may not have started the process yet when its time is up (not
      // running, no exit code): wait for it to start, then kill it, or for it to end. (Left alone,
      // it ran on after its caller had gone: a health check past its timeout piled up one more
      // process each interval.)
      for (let i = 0; i < KILL_WAIT_MS / 50; i++) {
        const info = await ex.inspect().catch(() => undefined);
        if (!info) return;
        if (info.Running && info.Pid > 0) {
          try {
            process.kill(info.Pid, 'SIGKILL');
          } catch {
            // gone meanwhile
          }
          return;
        }
        if (info.ExitCode !== null && info.ExitCode !== undefined) return;
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    let timedOut = false;
    await new Promise<void>((resolve, reject) => {
      const stop = (why: 'timeout' | 'abort') => {
        timedOut = why === 'timeout';
        timer.cancel();
        void kill().finally(() => { stream.destroy(); resolve(); });
      };
      // A command's time is kept as a health check's is: a hold-up of the agent's own loop does not count against it.
      const timer = checkTimer(o.timeoutMs, () => stop('timeout'));
      if (signal.aborted) return stop('abort');
      signal.addEventListener('abort', () => stop('abort'), { once: true });
      stream.on('data', (chunk: Buffer) => {
        if (frames.push(chunk)) return;
        stream.pause();
        void drained().then(() => stream.resume());
      });
      const done = () => { timer.cancel(); resolve(); };
      stream.on('end', done);
      stream.on('close', done);
      stream.on('error', (err) => { timer.cancel(); reject(err); });
      // Standard input, then its end (a half-close of the hijacked connection closes the command's stdin).
      if (o.stdin.length) stream.end(o.stdin);
      // Or as the caller types it, with its end and the terminal's new sizes. A terminal's input
      // ends as a typed Ctrl-D does (EOT): half-closing its connection ends the session's output too.
      const endInput = () => (o.tty ? stream.write(Buffer.from([4])) : stream.end());
      if (o.input) {
        void (async () => {
          for await (const m of o.input!) {
            if (m.data?.length) stream.write(m.data);
            if (m.resize) await resize(m.resize);
            if (m.close) return endInput();
          }
          endInput();
        })().catch(() => endInput());
      }
    });
    if (timedOut) throw new DeadlineExceededError(`the command ran past its timeout of ${o.timeoutMs} ms and was killed`);
    if (signal.aborted) return -1;
    // The stream ends as the process exits; the Engine may report it running a moment longer.
    for (let i = 0; i < 50; i++) {
      const info = await ex.inspect();
      if (!info.Running && info.ExitCode !== null) return info.ExitCode;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new DeadlineExceededError('the command\'s output ended but the Docker Engine did not report its exit code within 1 s');
  }
}

/** A command's request, where its output goes (write returns false: wait for drained), and its caller's abort. */
export type ExecArgs = [
  o: {
    command: string[]; stdin: Buffer; timeoutMs: number;
    /** A terminal: its output raw, as stdout; size its first size. */
    tty?: boolean; size?: { rows?: number; cols?: number } | null;
    /** Standard input as it comes (ExecInteractive), instead of stdin whole: data, a resize, its end. */
    input?: AsyncIterable<{ data?: Buffer; resize?: { rows?: number; cols?: number } | null; close?: boolean }>;
  },
  write: (stream: 'stdout' | 'stderr', data: Buffer) => boolean,
  drained: () => Promise<void>,
  signal: AbortSignal,
];

export function containerName(instanceId: string): string {
  return `tessera-${instanceId}`;
}

/** The CFS quota for a hard CPU limit, in the Engine's NanoCpus: 10m to this host's cores. */
export function cpuQuotaNanos(cpuMillis: number, hostCores = os.cpus().length): number {
  return Math.round(Math.min(Math.max(cpuMillis, 10), Math.max(1, hostCores) * 1000)) * 1_000_000;
}

/**
 * The spec a container's label keeps (for adoption): never the registry login it was pulled
 * with, nor the values of env settings that came from secrets (labels are listed by any Engine
 * client, and exported by tools such as cAdvisor). The leader hands both over again to an agent
 * that adopted the container (Instances.run).
 */
export function encodeSpec(spec: InstanceSpec__Output): string {
  const secret = new Set(spec.secretEnv ?? []);
  const env = secret.size ? Object.fromEntries(Object.entries(spec.env ?? {}).filter(([k]) => !secret.has(k))) : spec.env;
  return Buffer.from(JSON.stringify({ ...spec, env, pullAuth: null })).toString('base64');
}

export function decodeSpec(label: string | undefined): InstanceSpec__Output | undefined {
  if (!label) return undefined;
  try {
    return JSON.parse(Buffer.from(label, 'base64').toString()) as InstanceSpec__Output;
  } catch {
    return undefined;
  }
}

/**
 * Docker's multiplexed log stream, read incrementally: each frame is an 8-byte header
 * ([stream, 0, 0, 0, size32 big-endian]) and its bytes; a frame may arrive split over chunks.
 * push() returns false once a write did (the reader should wait for its drain).
 */
export class LogFrames {
  private rest: Buffer = Buffer.alloc(0);

  constructor(private readonly write: (stream: 'stdout' | 'stderr', data: Buffer) => boolean) {}

  push(chunk: Buffer): boolean {
    let buf = this.rest.length ? Buffer.concat([this.rest, chunk]) : chunk;
    let ok = true;
    while (buf.length >= 8) {
      const size = buf.readUInt32BE(4);
      if (buf.length < 8 + size) break;
      if (size) ok = this.write(buf[0] === 2 ? 'stderr' : 'stdout', buf.subarray(8, 8 + size)) && ok;
      buf = buf.subarray(8 + size);
    }
    this.rest = buf;
    return ok;
  }
}

/** Docker's multiplexed log stream: 8-byte frame headers ([stream, 0, 0, 0, size32]). */
export function demux(buf: Buffer): string {
  if (!Buffer.isBuffer(buf)) return String(buf ?? '');
  let out = '';
  let i = 0;
  while (i + 8 <= buf.length) {
    const size = buf.readUInt32BE(i + 4);
    out += buf.subarray(i + 8, i + 8 + size).toString();
    i += 8 + size;
  }
  if (i === 0 && buf.length) return buf.toString(); // a TTY container: not multiplexed
  return out;
}
