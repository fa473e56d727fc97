// One coordinator process: gRPC server (AgentGateway, Admin, grpc.health.v1, reflection),
// leadership in etcd, and — only while it leads — the leader's work loops.
//
//   start ──> etcd client ──> gRPC server ──> campaign
//                                  elected ──> LeaderWork.start (load nodes, grace, loops)
//                                  demoted ──> LeaderWork.stop, agents redirected
//   stop  ──> LeaderWork.stop ──> resign (lease revoked: successor elected at once) ──> close
import { clockOffsetMs, steadyNow, watchClock } from '../common/clock';
import { activeFailpoints, failpoint } from '../common/failpoints';
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation, ServingStatus } from 'grpc-health-check';
import { ReflectionService } from '@grpc/reflection';
import type { Etcd3 } from 'etcd3';
import { createEtcdClient, endpointHealth, etcdAlarms, withTimeout } from '../common/etcd';
import { bind, guardDeserializers, SERVER_OPTIONS, serverCredentials } from '../common/grpc';
import type { Logger } from '../common/logger';
import { formatOps, formatRefusal, StorageFormatError, storedFormat } from './storage-format';
import { reflectablePackageDefinition, tesseraProto } from '../common/proto';
import { AdminService } from './admin-service';
import { AgentGateway } from './agent-gateway';
import type { CoordinatorConfig } from './config';
import { EmbeddedEtcd, startEmbeddedEtcd } from './embedded-etcd';
import { Keys } from './keys';
import { Leadership } from './leadership';
import { NodeRegistry } from './node-registry';
import { Store } from './store';
import { Deployments } from './deployments';
import { Scaler } from './scaling/scaler';
import { Metrics } from '../common/metrics';
import { Authorizer, loadTokens } from './auth';
import { Keyring, loadKeyring } from './secrets';
import { LiveTls, loadTls, reloadTls, reportExpiry } from '../common/tls';
import { VolumeCopier } from './volume-copy';
import { COORDINATOR_METRICS } from './metrics';
import { ComponentManager } from './components';
import { Compactor } from './compactor';
import { GroupCommitter } from './group-commit';
import { Pipelines } from './jobs/pipelines';
import { JobScheduler } from './jobs/scheduler';
import { StepRunner } from '../common/relay';
import { AGENT_CHANNEL_OPTIONS, clientCredentials } from '../common/grpc';
import { KEY_ACTIVATE_MS, RelayKeyRing } from '../common/relay-ticket';

export const HEALTH_SERVICES = ['', 'tessera.v1.Admin', 'tessera.v1.AgentGateway'] as const;
/** SERVING only on the leader: lets a load balancer or a script find it. */
export const LEADER_HEALTH_SERVICE = 'tessera.v1.Leader';

/** Everything that exists only while this coordinator leads. */
export class LeaderWork {
  readonly registry: NodeRegistry;
  readonly deployments: Deployments;
  readonly scaler: Scaler;
  readonly components: ComponentManager;
  readonly pipelines: Pipelines;
  readonly jobs: JobScheduler;
  /** The job records' group commit (its lazy end records are written before a graceful step-down). */
  readonly records: GroupCommitter;
  private timers: NodeJS.Timeout[] = [];
  ready = false;
  stopped = false;
  /** Called once: when start() has loaded everything (ready) or the term ended first. */
  private settled?: () => void;
  /** Resolves once this term's work is ready to serve, or has stopped before it was. */
  readonly started = new Promise<void>((resolve) => (this.settled = resolve));

