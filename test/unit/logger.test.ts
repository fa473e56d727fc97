// The JSON logger: one line an entry, the level shared by a logger and its children (SIGHUP sets it for all).
import { expect } from 'chai';
import { createLogger } from '../../common/logger';

describe('JSON logs', () => {
  it('writes one JSON object a line, with the bindings of the logger and its child', () => {
    const out: string[] = [];
    const log = createLogger('agent', 'info', { node: 'n1' }, (l) => out.push(l));
    log.child({ part: 'images' }).info({ image: 'x:1' }, 'pulled');
    expect(out).to.have.length(1);
    expect(out[0].endsWith('\n')).to.equal(true);
    expect(JSON.parse(out[0])).to.include({ level: 'info', name: 'agent', node: 'n1', part: 'images', image: 'x:1', msg: 'pulled' });
  });

  it('changes the level of a logger and every child at once, children made before included', () => {
    const out: string[] = [];
    const root = createLogger('coordinator', 'warn', {}, (l) => out.push(l));
    const child = root.child({ part: 'deployments' });
    child.info('hidden');
    root.setLevel('debug');
    child.debug('shown');
    root.child({ part: 'jobs' }).debug('shown too');
    expect([root.level, child.level, child.isLevelEnabled('debug')]).to.deep.equal(['debug', 'debug', true]);
    child.setLevel('error');
    root.warn('hidden: one level for the process');
    expect(out.map((l) => JSON.parse(l).msg)).to.deep.equal(['shown', 'shown too']);
  });
});
