import { expect } from 'chai';
import { cpuBusyPercent, ticksOfStatLine } from '../../agent/host-metrics';

describe('host metrics: CPU from /proc/stat', () => {
  it('counts user, nice, system, irq and softirq as busy; idle, iowait and steal as not', () => {
    // user nice system idle iowait irq softirq steal guest guest_nice
    expect(ticksOfStatLine('cpu  100 5 20 800 30 2 3 40 7 0')).to.deep.equal({ busy: 130, total: 1000 });
    expect(ticksOfStatLine('cpu 1 0 1 2')).to.deep.equal({ busy: 2, total: 4 });
  });

  it('refuses a line that is not the aggregate one', () => {
    expect(() => ticksOfStatLine('cpu0 1 2 3 4')).to.throw(/aggregate cpu line/);
  });

  it('samples this host without spawning a process: a percentage that moves with load', async () => {
    await cpuBusyPercent();
    const end = Date.now() + 300;
    let x = 0;
    while (Date.now() < end) x += Math.sqrt(x + 1); // keep one core busy
    const busy = await cpuBusyPercent();
    expect(x).to.be.greaterThan(0);
    expect(busy).to.be.within(0, 100);
    // One of this machine's cores was busy the whole time: at least a few percent of all of them.
    expect(busy).to.be.greaterThan(100 / (require('node:os').cpus().length * 4));
  });
});
