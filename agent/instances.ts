// The agent's instance manager: what the leader asked this node to run, what Docker has, and
// the loop that brings one to the other, restarting by policy and checking health.
//
//   RUN/STOP instructions ──> desired / stopping
//   loop (1 s, and at once on a Docker event): list containers by label ──> diffInstances (pure)
//        ──> start / restart (restartDecision, pure) / stop ──> InstanceStatus for reports
//   Docker events (die, oom, start) ──> InstanceEvent up to the leader
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import { fromSystemClock, steadyNow } from '../common/clock';
import type { Logger } from '../common/logger';
import type { InstanceSpec__Output } from '../common/generated/tessera/v1/InstanceSpec';
import type { InstanceStatus } from '../common/generated/tessera/v1/InstanceStatus';
import type { InstanceEvent } from '../common/generated/tessera/v1/InstanceEvent';
import type { InstanceState } from '../common/generated/tessera/v1/InstanceState';
import type { NodeCondition } from '../common/generated/tessera/v1/NodeCondition';
import { containerName, DockerRuntime, ImageMissingError, ObservedContainer } from './docker-runtime';
import type { PullPolicy } from './images';
import { diffInstances, restartDecision } from './diff';
import { runCheck } from './health';
import { CgroupFiles, cgroupFiles, CgroupMount, parseCgroupMounts, readCgroupSample, usedMib } from './cgroup-stats';
import { parseTaskReport, TaskEndpoint } from './task-endpoint';
import * as http from 'node:http';

/** How a failed health check's message begins (a passing check clears such a message). */
const HEALTH_FAILED = 'health check failed: ';

/** How long a container to make again for an adopted instance waits for its secret values from the leader. */
export const SECRET_HANDOVER_WAIT_MS = 30_000;

interface Local {
  spec: InstanceSpec__Output;
  state: InstanceState;
  health: 'unknown' | 'healthy' | 'unhealthy';
  restarts: number;
  restartTimes: number[];
  lastExitMs: number;
  exitCode: number;
  oomKilled: boolean;
  message: string;
  startedAtMs: number;
  healthFailures: number;
  lastCheckMs: number;
  checking: boolean;
  containerId: string;
  cpuPercent: number;
  memoryUsedMib: number;
  handledExitAt: number;
  /** Its image is being pulled (beginPull); then pulled (for a policy of Always: this start's pull is done) or the pull's error. */
  pulling?: boolean;
  /** Since when a container to make again waits for secret values (see startOne). */
  secretWaitSince?: number;
  pulled?: boolean;
  pullError?: Error;
  /** What the instance answered to Component.Describe, for the start it answered in. */
  described?: { info: import('../common/generated/tessera/v1/ComponentInfo').ComponentInfo; forContainer: string; restarts: number };
  describing: boolean;
  lastDescribeMs: number;
}

export declare interface InstanceManager {
  on(event: 'event', fn: (e: InstanceEvent) => void): this;
  on(event: 'changed', fn: () => void): this;
  on(event: 'runtime', fn: (down: NodeCondition | undefined) => void): this;
}

export class InstanceManager extends EventEmitter {
  private desired = new Map<string, Local>();
  private stopping = new Map<string, { graceMs: number; local?: Local }>();
  /** Stops under way: each runs on its own (up to its grace), not in the pass that began it. */
  private stopsUnderWay = new Set<string>();
  private stats = new Map<string, { stream: NodeJS.ReadableStream; prev?: { cpu: number; system: number } }>();
  /** Each running container's cgroup files (null: not found, its figures come from the Engine's stats stream), and its last sample. */
  private cgroups = new Map<string, { files?: CgroupFiles | null; finding?: boolean; prev?: { cpuNs: number; atMs: number } }>();
  private cgroupMounts?: CgroupMount[];
  /** Which source the agent has said it reads instance figures from ('' before the first). */
  private statsSaid = '';
  private timer?: NodeJS.Timeout;
  private running = false;
  private again = false;
  private events?: NodeJS.ReadableStream;
  private closed = false;
  dockerOk = false;
  /** Set while the last container list did not reach the Engine (reports carry it: the runtime-down condition). */
  private runtimeDown?: NodeCondition;

