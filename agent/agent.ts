// The agent: identity, host figures, and the link to the leader. Keeps running (and keeps
// its containers running, once it has some) when no coordinator is reachable.
import { randomUUID } from 'node:crypto';
import type { Logger } from '../common/logger';
import { VERSION } from '../common/version';
import type { AgentHello } from '../common/generated/tessera/v1/AgentHello';
import type { HostUsage } from '../common/generated/tessera/v1/HostUsage';
import type { NodeCondition } from '../common/generated/tessera/v1/NodeCondition';
import type { Instruction__Output } from '../common/generated/tessera/v1/Instruction';
import type { Resources } from '../common/generated/tessera/v1/Resources';
import type { AgentConfig } from './config';
import { CoordinatorConnection } from './connection';
import { hostCapacity, sampleHost } from './host-metrics';
import { loadOrCreateAgentUid, loadOrCreateNodeId } from './node-id';
import { DockerRuntime } from './docker-runtime';
import { InstanceManager } from './instances';
import * as path from 'node:path';
import { clockOffsetMs, watchClock } from '../common/clock';
import { Metrics } from '../common/metrics';
import { certCommonName, LiveTls, reloadTls, reportExpiry } from '../common/tls';
import { ConfigError } from '../common/errors';
import { AGENT_METRICS } from './metrics';
import { VolumeTransfer } from './volumes';
import { RelayServer } from './relay-server';
import { ImageGc } from './image-gc';
import { KEY_RETIRE_MS } from '../common/relay-ticket';
import { LogThrottle } from '../common/log-throttle';

export class Agent {
  readonly nodeId: string;
  private readonly agentUid: string;
  private readonly sessionId = randomUUID();
  private capacity: Resources = {};
  private conn!: CoordinatorConnection;
  private reportTimer?: NodeJS.Timeout;
  private reportIntervalMs: number;
  private seq = 0;
  private lastUsage?: HostUsage;
  private reporting = false;
  private reportAgain = false;
  private instances!: InstanceManager;
  private reportSoon?: NodeJS.Timeout;
  readonly metrics = new Metrics(AGENT_METRICS);
  private unwatchClock?: () => void;

  private readonly tls?: LiveTls;
  /** The node's labels: from the settings, and again from them on SIGHUP. */
  private labels: Record<string, string>;
  /** Those the current stream's hello carried: reports carry the labels while they differ. */
  private helloLabels = '';
  private relay?: RelayServer;
  private imageGc?: ImageGc;
  /** Set while the image filesystem is over --disk-pressure-percent (reports carry it). */
  private diskPressure?: NodeCondition;
  /** --disk-pressure-percent, as SIGHUP last read it. */
  private diskPressurePercent: number;
  private gcTimer?: NodeJS.Timeout;
  private gcIntervalMs = 0;
  /** Image garbage collection's settings: the config's, or a reload's. */
  private gcSettings: { highPercent: number; lowPercent: number; minAgeMs: number; intervalMs: number };

  constructor(readonly config: AgentConfig, readonly log: Logger) {
    this.labels = { ...config.labels };
    const live = config.insecureDev ? undefined : LiveTls.load(config);
    this.tls = live;
    if (live) reportExpiry({ cert: () => live.material.certNotAfterMs, ca: () => live.material.caNotAfterMs }, log, this.metrics, Date.now(), { ca: live.material.caExpired });
    // With TLS an agent's identity is its certificate: the node id is its CN.
    const certId = live ? certCommonName(live.material.cert) : undefined;
    if (certId && config.nodeId && config.nodeId !== certId) log.warn({ nodeId: config.nodeId, certificate: certId }, 'nodeId differs from the certificate; the coordinators will refuse it');
    this.nodeId = loadOrCreateNodeId(config.stateDir, config.nodeId ?? certId);
    this.agentUid = loadOrCreateAgentUid(config.stateDir);
    if (config.insecureDev) log.warn('--insecure-dev: plaintext gRPC, no certificate: for a trial on loopback only');
    this.reportIntervalMs = config.reportIntervalMs ?? 5_000;
    this.diskPressurePercent = config.diskPressurePercent;
    this.gcSettings = { highPercent: config.imageGcHighPercent, lowPercent: config.imageGcLowPercent, minAgeMs: config.imageGcMinAgeMs, intervalMs: config.imageGcIntervalMs };
  }