  constructor(private readonly c: Coordinator, private readonly term: number) {
    this.registry = new NodeRegistry(c.store, c.keys, {
      heartbeatTimeoutMs: c.config.heartbeatTimeoutMs,
      failoverGraceMs: c.config.failoverGraceMs,
      coordinatorId: c.config.id,
      disruptionPercent: c.config.disruptionPercent,
      zoneLabel: c.config.zoneLabel,
      reportIntervalMs: c.config.reportIntervalMs,
      statusRefreshMs: c.config.statusRefreshIntervalMs,
    }, c.log.child({ part: 'nodes' }));
    this.deployments = new Deployments(c.store, c.keys, this.registry, c.gateway, { sampleSize: c.config.schedulerSampleSize, coordinatorId: c.config.id, metrics: c.metrics, keyring: c.keyring, runtimeDownGraceMs: c.config.runtimeDownGraceMs, volumeCopier: new VolumeCopier(c.tls) }, c.log.child({ part: 'deployments' }));
    // A node whose condition is over (its runtime answers again, its disk has room) may take what could not be placed.
    this.registry.onConditionsChange = () => this.deployments.kick();
    this.scaler = new Scaler(c.store, c.keys, this.registry, this.deployments, c.log.child({ part: 'scaling' }), c.metrics);
    this.deployments.sizedByPolicy = (app, component) => this.scaler.sizes(app, component);
    this.components = new ComponentManager(c.store, c.keys, this.deployments, this.registry, {
      maxInFlightPerInstance: c.config.jobMaxInFlightPerInstance, suspectMs: 5_000, decayMs: 1_000,
    }, c.log.child({ part: 'components' }));
    this.pipelines = new Pipelines(c.store, c.keys);
    this.records = new GroupCommitter(c.store);
    this.jobs = new JobScheduler(c.store, c.keys, this.components, this.pipelines, this.records, c.runner, {
      flow: c.config.jobFlow, queueLimit: c.config.jobQueueLimit, retentionMs: c.config.jobRetentionMs, recordBudgetBytes: c.config.jobRecordBudgetMb * 1024 * 1024, hopMs: c.config.jobHopUs / 1000,
      sameHostHopMs: c.config.jobSameHostHopUs / 1000, recentLimit: c.config.jobMemoryJobs, coordinatorId: c.config.id,
    }, c.log.child({ part: 'jobs' }), c.metrics);
  }

  async start(): Promise<void> {
    await failpoint('leaderStart');
    // Read again now that it leads: a newer leader may have recorded its format since the candidacy began.
    const format = await storedFormat(this.c.store.client, this.c.keys);
    const refusal = formatRefusal(format, this.c.keys);
    if (refusal) throw new StorageFormatError(refusal);
    await this.registry.load();
    await this.deployments.load();
    await this.scaler.load();
    await this.components.load();
    await this.pipelines.load();
    await this.jobs.load();
    await this.c.store.commit(formatOps(format, this.c.keys), [{ kind: 'leader.elected', subject: this.c.config.id, message: `coordinator ${this.c.config.id} leads (term ${this.term})`, fields: { address: this.c.config.advertise, term: String(this.term) } }]);
    if (this.stopped) return;
    this.ready = true;
    this.settled?.();
    this.every('node-liveness', 250, () => this.registry.tick());
    if (this.c.config.nodeGcThresholdMs > 0) this.every('node-gc', Math.min(60_000, Math.max(250, this.c.config.nodeGcThresholdMs / 4)), () => this.registry.collect(this.c.config.nodeGcThresholdMs));
    this.every('scaling', 200, () => this.scaler.tick());
    this.every('components', 250, () => this.components.tick());
    this.every('job-queue', 100, async () => this.jobs.pump());
    this.every('job-starts', 1_000, async () => this.jobs.sweepStarts());
    // Reconcile every reconcileIntervalMs, and within 20 ms of anything that asks for it (an
    // apply, an agent attaching, an instance event).
    let lastReconcile = 0;
    this.every('reconcile', 20, async () => {
      if (!this.deployments.wantsTick && steadyNow() - lastReconcile < this.c.config.reconcileIntervalMs) return;
      lastReconcile = steadyNow();
      await this.deployments.tick();
    });
    this.every('node-status', this.c.config.statusPersistIntervalMs, () => this.registry.persistStatus());
    this.every('event-trim', 30_000, () => this.c.store.trimEvents(this.c.config.maxEvents));
    if (this.c.config.etcdCompactionIntervalMs > 0) {
      const compactor = new Compactor(this.c.etcd, this.c.keys.prefix, this.c.log.child({ part: 'compactor' }));
      this.every('compaction', this.c.config.etcdCompactionIntervalMs, () => compactor.tick());
    }
  }