  /** Task-state reports from instances (and polls of those that do not report). */
  readonly tasks = new TaskEndpoint((id) => this.desired.has(id) || this.stopping.has(id));

  constructor(
    private readonly runtime: DockerRuntime,
    private readonly log: Logger,
    private readonly metrics?: import('../common/metrics').Metrics,
    private readonly steps?: import('../common/relay').StepRunner,
    /** Told which images this node's containers (any state) use, at every pass. */
    private readonly imagesInUse?: (images: string[], now: number) => void,
  ) {
    super();
  }

  /** True if this node runs (or is stopping) the instance. */
  has(id: string): boolean {
    return this.desired.has(id) || this.stopping.has(id);
  }

  async start(): Promise<void> {
    this.timer = setInterval(() => this.kick(), 1_000);
    this.timer.unref();
    void this.watchEvents();
    await this.loop();
  }

  stop(): void {
    this.closed = true;
    this.tasks.stop();
    clearInterval(this.timer);
    (this.events as unknown as { destroy?: () => void })?.destroy?.();
    for (const s of this.stats.values()) (s.stream as unknown as { destroy?: () => void }).destroy?.();
  }

  /**
   * RUN: idempotent by instance id. For an instance already here (adopted after a restart: its
   * label keeps no registry login) it only takes the login, for the pulls to come.
   */
  run(spec: InstanceSpec__Output): void {
    const known = this.desired.get(spec.instanceId);
    if (known) {
      if (spec.pullAuth && !known.spec.pullAuth) {
        known.spec = { ...known.spec, pullAuth: spec.pullAuth };
        this.log.debug({ instance: spec.instanceId }, 'registry login taken for an instance already here');
      }
      const lacking = (spec.secretEnv ?? []).filter((k) => !Object.hasOwn(known.spec.env ?? {}, k) && Object.hasOwn(spec.env ?? {}, k));
      if (lacking.length) {
        known.spec = { ...known.spec, env: { ...known.spec.env, ...Object.fromEntries(lacking.map((k) => [k, spec.env[k]])) } };
        this.log.debug({ instance: spec.instanceId, names: lacking }, 'secret env values taken for an instance already here');
      }
      return;
    }
    this.stopping.delete(spec.instanceId);
    this.desired.set(spec.instanceId, newLocal(spec));
    this.log.info({ instance: spec.instanceId, image: spec.image }, 'instance desired');
    this.kick();
  }

  /** STOP: idempotent by instance id. */
  stopInstance(instanceId: string, graceMs: number): void {
    const local = this.desired.get(instanceId);
    this.desired.delete(instanceId);
    if (!this.stopping.has(instanceId)) this.stopping.set(instanceId, { graceMs, local });
    if (local) local.state = 'INSTANCE_STATE_STOPPING';
    this.kick();
  }

  /** Whether an instance of the slot is desired here or still stopping (its volume is in use). */
  holdsSlot(app: string, component: string, slot: number): boolean {
    const of = (l?: Local) => !!l && l.spec.app === app && l.spec.component === component && Number(l.spec.slot) === slot;
    for (const l of this.desired.values()) if (of(l)) return true;
    for (const s of this.stopping.values()) if (of(s.local)) return true;
    return false;
  }

  /** The images of the instances this agent runs or is about to (image GC keeps them). */
  wantedImages(): Set<string> {
    return new Set([...this.desired.values()].map((l) => l.spec.image));
  }

  statuses(): InstanceStatus[] {
    const out: InstanceStatus[] = [];
    for (const l of this.desired.values()) out.push(toStatus(l));
    for (const [id, s] of this.stopping) if (s.local) out.push({ ...toStatus(s.local), instanceId: id, state: 'INSTANCE_STATE_STOPPING' });
    for (const st of out) {
      const t = this.tasks.get(st.instanceId!);
      if (t) st.task = t;
    }
    return out;
  }

