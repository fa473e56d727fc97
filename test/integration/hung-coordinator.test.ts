// A hung coordinator (SIGSTOP: as a frozen process, a paused VM or a host whose network drops
// packets) neither answers nor refuses: the kernel accepts the TCP connection and nothing more.
// Agents and the CLI that list it first move on to the next coordinator after the dial timeout
// (3 s): before, an agent's stream to it waited for ever and a CLI call spent its whole deadline
// there and failed. Real etcd, coordinators, an agent and the CLI as processes.
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { AdminClient } from '../../common/admin-client';
import { repoRoot } from '../../common/version';
import { statusOf, waitForLeader } from '../helpers/cluster';
import { waitFor } from '../helpers/ports';
import { etcdAndFleet } from '../helpers/suite';

const run = promisify(execFile);

describe('a hung coordinator', function () {
  this.timeout(90_000);
  const s = etcdAndFleet();

  it('agents and the CLI that list it first go to the next coordinator', async () => {
    const c1 = await s.fleet.coordinator({ etcd: s.etcd.endpoints, id: 'awake' });
    await waitForLeader([c1.address]);
    const c2 = await s.fleet.coordinator({ etcd: s.etcd.endpoints, id: 'hung' });
    // Seen through the leader: a channel this process opened to it before the pause would stay
    // READY until keepalive gives up on it (up to 15 s), and a call on it waits out its deadline.
    await waitFor('hung a candidate', async () => !!(await statusOf(c1.address))?.coordinators.some((c) => c.id === 'hung'), 10_000, 100);
    c2.pause();
    const admin = new AdminClient([c2.address, c1.address]);
    try {
      // An agent whose list starts with the hung one attaches to the leader.
      const started = Date.now();
      s.fleet.agent({ coordinators: [c2.address, c1.address], nodeId: 'past-hung', extra: ['--port-range', '30770-30779'] });
      await waitFor('the agent READY', async () => (await admin.listNodes()).nodes.some((n) => n.id === 'past-hung' && n.state === 'NODE_STATE_READY'), 30_000, 200);
      expect(Date.now() - started, 'attached after about one dial timeout').to.be.below(15_000);
      // The CLI, given the hung one first, answers from the next one (its call timeout is 10 s).
      const cli = path.join(repoRoot(), 'dist/coordinator/cli/main.js');
      const out = await run(process.execPath, [cli, '-c', `${c2.address},${c1.address}`, 'status']);
      expect(out.stdout).to.match(new RegExp(`leader:\\s+awake at ${c1.address.replace(/\./g, '\\.')}`));
      // A write too (the client moves on before sending anything to the hung one).
      expect((await admin.cordonNode({ nodeId: 'past-hung', reason: 'past the hung one' })).cordoned).to.equal(true);
    } finally {
      c2.resume();
      admin.close();
    }
  });
});