  /**
   * Runs fn every ms, never two at once. A failing step is a warning, and again with the same
   * error only once a minute (with the count meanwhile), whether or not steps worked in between
   * (the reconcile loop fails only when it has something to write); an info line when it works
   * again after failing for a second or more. With etcd out of reach or out of space some loops
   * failed several times a second, each a warning (25 in 13 s).
   */
  private every(name: string, ms: number, fn: () => Promise<unknown>): void {
    let running = false;
    const f = { failingSinceMs: 0, failures: 0, sinceWarned: 0, warnedError: '', warnedAtMs: -Infinity };
    const log = this.c.log;
    const t = setInterval(() => {
      if (running || this.stopped) return;
      running = true;
      fn().then(() => {
        if (!f.failures) return;
        const forMs = steadyNow() - f.failingSinceMs;
        if (forMs >= 1_000) log.info({ loop: name, failures: f.failures, forMs }, `leader loop ${name} works again`);
        f.failures = 0;
      }, (err) => {
        const error = (err as Error).message;
        const now = steadyNow();
        if (!f.failures++) f.failingSinceMs = now;
        f.sinceWarned++;
        if (error !== f.warnedError || now - f.warnedAtMs >= 60_000) {
          const again = f.warnedError === error ? ` (${f.sinceWarned} times in the last ${Math.round((now - f.warnedAtMs) / 1000)} s)` : '';
          log.warn({ loop: name, err: error }, `leader loop ${name} failed${again}`);
          f.warnedError = error;
          f.warnedAtMs = now;
          f.sinceWarned = 0;
        } else {
          log.debug({ loop: name, err: error }, `leader loop ${name} failed`);
        }
      }).finally(() => (running = false));
    }, ms);
    t.unref();
    this.timers.push(t);
  }

  stop(): void {
    this.stopped = true;
    this.ready = false;
    this.settled?.();
    this.jobs.stop();
    this.deployments.stop();
    for (const t of this.timers) clearInterval(t);
  }
}

export class Coordinator {
  etcd!: Etcd3;
  keys: Keys;
  leadership!: Leadership;
  store!: Store;
  gateway!: AgentGateway;
  /** Clients of the leader's AgentGateway, for the agents' streams this coordinator relays as a follower. */
  private leaderGateways = new Map<string, import('../common/generated/tessera/v1/AgentGateway').AgentGatewayClient>();
  admin!: AdminService;
  private server?: grpc.Server;
  private health = new HealthImplementation({});
  private embedded?: EmbeddedEtcd;
  private work?: LeaderWork;
  private healthTimer?: NodeJS.Timeout;
  private unwatchClock?: () => void;
  private etcdOk = false;
  private stopping = false;
  port = 0;
  readonly metrics = new Metrics(COORDINATOR_METRICS);
  private auth?: Authorizer;
  /** The keys that seal secrets at rest (--secrets-key-file), read at start and on SIGHUP. */
  keyring?: Keyring;
  tls?: LiveTls;
  /** etcd's CA and this coordinator's client certificate for it (--etcd-ca, --etcd-cert, --etcd-key), reloaded on SIGHUP. */
  private etcdTls?: LiveTls;
  /** Runs job routes (agent relays, external instances); one per process, its channels reused across terms. */
  runner!: StepRunner;
  /** Sign direct jobs' relay tickets (common/relay-ticket.ts); agents get them in the Welcome and as they rotate. One ring per process. */
  private readonly relayKeys = new RelayKeyRing();
  private relayKeyTimer?: NodeJS.Timeout;
  private relayKeyRotationMs = 0;

  constructor(readonly config: CoordinatorConfig, readonly log: Logger) {
    this.keys = new Keys(config.etcdPrefix);
  }

  /** The leader's job scheduler, component manager and pipelines; undefined on followers. */
  leaderWork(): LeaderWork | undefined {
    return this.work?.ready ? this.work : undefined;
  }