  kick(): void {
    if (this.running) {
      this.again = true;
      return;
    }
    void this.loop();
  }

  private async loop(): Promise<void> {
    if (this.closed) return;
    this.running = true;
    try {
      do {
        this.again = false;
        await this.reconcile();
      } while (this.again && !this.closed);
    } catch (err) {
      if (this.dockerOk) this.log.warn({ err: (err as Error).message }, 'instance loop failed');
      this.dockerOk = false;
    } finally {
      this.running = false;
    }
  }

  /** The runtime-down condition while the Engine does not answer (the leader places nothing new here meanwhile). */
  runtimeCondition(): NodeCondition | undefined {
    return this.runtimeDown;
  }

  private runtimeReached(err?: Error): void {
    if (!err) {
      if (!this.runtimeDown) return;
      this.log.info({ downForMs: Date.now() - Number(this.runtimeDown.sinceMs) }, 'docker engine reachable again');
      this.runtimeDown = undefined;
    } else {
      if (this.runtimeDown) return;
      this.runtimeDown = { type: 'runtime-down', message: `Docker Engine: ${err.message}`, sinceMs: Date.now() };
      this.log.warn({ err: err.message }, 'docker engine unreachable: this node takes no new instances until it answers');
    }
    this.emit('runtime', this.runtimeDown);
  }

  private async reconcile(): Promise<void> {
    let list: ObservedContainer[];
    try {
      list = await this.runtime.list();
    } catch (err) {
      this.runtimeReached(err as Error);
      throw err;
    }
    this.runtimeReached();
    if (!this.dockerOk) this.log.info({ containers: list.length }, 'docker engine reachable');
    this.dockerOk = true;
    const observed = new Map<string, ObservedContainer>(list.filter((c) => c.instanceId).map((c) => [c.instanceId, c]));
    // Intervals here (health checks, describes, task polls, backoffs) are timed on a clock that
    // does not step with the system clock (a step back stopped every check for its size).
    const now = steadyNow();
    this.imagesInUse?.(list.map((c) => c.spec?.image ?? '').filter(Boolean), now);
    // Containers gone however they went (removed by hand too) take their cgroup entries with them.
    if (this.cgroups.size) {
      const present = new Set(list.map((c) => c.containerId));
      for (const id of this.cgroups.keys()) if (!present.has(id)) this.cgroups.delete(id);
    }

    // Adopt what runs here from before (an agent restart): the spec travels in the labels.
    for (const c of observed.values()) {
      if (this.desired.has(c.instanceId) || this.stopping.has(c.instanceId) || !c.spec) continue;
      const l = newLocal(c.spec);
      l.containerId = c.containerId;
      l.startedAtMs = fromSystemClock(c.startedAtMs);
      l.state = c.running ? 'INSTANCE_STATE_RUNNING' : 'INSTANCE_STATE_STARTING';
      this.desired.set(c.instanceId, l);
      this.log.info({ instance: c.instanceId, running: c.running }, 'adopted a running container');
      this.emitEvent(c.instanceId, 'adopted', { message: `adopted container ${c.containerId.slice(0, 12)}` });
    }

    const failed = new Set([...this.desired.values()].filter((l) => l.state === 'INSTANCE_STATE_FAILED').map((l) => l.spec.instanceId));
    const d = diffInstances({ desired: new Set(this.desired.keys()), observed, stopping: new Set(this.stopping.keys()), failed });
    // Those whose image is being pulled start on the pass after the pull (beginPull).
    const start = d.start.filter((id) => !this.desired.get(id)!.pulling);
    const counts = { start: start.length, restart: d.restart.length, stop: d.stop.length };

    // A stop takes up to its grace (a worker winding down may take a minute): it goes on by
    // itself, and this pass (starts, restarts, health checks of everything else) does not wait
    // for it. Stop-first keeps a slot's new instance waiting for its old one: the leader places it
    // only once this agent reports the old one gone.
    for (const id of d.stop) {
      if (this.stopsUnderWay.has(id)) continue;
      this.stopsUnderWay.add(id);
      void this.stopOne(id, observed.get(id)!).then((done) => {
        this.stopsUnderWay.delete(id);
        // Done: a pass at once sees it gone and reports it (the leader waits for that: stop-first,
        // the ports it held). A stop that failed is tried again by the next timed pass, not at
        // once in a loop.
        if (done) this.kick();
      });
    }
    await Promise.all([
      ...start.map((id) => this.startOne(this.desired.get(id)!, now)),
      ...d.restart.map((id) => this.restartOne(this.desired.get(id)!, observed.get(id)!, now)),
    ]);
    // Told to stop and gone from a listing taken after its stop ended: done. (Not before: a pass
    // whose listing still showed the container would adopt it again, and start it anew.)
    let gone = 0;
    for (const id of [...this.stopping.keys()]) {
      if (observed.has(id) || this.stopsUnderWay.has(id)) continue;
      this.stopping.delete(id);
      gone++;
    }
    // Failed instances keep no container running.
    for (const id of failed) {
      const c = observed.get(id);
      if (c?.running) await this.runtime.stop(c.containerId, 1_000).catch(() => {});
    }
    for (const id of d.keep) {
      const l = this.desired.get(id);
      const c = observed.get(id);
      if (!l || !c) continue;
      l.containerId = c.containerId;
      if (c.running && l.state !== 'INSTANCE_STATE_RUNNING') {
        l.state = 'INSTANCE_STATE_RUNNING';
        l.startedAtMs = l.startedAtMs || (c.startedAtMs ? fromSystemClock(c.startedAtMs) : now);
        this.emit('changed');
      }
      if (c.running) {
        this.sampleStats(l, now);
        this.maybeCheck(l, now);
        this.maybeDescribe(l, now);
        this.maybePollTasks(l, now);
      }
    }
    if (counts.start || counts.restart || counts.stop || gone) {
      this.log.info(counts, 'applied instance changes');
      this.emit('changed');
    }
  }