  /**
   * SIGHUP: the TLS files read again (a renewed certificate without a restart: new connections
   * to the coordinators and new relay handshakes use it; one issued for another node is refused,
   * as the coordinators would refuse this agent, keeping the running one), the node's labels,
   * and image garbage collection's thresholds and interval. The log level is the daemon's;
   * everything else takes a restart.
   */
  reload(next: AgentConfig): string[] {
    const applied = this.tls && !next.insecureDev ? reloadTls(this.tls, next, this.log, (m) => {
      const cn = certCommonName(m.cert);
      if (cn !== this.nodeId) throw new ConfigError([{ field: 'tlsCert', message: `the certificate in ${next.tlsCert} is for node ${JSON.stringify(cn)}, and this agent is ${JSON.stringify(this.nodeId)}: not loaded` }]);
    }) : [];
    // New labels go to the leader with the next report (sent now), as kubectl label node would
    // set them: placements from then on see them; instances placed already stay where they are.
    if (JSON.stringify(next.labels) !== JSON.stringify(this.labels)) {
      this.log.info({ from: this.labels, to: next.labels }, 'node labels reloaded');
      this.labels = { ...next.labels };
      if (this.conn && this.instances) void this.report(false);
    }
    // The disk-pressure threshold, checked now (the condition goes with the report sent at once).
    if (next.diskPressurePercent !== this.diskPressurePercent) {
      this.diskPressurePercent = next.diskPressurePercent;
      if (this.conn && this.instances) void this.report();
    }
    // Image garbage collection's thresholds and interval, from the next sweep on.
    // Kept for start() too: a reload that comes before it has made the collector (SIGHUP while
    // the agent starts) set nothing and reported the four as not applied (seen in a CI run).
    this.gcSettings = { highPercent: next.imageGcHighPercent, lowPercent: next.imageGcLowPercent, minAgeMs: next.imageGcMinAgeMs, intervalMs: next.imageGcIntervalMs };
    if (this.imageGc) {
      this.imageGc.configure(this.gcSettings);
      if (next.imageGcIntervalMs !== this.gcIntervalMs) this.scheduleGc(next.imageGcIntervalMs);
    }
    return [...applied, 'labels', 'diskPressurePercent', 'imageGcHighPercent', 'imageGcLowPercent', 'imageGcMinAgeMs', 'imageGcIntervalMs'];
  }

