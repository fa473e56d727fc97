// Many simulated nodes in this process (as Nomad's nodesim): each is the agent's real
// CoordinatorConnection (hello, redirects, reconnects) on its own AgentGateway stream to the real
// coordinators over loopback, sending a report each period. No containers: an instance it is told
// to run is reported RUNNING and healthy from then on (each instruction acknowledged), one it is
// told to stop is gone. For what a leader does with a fleet far larger than this machine could
// run agents for.
import { CoordinatorConnection } from '../../agent/connection';
import { createLogger } from '../../common/logger';
import { VERSION } from '../../common/version';
import type { AgentHello } from '../../common/generated/tessera/v1/AgentHello';
import type { InstanceStatus } from '../../common/generated/tessera/v1/InstanceStatus';

/** A hello as an agent of node `id` sends it: no labels, 1 core, 1 GiB, ports from `ports`. */
export function agentHello(id: string, ports: { start: number; end: number }, extra: Partial<AgentHello> = {}): AgentHello {
  return {
    nodeId: id, agentUid: `uid-${id}`, hostname: `host-${id}`, labels: {}, capacity: { cpuMillis: 1000, memoryMib: 1024, diskMib: 1024 },
    agentVersion: VERSION, instances: [], portRange: ports, sessionId: `session-${id}`, endpoint: '', unreachableLeader: '', ...extra,
  };
}

export class SimulatedNodes {
  conns: CoordinatorConnection[] = [];
  /** What each node runs (by its index), as its reports say: kept while the nodes are cut off. */
  private readonly running: Map<string, InstanceStatus>[] = [];
  private timer?: NodeJS.Timeout;
  private seq = 0;

  /** Starts n nodes named `${prefix}0000`..., each reporting every reportMs, labelled `rack` and `labels`. */
  constructor(private readonly coordinators: string[], readonly n: number, readonly prefix: string, private readonly reportMs: number, private readonly labels: Record<string, string> = {}) {
    for (let i = 0; i < n; i++) this.running.push(new Map());
    this.connect();
  }

  get connected(): number {
    return this.conns.filter((c) => c.current === 'CONNECTED').length;
  }

  /** Each node attaches `spreadMs / n` after the one before it (0: all at once). */
  private connect(spreadMs = 0): void {
    const log = createLogger('sim', 'error', {}, () => {});
    this.conns = this.running.map((runs, i) => {
      const id = `${this.prefix}${String(i).padStart(4, '0')}`;
      const conn = new CoordinatorConnection(this.coordinators, () => agentHello(id, { start: 20000, end: 20100 }, {
        labels: { rack: `r${i % 10}`, ...this.labels }, capacity: { cpuMillis: 4000, memoryMib: 8192, diskMib: 100_000 }, sessionId: `session-${id}-${this.seq}`, instances: [...runs.values()],
      }), log, { initialMs: 200, maxMs: 2_000, multiplier: 1.6, jitter: 0.2 });
      conn.on('instruction', (ins) => {
        const inst = ins.instance?.instanceId || ins.target?.instanceId || '';
        if (ins.action === 'INSTRUCTION_ACTION_RUN' && ins.instance) {
          runs.set(inst, { instanceId: inst, app: ins.instance.app, component: ins.instance.component, specVersion: ins.instance.specVersion, containerId: `sim-${inst}`, state: 'INSTANCE_STATE_RUNNING', health: 'healthy' });
        } else if (ins.action === 'INSTRUCTION_ACTION_STOP') {
          runs.delete(inst);
        }
        conn.send({ ack: { instructionId: ins.id, ok: true, message: '' } });
      });
      if (spreadMs) setTimeout(() => { if (conn.current === 'IDLE') conn.start(); }, (i * spreadMs) / this.n);
      else conn.start();
      return conn;
    });
    // Each node reports at its own moment within the period, as agents started at different
    // times do (nodes that die together then go DOWN over one period, not in one tick).
    const ticks = 10;
    let turn = 0;
    this.timer = setInterval(() => {
      turn = (turn + 1) % ticks;
      if (turn === 0) this.seq++;
      this.conns.forEach((c, i) => {
        if (Math.floor((i * ticks) / this.n) !== turn) return;
        c.send({ report: { seq: this.seq, host: { cpuPercent: 10 + (this.seq % 7), memoryUsedMib: 1000 + (this.seq % 13), memoryTotalMib: 8192 }, instances: [...this.running[i].values()], sentAtMs: Date.now() } });
      });
    }, this.reportMs / ticks);
  }

  /** Every node cut off at once (a switch failing, a partition): their streams closed, what they run kept. */
  async cut(): Promise<void> {
    clearInterval(this.timer);
    await Promise.all(this.conns.map((c) => c.stop()));
  }

  /** The partition heals: each node attaches again with what it runs, one after another over spreadMs (as agents back off each on its own). */
  heal(spreadMs = 0): void {
    this.connect(spreadMs);
  }

  /** Every node gone (a rack losing power). */
  stop(): Promise<void> {
    return this.cut();
  }
}