  private async startOne(l: Local, now: number): Promise<void> {
    l.state = 'INSTANCE_STATE_STARTING';
    if (l.pulling) return; // its image is on the way: started on the pass after the pull
    // Adopted after an agent restart, its label kept no secret values: a container made again
    // (imagePullPolicy Always) waits for the leader's RUN to hand them over, never runs without.
    const lacking = (l.spec.secretEnv ?? []).filter((k) => !Object.hasOwn(l.spec.env ?? {}, k));
    if (lacking.length) {
      l.secretWaitSince ??= now;
      // Not for good: failed, the instance is replaced in its slot, and its new RUN carries them.
      if (now - l.secretWaitSince > SECRET_HANDOVER_WAIT_MS) return this.fail(l, `the leader did not hand over the values of ${lacking.join(', ')} (secretEnv) within ${SECRET_HANDOVER_WAIT_MS / 1000} s`);
      l.message = `waiting for the leader to hand over the values of ${lacking.join(', ')} (secretEnv)`;
      return;
    }
    l.secretWaitSince = undefined;
    const image = l.spec.image;
    try {
      if (l.pullError) {
        const e = l.pullError;
        l.pullError = undefined;
        throw e;
      }
      const policy = (l.spec.imagePullPolicy || 'IfNotPresent') as PullPolicy;
      if (!l.pulled && (policy === 'Always' || !(await this.runtime.images.present(image)))) {
        if (policy === 'Never') throw new ImageMissingError(`image ${image} is not on this host and its imagePullPolicy is Never (load or build it there, or let the agent pull it: IfNotPresent)`);
        return this.beginPull(l, image);
      }
      l.pulled = false;
      l.containerId = await this.runtime.start(l.spec, (dir) => fs.mkdirSync(dir, { recursive: true }), this.tasks.address ? { TESSERA_AGENT_ENDPOINT: this.tasks.address } : {});
      l.startedAtMs = steadyNow();
      l.state = 'INSTANCE_STATE_RUNNING'; // the Engine has started its process
      l.health = 'unknown';
      l.healthFailures = 0;
      l.message = '';
      this.emitEvent(l.spec.instanceId, 'started', {});
    } catch (err) {
      const msg = (err as Error).message;
      if (err instanceof ImageMissingError) return this.fail(l, msg);
      l.message = `start failed: ${msg}`;
      l.lastExitMs = now;
      l.restartTimes.push(now);
      if (restartDecision(l.restartTimes, now, policy(l), now) === 'give-up') return this.fail(l, l.message);
    }
  }