  /**
   * The leader's work once it is ready, waiting up to timeoutMs while a term that has just
   * begun loads its state (a request that arrives in the first moments after an election is
   * served, not refused); undefined on followers and when the wait runs out.
   */
  async leaderWorkReady(timeoutMs: number): Promise<LeaderWork | undefined> {
    const work = this.work;
    if (!work || work.ready) return this.leaderWork();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([work.started, new Promise<void>((r) => (timer = setTimeout(r, timeoutMs)))]);
    clearTimeout(timer);
    return this.leaderWork();
  }

  /** The leader's node registry, once loaded; undefined on followers. */
  registry(): NodeRegistry | undefined {
    return this.work?.ready ? this.work.registry : undefined;
  }

  /** The leader's deployment manager, once loaded; undefined on followers. */
  deployments(): Deployments | undefined {
    return this.work?.ready ? this.work.deployments : undefined;
  }

  scaler(): Scaler | undefined {
    return this.work?.ready ? this.work.scaler : undefined;
  }

  async start(): Promise<void> {
    const cfg = this.config;
    this.unwatchClock = watchClock(this.log);
    let endpoints = cfg.etcdEndpoints;
    if (!endpoints.length) {
      this.embedded = await startEmbeddedEtcd({ dataDir: cfg.dataDir, binary: cfg.etcdBinary, clientPort: cfg.embeddedEtcdClientPort, peerPort: cfg.embeddedEtcdPeerPort, log: this.log });
      endpoints = [this.embedded.endpoint];
    }
    this.tls = cfg.insecureDev ? undefined : LiveTls.load(cfg);
    const etcdTls = cfg.etcdCa ? LiveTls.load({ tlsCa: cfg.etcdCa, tlsCert: cfg.etcdCert, tlsKey: cfg.etcdKey }, 'etcd') : undefined;
    this.etcdTls = etcdTls;
    const live = this.tls;
    reportExpiry({ cert: () => live?.material.certNotAfterMs ?? 0, ca: () => live?.material.caNotAfterMs ?? 0, 'etcd-cert': () => etcdTls?.material.certNotAfterMs ?? 0, 'etcd-ca': () => etcdTls?.material.caNotAfterMs ?? 0 }, this.log, this.metrics, Date.now(), { ca: live?.material.caExpired, 'etcd-ca': etcdTls?.material.caExpired });
    this.runner = new StepRunner({ selfNodeId: '', relayCredentials: clientCredentials(this.tls), chain: cfg.jobFlow === 'chain' });
    if (activeFailpoints().length) this.log.warn({ failpoints: activeFailpoints() }, 'TESSERA_FAILPOINTS is set: test delays are injected (never on a real fleet)');
    if (cfg.insecureDev) this.log.warn('--insecure-dev: plaintext gRPC, no certificates, no agent identity: for a trial on loopback only');
    this.etcd = createEtcdClient({
      endpoints: etcdTls ? endpoints.map((e) => (e.includes('://') ? e : `https://${e}`)) : endpoints, tls: etcdTls,
      probe: {
        onChange: (endpoint, answering, error) => (answering
          ? this.log.info({ endpoint }, 'etcd endpoint answers again: calls go to it again')
          : this.log.warn({ endpoint, err: error }, 'etcd endpoint does not answer its probe: new calls go to the other endpoints')),
      },
    });
    this.keyring = cfg.secretsKeyFile ? loadKeyring(cfg.secretsKeyFile) : undefined;
    // The keys' names and fingerprints go in the candidacy, so that status shows coordinators
    // that could not open what the leader seals before one of them leads.
    this.leadership = new Leadership(this.etcd, this.keys, { id: cfg.id, address: cfg.advertise, secretsKeys: this.keyring?.fingerprints() ?? [] }, {
      ttlSeconds: cfg.leaseTtlSeconds, marginMs: cfg.leaseMarginMs,
      mayLead: async () => {
        try {
          // Bounded like the candidacy's own steps: etcd out of reach fails the campaign within a TTL.
          return formatRefusal(await storedFormat(this.etcd, this.keys, cfg.leaseTtlSeconds * 1000), this.keys);
        } catch (err) {
          if (err instanceof StorageFormatError) return err.message;
          throw err; // etcd did not answer: a failed campaign, tried again
        }
      },
    }, this.log.child({ part: 'leadership' }));
    this.store = new Store(this.etcd, this.keys, this.leadership, this.log.child({ part: 'store' }), this.metrics);
    this.gateway = new AgentGateway(this.leadership, () => this.registry(), {
      coordinatorId: cfg.id, reportIntervalMs: cfg.reportIntervalMs, heartbeatTimeoutMs: cfg.heartbeatTimeoutMs, requireAgentCert: !!this.tls, relayKeys: this.relayKeys,
      leaderGateway: (address) => {
        let c = this.leaderGateways.get(address);
        if (!c) this.leaderGateways.set(address, (c = new (tesseraProto().AgentGateway)(address, clientCredentials(this.tls), AGENT_CHANNEL_OPTIONS)));
        return c;
      },
    }, this.log.child({ part: 'gateway' }));
    this.scheduleRelayKeys(cfg.relayKeyRotationMs);
    this.gateway.addListener({
      onAck: (node, a) => this.deployments()?.onAck(node, a.instructionId, a.ok, a.message),
      onAttached: (nodeId) => {
        this.deployments()?.agentAttached(nodeId);
        this.deployments()?.kick();
      },
      onInstanceEvent: (node, e) => this.onInstanceEvent(node, e),
    });
    const auth = new Authorizer(cfg.tokensFile ? loadTokens(cfg.tokensFile) : undefined);
    this.auth = auth;
    if (!auth.enabled) this.log.warn('no --tokens-file: the Admin API accepts every caller (fine on loopback for a trial, not on a fleet)');
    this.admin = new AdminService(this.etcd, this.keys, this.leadership, () => this.registry(), () => this.deployments(), () => this.scaler(), { coordinatorId: cfg.id, disruptionPercent: cfg.disruptionPercent, zoneLabel: cfg.zoneLabel, etcdEndpoints: endpoints, auth, metrics: this.metrics, tls: this.tls, etcdTls, leaderWork: () => this.leaderWork(), leaderWorkReady: (ms) => this.leaderWorkReady(ms), relayKeys: this.relayKeys }, this.log.child({ part: 'admin' }));

    const proto = tesseraProto();
    this.server = new grpc.Server(SERVER_OPTIONS);
    this.server.addService(guardDeserializers(proto.AgentGateway.service), this.gateway.handlers() as unknown as grpc.UntypedServiceImplementation);
    this.server.addService(guardDeserializers(proto.Admin.service), this.admin.handlers() as unknown as grpc.UntypedServiceImplementation);
    this.health.addToServer(this.server);
    new ReflectionService(reflectablePackageDefinition()).addToServer(this.server);
    this.setHealth('NOT_SERVING');
    this.port = await bind(this.server, cfg.listen, serverCredentials(this.tls));
    this.log.info({ listen: cfg.listen, port: this.port, advertise: cfg.advertise, etcd: endpoints }, 'coordinator listening');

    if (cfg.metricsListen) {
      const at = await this.metrics.serve(cfg.metricsListen);
      this.log.info({ metrics: `http://${at}/metrics` }, 'metrics listening');
      this.metrics.onCollect(() => this.collectMetrics());
    }
    this.leadership.on('elected', (token) => void this.startLeaderWork(token.term));
    this.leadership.on('demoted', (reason) => this.stopLeaderWork(reason));
    this.leadership.start();
    this.healthTimer = setInterval(() => void this.checkEtcd(), 1_000);
    this.healthTimer.unref();
    await this.checkEtcd();
  }