  async start(): Promise<void> {
    this.unwatchClock = watchClock(this.log);
    this.capacity = await hostCapacity(this.config.stateDir, this.config.cpuMillis, this.config.memoryMib);
    this.lastUsage = await sampleHost(this.config.stateDir).catch(() => undefined);
    this.conn = new CoordinatorConnection(this.config.coordinators, (u) => this.hello(u), this.log.child({ part: 'connection' }), undefined, this.tls);
    this.conn.on('welcome', (w) => {
      const held = this.relay?.tickets.size ?? 0;
      if (this.relay?.tickets.add(w.relayKeyId, w.relayKey) && held) {
        // A key this agent did not hold, while it held others: a new leader's, or one rotated while this agent was away.
        this.log.info({ coordinator: w.coordinatorId, keyId: w.relayKeyId, keys: this.relay.tickets.size }, `relay ticket key received with the leader's welcome (a new leader's, or rotated while this agent was away); the older keys retire in ${KEY_RETIRE_MS / 1000} s`);
      }
      if (!this.config.reportIntervalMs && w.reportIntervalMs > 0 && w.reportIntervalMs !== this.reportIntervalMs) {
        this.reportIntervalMs = w.reportIntervalMs;
        this.scheduleReports();
      }
      void this.report();
    });
    this.conn.on('instruction', (i) => this.onInstruction(i));
    this.conn.on('relayKey', (k) => {
      this.relay?.tickets.add(k.keyId, k.key);
      this.log.info({ coordinator: k.coordinatorId, keyId: k.keyId, keys: this.relay?.tickets.size }, `relay ticket key received (the leader rotated it); the older keys retire in ${KEY_RETIRE_MS / 1000} s`);
    });
    const runtime = new DockerRuntime(this.nodeId, path.resolve(this.config.stateDir, 'volumes'), this.config.dockerSocket, this.config.registryAuth || undefined);
    const volumes = new VolumeTransfer(runtime.volumeRoot, (app, component, slot) => this.instances.holdsSlot(app, component, slot), this.log.child({ part: 'volumes' }));
    this.relay = new RelayServer(this.nodeId, this.log.child({ part: 'relay' }), this.tls, (...a) => runtime.logs(...a), (...a) => runtime.execInstance(...a), volumes);
    const refusals = new LogThrottle(60_000);
    this.relay.onRefused = (reason, why) => {
      this.metrics.inc('tessera_agent_relays_refused_total', { reason });
      const held = refusals.take();
      if (held !== undefined) this.log.warn({ reason, why, heldBack: held }, 'job relay refused for its caller (a direct client\'s job then goes to the leader); at most one such line a minute');
    };
    const c = this.config;
    const gc = new ImageGc(runtime.docker, {
      highPercent: this.gcSettings.highPercent, lowPercent: this.gcSettings.lowPercent, minAgeMs: this.gcSettings.minAgeMs, stateDir: c.stateDir,
      wanted: () => this.instances.wantedImages(),
    }, this.log.child({ part: 'image-gc' }));
    this.imageGc = gc;
    runtime.images.onPulled = (image) => gc.notePulled(image);
    this.instances = new InstanceManager(runtime, this.log.child({ part: 'instances' }), this.metrics, this.relay.runner, (images, now) => {
      for (const image of images) gc.noteUsed(image, now);
    });
    this.scheduleGc(this.gcSettings.intervalMs);
    if (this.config.metricsListen) {
      const at = await this.metrics.serve(this.config.metricsListen);
      this.log.info({ metrics: `http://${at}/metrics` }, 'metrics listening');
      this.metrics.onCollect(() => {
        const u = this.lastUsage;
        const m = this.metrics;
        m.set('tessera_agent_connected', {}, this.conn.current === 'CONNECTED' ? 1 : 0);
        m.set('tessera_clock_offset_seconds', {}, clockOffsetMs() / 1000);
        if (u) {
          m.set('tessera_agent_host_cpu_percent', {}, Number(u.cpuPercent ?? 0));
          m.set('tessera_agent_host_memory_used_mib', {}, Number(u.memoryUsedMib ?? 0));
          m.set('tessera_agent_host_memory_total_mib', {}, Number(u.memoryTotalMib ?? 0));
          m.set('tessera_agent_host_disk_used_mib', {}, Number(u.diskUsedMib ?? 0));
          m.set('tessera_agent_host_load1', {}, Number(u.load1 ?? 0));
        }
        m.reset('tessera_agent_containers');
        for (const st of this.instances.statuses()) m.inc('tessera_agent_containers', { state: String(st.state).replace('INSTANCE_STATE_', '') });
      });
    }
    this.instances.on('event', (e) => this.conn.send({ event: e }));
    const reportSoon = () => {
      // A change is worth telling the leader now, not at the next interval (debounced).
      if (this.reportSoon) return;
      this.reportSoon = setTimeout(() => { this.reportSoon = undefined; void this.report(false); }, 20);
      this.reportSoon.unref();
    };
    this.instances.on('changed', reportSoon);
    // The Engine stopped (or started again) answering: the leader stops (or resumes) placing here.
    this.instances.on('runtime', reportSoon);
    try {
      const addr = await this.instances.tasks.start(this.config.taskListen);
      this.log.info({ endpoint: addr }, 'task-state endpoint listening');
    } catch (err) {
      this.log.error({ err: (err as Error).message, listen: this.config.taskListen }, 'task-state endpoint not started; instances cannot report task state');
    }
    try {
      const addr = await this.relay.start(this.config.relayListen, this.config.relayAdvertise || undefined);
      this.log.info({ endpoint: addr }, 'step relay listening');
    } catch (err) {
      this.log.error({ err: (err as Error).message, listen: this.config.relayListen }, 'step relay not started; jobs cannot run steps on this host');
    }
    // Adopt what runs before the first hello, so the leader sees it at once.
    await this.instances.start().catch((err) => this.log.warn({ err: (err as Error).message }, 'docker engine not reachable yet; will keep trying'));
    this.conn.start();
    this.scheduleReports();
    this.log.info({ node: this.nodeId, coordinators: this.config.coordinators, capacity: this.capacity }, 'agent started');
  }