  /**
   * Pulls an instance's image in the background (a pull may take minutes: the reconcile loop,
   * and with it every other instance's health checks, goes on). Its progress is the instance's
   * message; the next pass creates the container, or counts a failed pull as a failed start.
   */
  private beginPull(l: Local, image: string): void {
    const t0 = Date.now();
    l.pulling = true;
    l.message = `pulling image ${image}`;
    this.log.info({ instance: l.spec.instanceId, image }, 'pulling image');
    this.emitEvent(l.spec.instanceId, 'pulling', { message: l.message });
    let shownAt = 0;
    this.runtime.images.pull(image, (p) => {
      l.message = `pulling image ${image}: ${(p.currentBytes / 1048576).toFixed(1)} of ${(p.totalBytes / 1048576).toFixed(1)} MiB`;
      if (Date.now() - shownAt < 1_000) return;
      shownAt = Date.now();
      this.emit('changed');
    }, l.spec.pullAuth).then(() => {
      l.pulled = true;
      l.message = '';
      const s = ((Date.now() - t0) / 1000).toFixed(1);
      this.log.info({ instance: l.spec.instanceId, image, seconds: Number(s) }, 'image pulled');
      this.emitEvent(l.spec.instanceId, 'pulled', { message: `image ${image} pulled in ${s} s` });
    }, (err: Error) => {
      l.pullError = err;
      this.log.warn({ instance: l.spec.instanceId, image, err: err.message }, 'image pull failed');
      this.emitEvent(l.spec.instanceId, 'pull_failed', { message: err.message });
    }).finally(() => {
      l.pulling = false;
      this.kick();
    });
  }

  private async restartOne(l: Local, c: ObservedContainer, now: number): Promise<void> {
    if (l.handledExitAt !== c.startedAtMs) {
      // First time we see this exit: record it.
      l.handledExitAt = c.startedAtMs;
      l.exitCode = c.exitCode;
      l.oomKilled = c.oomKilled;
      l.lastExitMs = now;
      l.state = 'INSTANCE_STATE_STARTING';
      l.health = 'unknown';
      const lines = await this.runtime.lastLines(c.containerId);
      l.message = `exited with code ${c.exitCode}${c.oomKilled ? ' (OOM killed)' : ''}`;
      this.emitEvent(l.spec.instanceId, c.oomKilled ? 'oom' : 'died', { exitCode: c.exitCode, oomKilled: c.oomKilled, message: l.message, lastLogLines: lines });
    }
    const decision = restartDecision(l.restartTimes, now, policy(l), l.lastExitMs);
    if (decision === 'later') return;
    if (decision === 'give-up') {
      const lines = await this.runtime.lastLines(c.containerId);
      return this.fail(l, `${l.message}; gave up after ${l.restartTimes.length} restarts in ${policy(l).windowMs / 1000} s`, lines);
    }
    l.restartTimes.push(now);
    l.restarts++;
    this.metrics?.inc('tessera_agent_restarts_total');
    try {
      if (l.spec.imagePullPolicy === 'Always') {
        // As the kubelet and Nomad's docker driver do: a new container, its image pulled first
        // (the start path, on the next passes), so a tag that moved runs its new image.
        await this.runtime.remove(c.containerId);
        this.dropStats(c.containerId);
        l.pulled = false;
        this.emitEvent(l.spec.instanceId, 'restarted', { message: `restart ${l.restarts} after ${l.message}: a new container, its image pulled first (imagePullPolicy Always)` });
        this.kick();
        return;
      }
      await this.runtime.restart(c.containerId);
      // A new process: its health starts over, with its grace from now (as a Kubernetes probe's
      // initial delay after a restart, or Nomad's check_restart grace). Before session 30 the
      // failures counted before the exit stayed, and the grace ran from the first start: the
      // first check of a process still starting hit the threshold, and the restarted container
      // was killed again until the restart policy gave up (CI run 6 of session 30).
      l.startedAtMs = steadyNow();
      l.healthFailures = 0;
      l.health = 'unknown';
      this.emitEvent(l.spec.instanceId, 'restarted', { message: `restart ${l.restarts} after ${l.message}` });
    } catch (err) {
      l.message = `restart failed: ${(err as Error).message}`;
    }
  }

