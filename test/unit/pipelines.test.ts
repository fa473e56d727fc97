// Pipeline validation (field paths, defaults) and the relay's choice among a hop's options.
import { expect } from 'chai';
import { InvalidArgumentError } from '../../common/errors';
import { pickOption } from '../../common/relay';
import { normalizePipeline, pipelineToProto } from '../../coordinator/jobs/pipelines';
import { versionMatches } from '../../coordinator/components';

function violations(p: unknown): string[] {
  try {
    normalizePipeline(p as never);
  } catch (e) {
    expect(e).to.be.instanceOf(InvalidArgumentError);
    return (e as InvalidArgumentError).violations.map((v) => v.field);
  }
  return [];
}

describe('pipelines', () => {
  it('fills in defaults and keeps a shorthand stage a shorthand', () => {
    const p = normalizePipeline({ name: 'words', stages: [{ name: 'split', kind: 'splitter' }] });
    expect(p.defaultTimeoutMs).to.equal(30_000);
    expect(p.maxPayloadBytes).to.equal(256 * 1024);
    expect(p.routing).to.equal('path-cost');
    expect(p.stages[0]).to.deep.equal({ name: 'split', options: [{ kind: 'splitter', operation: '', version: '', costHint: 1, whenHeader: '' }], timeoutMs: 0, maxAttempts: 3 });
    expect(pipelineToProto(p).stages![0].kind).to.equal('splitter');
  });

  it('takes alternatives with cost hints and header rules', () => {
    const p = normalizePipeline({ name: 'q', stages: [{ name: 'exec', alternatives: [{ kind: 'executor-row', costHint: 1, whenHeader: 'executor=row' }, { kind: 'executor-vector', costHint: 0.5, version: '^2' }] }] });
    expect(p.stages[0].options.map((o) => [o.kind, o.costHint])).to.deep.equal([['executor-row', 1], ['executor-vector', 0.5]]);
  });

  it('names every problem by its field path', () => {
    expect(violations({ name: 'Bad', stages: [] })).to.deep.equal(['pipeline.name', 'pipeline.stages']);
    expect(violations({
      name: 'p', routing: 'random', maxPayloadBytes: 5_000_000,
      stages: [
        { name: 'a', kind: 'x', alternatives: [{ kind: 'y' }] },
        { name: 'a', kind: 'X_bad', version: 'not a range' },
        { name: 'c', alternatives: [{ kind: 'z', costHint: -1, whenHeader: 'no-equals' }, { kind: 'z' }] },
        { name: 'd', kind: 'w', maxAttempts: 11, timeoutMs: -1 },
      ],
    })).to.deep.equal([
      'pipeline.stages[0].kind', 'pipeline.stages[1].name', 'pipeline.stages[1].kind', 'pipeline.stages[1].version',
      'pipeline.stages[2].alternatives[0].costHint', 'pipeline.stages[2].alternatives[0].whenHeader', 'pipeline.stages[2].alternatives[1].kind',
      'pipeline.stages[3].timeoutMs', 'pipeline.stages[3].maxAttempts', 'pipeline.maxPayloadBytes', 'pipeline.routing',
    ]);
    expect(violations(null)).to.deep.equal(['pipeline']);
  });

  it('matches versions against ranges (an empty range takes any, an unversioned instance only that)', () => {
    expect(versionMatches('1.4.0', '>=1.0.0 <2')).to.equal(true);
    expect(versionMatches('2.0.0', '>=1.0.0 <2')).to.equal(false);
    expect(versionMatches('', '')).to.equal(true);
    expect(versionMatches('', '^1')).to.equal(false);
    expect(versionMatches('1.1.0-rc.1', '^1.0.0')).to.equal(true);
  });
});

describe('a hop option is picked by its header rule, else the planned one', () => {
  const opt = (kind: string, whenHeader = '') => ({ kind, whenHeader, operation: '', instanceId: kind, nodeId: '', endpoint: '', agentEndpoint: '' });
  const opts = [opt('row', 'executor=row'), opt('vector', 'executor=vector')];
  it('takes the option whose rule the headers meet', () => {
    expect(pickOption(opts, { executor: 'vector' }).kind).to.equal('vector');
    expect(pickOption(opts, { executor: 'row' }).kind).to.equal('row');
  });
  it('takes the planned (first) option when no header speaks', () => {
    expect(pickOption(opts, {}).kind).to.equal('row');
    expect(pickOption([opt('a'), opt('b', 'x=1')], { x: '2' }).kind).to.equal('a');
  });
  it('skips a planned option that a header rules out', () => {
    expect(pickOption([opt('row', 'executor=row'), opt('any')], { executor: 'other' }).kind).to.equal('any');
  });
});