  private async startLeaderWork(term: number): Promise<void> {
    this.work?.stop();
    const work = new LeaderWork(this, term);
    this.work = work;
    try {
      await work.start();
      if (!work.stopped) this.health.setStatus(LEADER_HEALTH_SERVICE, 'SERVING');
    } catch (err) {
      if (err instanceof StorageFormatError) {
        await this.leadership.refuse(err.message);
        return;
      }
      this.log.error({ err: (err as Error).message }, 'leader start-up failed; stepping down');
      this.leadership.demote('leader start-up failed');
    }
  }

  private collectMetrics(): void {
    const m = this.metrics;
    const token = this.leadership.fence();
    m.set('tessera_coordinator_leader', {}, token ? 1 : 0);
    m.set('tessera_coordinator_leader_term', {}, token?.term ?? 0);
    m.set('tessera_coordinator_etcd_up', {}, this.etcdOk ? 1 : 0);
    m.set('tessera_clock_offset_seconds', {}, clockOffsetMs() / 1000);
    m.reset('tessera_etcd_alarm');
    for (const t of this.etcdAlarms) m.set('tessera_etcd_alarm', { alarm: t }, 1);
    for (const [endpoint, answering] of endpointHealth(this.etcd)?.states() ?? []) m.set('tessera_etcd_endpoint_answering', { endpoint }, answering ? 1 : 0);
    m.reset('tessera_nodes');
    m.reset('tessera_instances');
    const reg = this.registry();
    const dep = this.deployments();
    m.reset('tessera_node_clock_offset_seconds');
    if (reg) for (const n of reg.list()) {
      m.inc('tessera_nodes', { state: n.state });
      if (n.clockOffsetMs !== undefined) m.set('tessera_node_clock_offset_seconds', { node: n.id }, n.clockOffsetMs / 1000);
    }
    m.set('tessera_fleet_disrupted', {}, reg?.disruption() ? 1 : 0);
    m.reset('tessera_node_conditions');
    // The known types always have a series (0 when no node has them): an alert on > 0 resolves.
    for (const type of ['runtime-down', 'disk-pressure']) m.set('tessera_node_conditions', { type }, 0);
    if (reg) for (const n of reg.list()) for (const type of Object.keys(n.conditions ?? {})) m.inc('tessera_node_conditions', { type });
    if (dep) {
      for (const i of dep.listInstances('', '')) if (i.desired === 'run') m.inc('tessera_instances', { state: String(i.state).replace('INSTANCE_STATE_', '') });
      m.set('tessera_instructions_pending', {}, dep.pendingInstructions());
    }
    const lw = this.leaderWork();
    m.set('tessera_jobs_in_flight', {}, lw?.jobs.stats().inFlight ?? 0);
    m.set('tessera_jobs_queued', {}, lw?.jobs.stats().queued ?? 0);
  }