  /** True once the container is stopped and removed (it stays in `stopping` until a pass's listing no longer shows it). */
  private async stopOne(id: string, c: ObservedContainer): Promise<boolean> {
    const s = this.stopping.get(id);
    try {
      await this.runtime.stop(c.containerId, s?.graceMs ?? 10_000);
      await this.runtime.remove(c.containerId);
      this.tasks.forget(id);
      this.dropStats(c.containerId);
      this.emitEvent(id, 'removed', {});
      return true;
    } catch (err) {
      this.log.warn({ instance: id, err: (err as Error).message }, 'stop failed; will retry');
      return false;
    }
  }

  private fail(l: Local, message: string, lastLogLines: string[] = []): void {
    l.state = 'INSTANCE_STATE_FAILED';
    l.health = 'unhealthy';
    l.message = message;
    this.log.warn({ instance: l.spec.instanceId, message }, 'instance failed');
    this.emitEvent(l.spec.instanceId, 'failed', { exitCode: l.exitCode, oomKilled: l.oomKilled, message, lastLogLines });
    this.emit('changed');
  }

  /**
   * A component instance (one with a port named "grpc") registers for job routing once it is
   * healthy and has said what it is: its kind, version and operations.
   */
  private maybeDescribe(l: Local, now: number): void {
    const port = l.spec.ports?.grpc;
    if (!this.steps || !port || l.health !== 'healthy' || l.describing) return;
    if (describedNow(l) || now - l.lastDescribeMs < 500) return;
    l.describing = true;
    l.lastDescribeMs = now;
    const forContainer = l.containerId;
    const restarts = l.restarts;
    this.steps.describe(`127.0.0.1:${port}`).then((info) => {
      l.described = { info: { kind: info.kind, version: info.version, operations: info.operations }, forContainer, restarts };
      this.emit('changed');
    }, (err) => this.log.debug({ instance: l.spec.instanceId, err: (err as Error).message }, 'component not answering Describe yet')).finally(() => (l.describing = false));
  }

  private maybeCheck(l: Local, now: number): void {
    const h = l.spec.health;
    if (!h || h.type === 'none' || !h.type) {
      if (l.health !== 'healthy') this.emit('changed');
      l.health = 'healthy';
      return;
    }
    if (l.checking || now - l.lastCheckMs < Number(h.intervalMs || 5_000)) return;
    l.checking = true;
    l.lastCheckMs = now;
    const restarts = l.restarts;
    void runCheck(h, l.spec.ports, (cmd, t) => this.runtime.exec(containerName(l.spec.instanceId), cmd, t)).then((r) => {
      l.checking = false;
      // A check of the process before a restart says nothing of the new one.
      if (l.state !== 'INSTANCE_STATE_RUNNING' || l.restarts !== restarts) return;
      if (r.ok) {
        // A failed check under the threshold said so in the message; a passing one ends it (it
        // stayed before: a healthy instance showed an old failure in `tessera ps` for good).
        const stale = l.message.startsWith(HEALTH_FAILED);
        if (l.health !== 'healthy' || stale) this.emit('changed');
        if (stale) l.message = '';
        l.health = 'healthy';
        l.healthFailures = 0;
        return;
      }
      if (steadyNow() - l.startedAtMs < Number(h.graceMs || 0) && l.health !== 'healthy') return; // still starting up
      l.healthFailures++;
      this.metrics?.inc('tessera_agent_health_check_failures_total');
      l.message = `${HEALTH_FAILED}${r.detail}`;
      if (l.healthFailures < (h.failureThreshold || 3)) return;
      l.health = 'unhealthy';
      this.emitEvent(l.spec.instanceId, 'health_failed', { message: `${l.healthFailures} failed checks: ${r.detail}` });
      l.healthFailures = 0;
      // An unhealthy instance is restarted, and that counts against its restart policy.
      void this.runtime.stop(l.containerId, 2_000).then(() => this.kick(), () => this.kick());
    });
  }

