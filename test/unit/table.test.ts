// The CLI's tables: aligned columns, cut cells marked as cut, ages people can read.
import { expect } from 'chai';
import { ago, clip, enumName, table } from '../../common/table';

describe('CLI tables', () => {
  it('aligns every column but the last, and trims trailing blanks', () => {
    expect(table(['ID', 'STATE', 'REASON'], [['a', 'READY', ''], ['long-id', 'DOWN', 'no report for 10 s']])).to.equal([
      'ID       STATE  REASON',
      'a        READY',
      'long-id  DOWN   no report for 10 s',
    ].join('\n'));
  });

  it('marks a cell it cuts, and leaves a cell that fits as it is', () => {
    expect(clip('words-splitter-a > words-counter-b', 20)).to.equal('words-splitter-a > …');
    expect(clip('words-splitter-a > words-counter-b', 20)).to.have.length(20);
    expect(clip('exactly ten', 11)).to.equal('exactly ten');
    expect(clip('', 5)).to.equal('');
  });

  it('says how long ago in the largest units that matter', () => {
    const now = 10_000_000_000;
    expect(ago(0, now)).to.equal('-');
    expect(ago(now - 59_400, now)).to.equal('59s');
    expect(ago(now - 61_000, now)).to.equal('1m1s');
    expect(ago(now - 3_660_000, now)).to.equal('1h1m');
    expect(ago(now - 3 * 86_400_000, now)).to.equal('3d');
    expect(ago(now + 5_000, now), 'a clock a little ahead').to.equal('0s');
    expect(enumName('NODE_STATE_READY', 'NODE_STATE_')).to.equal('READY');
  });
});
