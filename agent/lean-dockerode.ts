// dockerode's transport (docker-modem) loads ssh2 at start-up for ssh:// Docker hosts, and
// dockerode loads tar-fs for image builds: about 7 MB of the agent's resident memory
// (measured: 64 MB -> 57 MB), for features it never uses (it talks to the local Engine over
// its unix socket and never builds or copies archives). Before dockerode is loaded, these two
// modules are put in the module cache as stubs that refuse to be used (and readable-stream as
// Node's own streams, below).
// Import this module before 'dockerode'.
import Module from 'node:module';

function stub(fromModule: string, name: string, exports: unknown): void {
  let resolved: string;
  try {
    resolved = Module.createRequire(require.resolve(fromModule)).resolve(name);
  } catch {
    return; // not installed: nothing to keep out
  }
  if (require.cache[resolved]) return;
  const m = new Module(resolved);
  m.filename = resolved;
  m.loaded = true;
  m.exports = exports;
  require.cache[resolved] = m;
}

const refuse = (what: string) => () => {
  throw new Error(`${what} is not available in the Tessera agent`);
};

stub('docker-modem/lib/ssh.js', 'ssh2', { Client: class { constructor() { refuse('Docker over ssh://')(); } } });
stub('dockerode/lib/docker.js', 'tar-fs', { pack: refuse('tar packing'), extract: refuse('tar extraction') });
// docker-modem's duplex for hijacked streams (exec with stdin) takes readable-stream, a copy of
// Node's own streams (90 KB of source kept in memory): Node's are the same API.
stub('docker-modem/lib/http_duplex.js', 'readable-stream', require('node:stream'));