  /** Agents' container events go to the event log (a failing container's exit code, OOM flag and last lines). */
  private onInstanceEvent(nodeId: string, e: import('../common/generated/tessera/v1/InstanceEvent').InstanceEvent__Output): void {
    this.deployments()?.kick();
    // An instance that died or failed its checks leaves every routing table now, not at the next rebuild.
    this.work?.components.invalidate();
    if (!['died', 'oom', 'health_failed', 'failed', 'restarted', 'adopted', 'pulling', 'pulled', 'pull_failed'].includes(e.kind)) return;
    const tail = e.lastLogLines.length ? ` | last lines: ${e.lastLogLines.slice(-5).join(' / ')}` : '';
    this.store.commit([], [{
      kind: `instance.${e.kind}`, subject: e.instanceId,
      message: `instance ${e.instanceId} on ${nodeId}: ${e.kind}${e.exitCode ? ` (exit ${e.exitCode})` : ''}${e.oomKilled ? ' OOM killed' : ''}${e.message ? `: ${e.message}` : ''}${tail}`,
      fields: { node: nodeId, exitCode: String(e.exitCode), oomKilled: String(e.oomKilled), lastLines: e.lastLogLines.join('\n') },
    }]).catch((err) => this.log.debug({ err: (err as Error).message }, 'instance event not recorded'));
  }

  private stopLeaderWork(reason: string): void {
    this.health.setStatus(LEADER_HEALTH_SERVICE, 'NOT_SERVING');
    this.work?.stop();
    this.work = undefined;
    // On a graceful stop, stop() redirects the agents once the successor is known.
    if (!this.stopping) this.gateway.closeAll(`leader stepped down: ${reason}`);
  }