  private pollAt = new Map<string, number>();

  /** For instances whose spec names an endpoint: GET it and record what it says. */
  private maybePollTasks(l: Local, now: number): void {
    const p = l.spec.taskStatePoll;
    if (!p?.port) return;
    const id = l.spec.instanceId;
    if (now - (this.pollAt.get(id) ?? 0) < Number(p.intervalMs || 2_000)) return;
    this.pollAt.set(id, now);
    const req = http.get({ host: '127.0.0.1', port: l.spec.ports[p.port], path: p.path || '/', timeout: 1_000 }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => {
        try {
          const parsed = parseTaskReport(JSON.parse(body));
          if (parsed.ok) this.tasks.record(id, parsed.state);
        } catch {
          /* not JSON: ignore this poll */
        }
      });
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => {});
  }

  private ensureStats(l: Local): void {
    if (this.stats.has(l.containerId)) return;
    const entry: { stream: NodeJS.ReadableStream; prev?: { cpu: number; system: number } } = { stream: undefined as never };
    this.stats.set(l.containerId, entry);
    const id = l.containerId;
    this.runtime.docker.getContainer(id).stats({ stream: true }).then((stream) => {
      entry.stream = stream as NodeJS.ReadableStream;
      let buf = '';
      stream.on('data', (chunk: Buffer) => {
        buf += chunk.toString();
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          try {
            const s = JSON.parse(line);
            const cpu = s.cpu_stats?.cpu_usage?.total_usage ?? 0;
            const system = s.cpu_stats?.system_cpu_usage ?? 0;
            const cpus = s.cpu_stats?.online_cpus ?? 1;
            if (entry.prev && system > entry.prev.system) l.cpuPercent = Math.round(((cpu - entry.prev.cpu) / (system - entry.prev.system)) * cpus * 10_000) / 100;
            entry.prev = { cpu, system };
            const usage = s.memory_stats?.usage ?? 0;
            const cache = s.memory_stats?.stats?.cache ?? 0;
            l.memoryUsedMib = usedMib(usage - cache);
          } catch {
            /* partial line */
          }
        }
      });
      stream.on('end', () => this.stats.delete(id));
      stream.on('error', () => this.stats.delete(id));
    }, () => this.stats.delete(id));
  }

  /**
   * The instance's CPU (percent of one core, over the time since the last sample) and working set,
   * from its container's cgroup files (see cgroup-stats.ts); when those cannot be found, from the
   * Engine's stats stream as before.
   */
  private sampleStats(l: Local, now: number): void {
    const id = l.containerId;
    let c = this.cgroups.get(id);
    if (!c) {
      this.cgroups.set(id, (c = { finding: true }));
      const entry = c;
      this.runtime.docker.getContainer(id).inspect().then((info) => {
        this.cgroupMounts ??= parseCgroupMounts(fs.readFileSync('/proc/self/mountinfo', 'utf8'));
        const pid = info.State?.Pid;
        entry.files = pid ? cgroupFiles(fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8'), this.cgroupMounts) ?? null : null;
      }).catch((err) => {
        entry.files = null;
        this.log.debug({ container: id, err: (err as Error).message }, 'cannot find the container\'s cgroup');
      }).finally(() => {
        entry.finding = false;
        const source = entry.files ? `cgroup v${entry.files.version} files` : 'the Docker Engine\'s stats stream';
        if (this.statsSaid !== source) {
          this.statsSaid = source;
          this.log.info({ source }, `instance CPU and memory: read from ${source}`);
        }
      });
      return;
    }
    if (c.finding) return;
    if (!c.files) return this.ensureStats(l);
    try {
      const s = readCgroupSample(c.files);
      // (A container started again has counters from zero: that sample starts over.)
      if (c.prev && now - c.prev.atMs >= 500 && s.cpuNs >= c.prev.cpuNs) l.cpuPercent = Math.round(((s.cpuNs - c.prev.cpuNs) / ((now - c.prev.atMs) * 1e6)) * 10_000) / 100;
      if (!c.prev || now - c.prev.atMs >= 500 || s.cpuNs < c.prev.cpuNs) c.prev = { cpuNs: s.cpuNs, atMs: now };
      l.memoryUsedMib = usedMib(s.memoryBytes);
    } catch {
      // Gone with its container (removed, or made again under a new id): found again next time.
      this.cgroups.delete(id);
    }
  }

  private dropStats(containerId: string): void {
    this.cgroups.delete(containerId);
    const s = this.stats.get(containerId);
    (s?.stream as unknown as { destroy?: () => void })?.destroy?.();
    this.stats.delete(containerId);
  }

  /** Docker's events stream (NDJSON; one chunk may hold several events): react at once. */
  private async watchEvents(): Promise<void> {
    while (!this.closed) {
      try {
        const stream = (await this.runtime.docker.getEvents({ filters: { type: ['container'], label: ['tessera.managed=true'] } })) as NodeJS.ReadableStream;
        this.events = stream;
        let buf = '';
        await new Promise<void>((resolve) => {
          stream.on('data', (chunk: Buffer) => {
            buf += chunk.toString();
            let nl: number;
            let relevant = false;
            while ((nl = buf.indexOf('\n')) >= 0) {
              const line = buf.slice(0, nl);
              buf = buf.slice(nl + 1);
              try {
                const e = JSON.parse(line);
                if (['die', 'oom', 'start', 'destroy'].includes(e.status ?? e.Action)) relevant = true;
              } catch {
                /* partial */
              }
            }
            if (relevant) this.kick();
          });
          stream.on('end', resolve);
          stream.on('error', resolve);
        });
      } catch {
        /* docker down: try again */
      }
      await new Promise((r) => setTimeout(r, 1_000).unref());
    }
  }

  private emitEvent(instanceId: string, kind: string, e: Partial<InstanceEvent>): void {
    this.emit('event', { instanceId, kind, atMs: Date.now(), ...e });
    this.emit('changed');
  }
}

