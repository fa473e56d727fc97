// Many simulated nodes in this process (as Nomad's nodesim): each is the agent's real
// CoordinatorConnection (hello, redirects, reconnects) on its own AgentGateway stream to the real
// coordinators over loopback, sending a report each period, with no containers. For what a
// leader does with a fleet far larger than this machine could run agents for.
import { CoordinatorConnection } from '../../agent/connection';
import { createLogger } from '../../common/logger';
import { VERSION } from '../../common/version';

export class SimulatedNodes {
  readonly conns: CoordinatorConnection[] = [];
  private timer?: NodeJS.Timeout;
  private seq = 0;

  /** Starts n nodes named `${prefix}0000`..., each reporting every reportMs. */
  constructor(coordinators: string[], readonly n: number, readonly prefix: string, reportMs: number) {
    const log = createLogger('sim', 'error', {}, () => {});
    for (let i = 0; i < n; i++) {
      const id = `${prefix}${String(i).padStart(4, '0')}`;
      const conn = new CoordinatorConnection(coordinators, () => ({
        nodeId: id, agentUid: `uid-${id}`, hostname: `host-${id}`, labels: { rack: `r${i % 10}` }, capacity: { cpuMillis: 4000, memoryMib: 8192, diskMib: 100_000 },
        agentVersion: VERSION, instances: [], portRange: { start: 20000, end: 20100 }, sessionId: `session-${id}`, endpoint: '', unreachableLeader: '',
      }), log, { initialMs: 200, maxMs: 2_000, multiplier: 1.6, jitter: 0.2 });
      conn.start();
      this.conns.push(conn);
    }
    this.timer = setInterval(() => {
      this.seq++;
      for (const c of this.conns) {
        c.send({ report: { seq: this.seq, host: { cpuPercent: 10 + (this.seq % 7), memoryUsedMib: 1000 + (this.seq % 13), memoryTotalMib: 8192 }, instances: [], sentAtMs: Date.now() } });
      }
    }, reportMs);
  }

  get connected(): number {
    return this.conns.filter((c) => c.current === 'CONNECTED').length;
  }

  /** Every node's stream closed at once (a rack losing power, a switch failing). */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    await Promise.all(this.conns.map((c) => c.stop()));
  }
}