  /** NOT_SERVING while etcd does not answer a linearizable read (no quorum or no connection). */
  private async checkEtcd(): Promise<void> {
    let ok = false;
    try {
      await withTimeout(this.etcd.get(`${this.keys.prefix}health-probe`).exec(), 1_500, 'etcd probe');
      ok = true;
      if (this.alarmChecks++ % 2 === 0) void this.checkAlarms();
    } catch (err) {
      if (this.etcdOk) this.log.warn({ err: (err as Error).message }, 'etcd unreachable: reporting NOT_SERVING');
    }
    // Another coordinator campaigning under this one's id: NOT_SERVING too, so a load balancer or
    // a probe shows the misconfiguration (this one still forwards what reaches it).
    const clash = !!this.leadership.idClash;
    if (ok !== this.etcdOk || clash !== this.idClash) {
      if (ok && !this.etcdOk) this.log.info(clash ? 'etcd reachable' : 'etcd reachable: reporting SERVING');
      this.etcdOk = ok;
      this.idClash = clash;
      this.setHealth(ok && !clash ? 'SERVING' : 'NOT_SERVING');
    }
  }

  private idClash = false;
  private alarmChecks = 0;
  /** etcd's raised alarm types (NOSPACE, CORRUPT), read every 2 s while etcd answers. */
  private etcdAlarms: string[] = [];

  /**
   * etcd's alarms: an error in the log when one is raised (NOSPACE turns the cluster read-only:
   * every write refused), an info line when they clear, and tessera_etcd_alarm for an alert.
   * They are not a reason for NOT_SERVING: reads and forwarding still work, and a probe that
   * restarts an unhealthy coordinator would not free any space.
   */
  private async checkAlarms(): Promise<void> {
    let alarms: { alarm: string; memberId: string }[];
    try {
      alarms = await etcdAlarms(this.etcd, 1_500);
    } catch {
      return;
    }
    const types = [...new Set(alarms.map((a) => a.alarm))].sort();
    const raised = types.filter((t) => !this.etcdAlarms.includes(t));
    for (const t of raised) {
      const members = alarms.filter((a) => a.alarm === t).map((a) => a.memberId);
      this.log.error({ alarm: t, members }, t === 'NOSPACE'
        ? 'etcd raised its NOSPACE alarm: its database reached --quota-backend-bytes and it takes only reads and deletes, so nothing can be deployed, scaled or recorded and jobs are refused (RESOURCE_EXHAUSTED) until an operator frees space (README: "etcd out of space"); what runs keeps running'
        : `etcd raised its ${t} alarm: it refuses writes until an operator clears it (etcdctl alarm list)`);
    }
    if (this.etcdAlarms.length && !types.length) this.log.info({ was: this.etcdAlarms }, 'etcd alarms cleared: writes resume');
    this.etcdAlarms = types;
  }

  private setHealth(status: ServingStatus): void {
    for (const s of HEALTH_SERVICES) this.health.setStatus(s, status);
    if (status === 'NOT_SERVING' || !this.registry()) this.health.setStatus(LEADER_HEALTH_SERVICE, this.registry() && status === 'SERVING' ? 'SERVING' : 'NOT_SERVING');
  }

