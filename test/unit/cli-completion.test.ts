// `tessera completion bash`: the script the CLI prints, sourced into a real bash and asked for
// completions as bash's programmable completion asks (COMP_WORDS, COMP_CWORD, COMPREPLY).
import { expect } from 'chai';
import { execFileSync, spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { repoRoot } from '../../common/version';

const cli = path.join(repoRoot(), 'dist/coordinator/cli/main.js');

describe('bash completion', () => {
  const script = execFileSync(process.execPath, [cli, 'completion', 'bash'], { encoding: 'utf8' });
  /** What bash would offer after the words (the last one being completed). */
  const complete = (...words: string[]): string[] => {
    const quoted = words.map((w) => `'${w}'`).join(' ');
    const out = execFileSync('bash', ['-c', `${script}\nCOMP_WORDS=(tessera ${quoted}); COMP_CWORD=${words.length}; _tessera; printf '%s\\n' "\${COMPREPLY[@]}"`], { encoding: 'utf8' });
    return out.split('\n').filter(Boolean);
  };

  it('offers the commands, then the subcommands of the one typed', () => {
    expect(complete('no')).to.deep.equal(['nodes', 'node']);
    expect(complete('node', 'd')).to.deep.equal(['drain']);
    expect(complete('instance', '')).to.deep.equal(['replace', '--coordinator', '--json', '--timeout', '--token', '--ca', '--cert', '--key']);
  });

  it('offers a command\'s options and the global ones, not --version past the top', () => {
    expect(complete('job', 'submit', '--d')).to.deep.equal(['--data', '--deadline']);
    expect(complete('node', 'get', '--')).to.not.include('--version');
    expect(complete('--v')).to.deep.equal(['--version']);
  });

  it('skips an option\'s value, even one spelled as a command', () => {
    expect(complete('-c', '127.0.0.1:7401', 'node', 'co')).to.deep.equal(['cordon']);
    expect(complete('--token', 'node', 'ap')).to.deep.equal(['apply', 'apps', 'app']);
  });

  it('refuses a shell it is not written for', () => {
    const r = spawnSync(process.execPath, [cli, 'completion', 'fish'], { encoding: 'utf8' });
    expect(r.status).to.equal(1);
    expect(r.stderr).to.equal('error: completion is written for bash only, not fish\n');
  });
});