function newLocal(spec: InstanceSpec__Output): Local {
  return {
    spec, state: 'INSTANCE_STATE_PENDING', health: 'unknown', restarts: 0, restartTimes: [], lastExitMs: 0, exitCode: 0, oomKilled: false,
    message: '', startedAtMs: 0, healthFailures: 0, lastCheckMs: 0, checking: false, containerId: '', cpuPercent: 0, memoryUsedMib: 0, handledExitAt: -1,
    describing: false, lastDescribeMs: 0,
  };
}

function policy(l: Local) {
  const r = l.spec.restart;
  return { attempts: r?.attempts ?? 3, windowMs: Number(r?.windowMs ?? 60_000), delayMs: Number(r?.delayMs ?? 1_000) };
}

/** The Describe answer holds for the container (and the start of it) it came from. */
function describedNow(l: Local): boolean {
  return !!l.described && l.described.forContainer === l.containerId && l.described.restarts === l.restarts;
}

function toStatus(l: Local): InstanceStatus {
  return {
    instanceId: l.spec.instanceId, app: l.spec.app, component: l.spec.component, specVersion: l.spec.specVersion,
    containerId: l.containerId, state: l.state, health: l.health, restarts: l.restarts, exitCode: l.exitCode, oomKilled: l.oomKilled,
    cpuPercent: l.cpuPercent, memoryUsedMib: l.memoryUsedMib, message: l.message, ports: l.spec.ports,
    described: l.state === 'INSTANCE_STATE_RUNNING' && l.health === 'healthy' && describedNow(l) ? l.described!.info : undefined,
  };
}