  /**
   * SIGHUP: the Admin API tokens read again from the tokens file (a token added or revoked
   * without a restart), the TLS files (a renewed certificate), etcd's CA and client certificate
   * (new connections to etcd use them), and the secrets key file (a key rotation: the leader
   * reseals the stored passwords with the new first key). The log level is the daemon's. Turning
   * tokens, TLS, etcd's TLS or the key file on or off, and everything else, takes a restart.
   */
  reload(next: CoordinatorConfig): string[] {
    const applied: string[] = [];
    // Everything read before anything applies: a file that does not load changes nothing.
    const tokens = this.auth?.enabled && next.tokensFile ? loadTokens(next.tokensFile) : undefined;
    const ring = this.keyring && next.secretsKeyFile ? loadKeyring(next.secretsKeyFile) : undefined;
    const etcdFiles = { tlsCa: next.etcdCa, tlsCert: next.etcdCert, tlsKey: next.etcdKey };
    if (this.tls && !next.insecureDev) loadTls(next);
    if (this.etcdTls && next.etcdCa) loadTls(etcdFiles, 'etcd');
    if (this.tls && !next.insecureDev) {
      applied.push(...reloadTls(this.tls, next, this.log));
    }
    if (this.etcdTls && next.etcdCa) {
      applied.push(...reloadTls(this.etcdTls, etcdFiles, this.log));
    }
    if (ring) {
      const before = this.keyring!.fingerprints().join(',');
      this.keyring!.replace(ring);
      applied.push('secretsKeyFile');
      if (ring.fingerprints().join(',') !== before) {
        this.log.info({ file: next.secretsKeyFile, keys: ring.fingerprints() }, 'secrets keys reloaded: new passwords are sealed with the first; a leader reseals the stored ones');
        this.leadership.setSecretsKeys(ring.fingerprints()).catch((e) => this.log.warn({ err: (e as Error).message }, 'candidacy not updated with the reloaded secrets keys; the next one carries them'));
        this.leaderWork()?.deployments.rekeyed().catch((e) => this.log.warn({ err: (e as Error).message }, 'registry credentials not resealed; the next leader tries again'));
      }
    }
    if (tokens) {
      this.auth!.replace(tokens);
      this.log.info({ file: next.tokensFile, tokens: tokens.map((t) => `${t.name} (${t.role})`) }, 'Admin API tokens reloaded');
      applied.push('tokensFile');
    }
    if (next.relayKeyRotationMs !== this.relayKeyRotationMs) {
      this.scheduleRelayKeys(next.relayKeyRotationMs);
      applied.push('relayKeyRotationMs');
    }
    this.rotateRelayKey('SIGHUP');
    applied.push('relayKey');
    return applied;
  }

  /** Rotates the relay ticket key every everyMs (0: on SIGHUP only). */
  private scheduleRelayKeys(everyMs: number): void {
    clearInterval(this.relayKeyTimer);
    this.relayKeyTimer = undefined;
    this.relayKeyRotationMs = everyMs;
    if (!everyMs) return;
    this.relayKeyTimer = setInterval(() => this.rotateRelayKey('scheduled'), everyMs);
    this.relayKeyTimer.unref();
  }

  /** A new relay ticket key: pushed to the agents now, signing once they hold it (common/relay-ticket.ts). */
  private rotateRelayKey(why: string): void {
    const was = this.relayKeys.current.id;
    const k = this.relayKeys.rotate();
    this.log.info({ keyId: k.id, was, why, signsInMs: KEY_ACTIVATE_MS }, 'relay ticket key rotating: agents are given the new key now, and it signs direct jobs\' leases from then on');
  }

  /** Graceful stop: step down first (successor elected at once), then close. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.unwatchClock?.();
    clearInterval(this.healthTimer);
    clearInterval(this.relayKeyTimer);
    this.relayKeys.stop();
    this.setHealth('NOT_SERVING');
    const work = this.work;
    work?.stop();
    this.work = undefined;
    // Job ends answered but not yet recorded go out before the lease does (else the next leader
    // would run those jobs again).
    await work?.jobs.settle();
    await work?.records.drain(2_000);
    if (this.leadership) {
      // Resign first (the lease is revoked, so a successor is elected in milliseconds), wait
      // briefly to learn who it is, and send every agent straight there.
      const wasLeader = this.leadership.isLeader;
      const myKey = this.leadership.leader?.key ?? '';
      await this.leadership.resign();
      if (wasLeader) await this.leadership.waitForLeaderOtherThan(myKey, 1_000);
      this.gateway?.closeAll('coordinator shutting down');
      await this.leadership.stop();
    }
    await new Promise<void>((resolve) => {
      if (!this.server) return resolve();
      // Watch streams never end on their own: give unary calls a moment, then cut the rest.
      const t = setTimeout(() => { this.server?.forceShutdown(); resolve(); }, 1_000);
      this.server.tryShutdown(() => { clearTimeout(t); resolve(); });
    });
    this.admin?.close();
    for (const c of this.leaderGateways.values()) c.close();
    this.runner?.close();
    this.metrics.stop();
    this.etcd?.close();
    await this.embedded?.stop();
  }
}
