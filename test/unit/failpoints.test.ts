import { expect } from 'chai';
import { activeFailpoints, failpoint, parseFailpoints } from '../../common/failpoints';

describe('failpoints (TESSERA_FAILPOINTS)', () => {
  it('reads name=sleep(ms), name=error(n) and name@subject entries and refuses anything else, naming it', () => {
    expect([...parseFailpoints('leaderStart=sleep(2000); other.point=sleep(5), commitInPartsBetween=error(1)')])
      .to.deep.equal([['leaderStart', { sleepMs: 2000 }], ['other.point', { sleepMs: 5 }], ['commitInPartsBetween', { errors: 1 }]]);
    expect(parseFailpoints('').size).to.equal(0);
    expect(() => parseFailpoints('leaderStart=panic')).to.throw(/cannot read "leaderStart=panic" \(expected name=sleep\(ms\), name=error\(n\), or name@subject=\.\.\.\)/);
    // A name with a subject fires only where the code names it (a pipeline, say).
    expect([...parseFailpoints('directStartAck@slow-p.1=sleep(600000)')]).to.deep.equal([['directStartAck@slow-p.1', { sleepMs: 600000 }]]);
    expect(() => parseFailpoints('directStartAck@=sleep(1)')).to.throw(/cannot read "directStartAck@=sleep\(1\)"/);
    expect(() => parseFailpoints('sleep(10)')).to.throw(/cannot read "sleep\(10\)"/);
  });

  it('is off unless set: a failpoint resolves at once', async () => {
    expect(activeFailpoints()).to.deep.equal([]);
    let done = false;
    const p = failpoint('leaderStart').then(() => (done = true));
    await Promise.resolve();
    await Promise.resolve();
    expect(done).to.equal(true);
    await p;
  });
});