  /**
   * The disk-pressure condition: set while the image filesystem is fuller than
   * --disk-pressure-percent (after image garbage collection has had its turn: it starts lower),
   * cleared once it is not. Unreadable (the Engine down, or its root dir not visible here):
   * left as it was.
   */
  private async checkDisk(): Promise<void> {
    const limit = this.diskPressurePercent;
    const pct = limit < 100 ? await this.imageGc?.percentUsed() : 0;
    if (pct === undefined) return;
    if (pct > limit && !this.diskPressure) {
      this.diskPressure = { type: 'disk-pressure', message: `image filesystem ${pct.toFixed(1)}% full (over --disk-pressure-percent ${limit})`, sinceMs: Date.now() };
      this.log.warn({ diskUsedPercent: Number(pct.toFixed(1)), diskPressurePercent: limit }, 'disk pressure: this node takes no new instances until its image filesystem has room');
    } else if (pct <= limit && this.diskPressure) {
      this.log.info({ diskUsedPercent: Number(pct.toFixed(1)), diskPressurePercent: limit }, 'disk pressure over');
      this.diskPressure = undefined;
    }
  }

  private scheduleGc(intervalMs: number): void {
    clearInterval(this.gcTimer);
    this.gcIntervalMs = intervalMs;
    this.gcTimer = setInterval(() => {
      this.imageGc?.sweep().then((removed) => {
        if (removed.length) this.metrics.inc('tessera_agent_images_removed_total', {}, removed.length);
      }, (err) => this.log.warn({ err: (err as Error).message }, 'image garbage collection failed'));
    }, intervalMs);
    this.gcTimer.unref();
  }

  private hello(unreachableLeader: string): AgentHello {
    this.helloLabels = JSON.stringify(this.labels);
    return {
      unreachableLeader,
      nodeId: this.nodeId,
      agentUid: this.agentUid,
      hostname: this.config.hostname,
      labels: this.labels,
      capacity: this.capacity,
      agentVersion: VERSION,
      instances: this.instances?.statuses() ?? [],
      portRange: this.config.ports,
      sessionId: this.sessionId,
      endpoint: this.relay?.address ?? '',
    };
  }

  private scheduleReports(): void {
    clearInterval(this.reportTimer);
    this.reportTimer = setInterval(() => void this.report(), this.reportIntervalMs);
    this.reportTimer.unref();
  }

  /**
   * Sends a report. The periodic one samples the host; one triggered by an instance change
   * sends at once with the last host figures. A report asked for while one is being built is
   * sent right after it, never dropped.
   */
  private async report(sample = true): Promise<void> {
    if (this.reporting) {
      this.reportAgain = true;
      return;
    }
    this.reporting = true;
    try {
      do {
        this.reportAgain = false;
        if (sample) {
          this.lastUsage = await sampleHost(this.config.stateDir).catch((err) => {
            this.log.warn({ err: (err as Error).message }, 'host sampling failed; sending the last figures');
            return this.lastUsage;
          });
        }
        if (sample) await this.checkDisk();
        const labels = JSON.stringify(this.labels) !== this.helloLabels ? { values: this.labels } : undefined;
        const conditions = [this.instances.runtimeCondition(), this.diskPressure].filter((c): c is NodeCondition => !!c);
        this.conn.send({ report: { seq: ++this.seq, host: this.lastUsage, instances: this.instances.statuses(), conditions, ...(labels ? { labels } : {}), sentAtMs: Date.now() } });
        sample = false;
      } while (this.reportAgain);
    } finally {
      this.reporting = false;
    }
  }

  /** Deployment instructions: idempotent by instance id; each is acknowledged. */
  private onInstruction(i: Instruction__Output): void {
    this.log.debug({ id: i.id, action: i.action, instance: i.target?.instanceId }, 'instruction');
    let ok = true;
    let message = '';
    switch (i.action) {
      case 'INSTRUCTION_ACTION_RUN':
        if (!i.instance?.instanceId) { ok = false; message = 'instance: missing'; break; }
        this.instances.run(i.instance);
        break;
      case 'INSTRUCTION_ACTION_STOP':
      case 'INSTRUCTION_ACTION_DRAIN':
        this.instances.stopInstance(i.target?.instanceId ?? '', Number(i.stopGraceMs) || 10_000);
        break;
      default:
        ok = false;
        message = `action ${i.action} is not supported by agent ${VERSION}`;
    }
    this.conn.send({ ack: { instructionId: i.id, ok, message } });
  }

  async stop(): Promise<void> {
    this.unwatchClock?.();
    clearInterval(this.reportTimer);
    clearInterval(this.gcTimer);
    this.instances?.stop();
    this.relay?.stop();
    this.metrics.stop();
    await this.conn?.stop();
  }
}
