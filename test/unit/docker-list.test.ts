// The agent's container list against an Engine that accepts connections and never answers (a
// hung dockerd): a unix-socket HTTP server of the test's, dockerode as the agent uses it.
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { DockerRuntime } from '../../agent/docker-runtime';

describe('DockerRuntime.list against a hung Engine', () => {
  let dir: string;
  let server: http.Server;
  let requests = 0;
  let answer: ((res: http.ServerResponse) => void) | undefined;
  const held: http.ServerResponse[] = [];

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-engine-'));
    server = http.createServer((req, res) => {
      requests++;
      if (answer) answer(res);
      else held.push(res); // never answered
    });
    await new Promise<void>((r) => server.listen(path.join(dir, 'engine.sock'), r));
  });
  after(async () => {
    for (const r of held) r.destroy();
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('fails within its timeout, and the next calls wait on the same request instead of adding one each', async () => {
    const rt = new DockerRuntime('n1', path.join(dir, 'volumes'), path.join(dir, 'engine.sock'));
    const t0 = Date.now();
    const err = await rt.list(200).then(() => undefined, (e: Error) => e);
    expect(err?.message).to.equal('container list timed out after 200 ms');
    expect(Date.now() - t0).to.be.lessThan(2_000);
    await rt.list(100).catch(() => undefined);
    await rt.list(100).catch(() => undefined);
    expect(requests, 'requests the Engine got').to.equal(1);
    // The Engine answers the request it held: the calls after it get fresh lists.
    held.shift()!.writeHead(200, { 'content-type': 'application/json' }).end('[]');
    answer = (res) => res.writeHead(200, { 'content-type': 'application/json' }).end('[]');
    await new Promise((r) => setTimeout(r, 50));
    expect(await rt.list(1_000)).to.deep.equal([]);
    expect(requests).to.equal(2);
  });
});
