// Reading a /metrics endpoint (a coordinator's, an agent's, etcd's) in a test.
//
// Over node:http on a connection of its own (no pool to reuse a socket the server is closing),
// and tried up to three times when the connection itself fails. A CI run once failed a test on
// `fetch failed` from a coordinator that went on serving gRPC and leading the next test, with the
// cause left out of the message; the connection error is now named, printed when it passes on a
// later try, and thrown with the URL when it does not.
import * as http from 'node:http';
import { parseMetrics } from '../../common/metrics';

function getOnce(url: string, timeoutMs: number): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer in ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

/** The body of GET url (200 only), with its content type. */
export async function scrapeRaw(url: string, tries = 3): Promise<{ type: string; body: string }> {
  let last: unknown;
  for (let i = 1; i <= tries; i++) {
    try {
      const res = await getOnce(url, 10_000);
      if (res.status !== 200) throw Object.assign(new Error(`GET ${url}: HTTP ${res.status}: ${res.body.slice(0, 200)}`), { http: true });
      if (i > 1) console.log(`      (scrape of ${url} answered on try ${i}; before: ${(last as Error).message})`);
      return res;
    } catch (err) {
      if ((err as { http?: boolean }).http) throw err; // an answer, not a connection that failed
      last = err;
      if (i < tries) await new Promise((r) => setTimeout(r, 500));
    }
  }
  const e = last as NodeJS.ErrnoException;
  throw new Error(`GET ${url} failed ${tries} times: ${e.code ? `${e.code}: ` : ''}${e.message}`);
}

/** The text of an endpoint's /metrics; `where` is a port on 127.0.0.1 or a host:port. */
export async function scrapeText(where: number | string): Promise<string> {
  return (await scrapeRaw(`http://${typeof where === 'number' ? `127.0.0.1:${where}` : where}/metrics`)).body;
}

/** An endpoint's /metrics parsed: series (name and labels, as written) to value. */
export async function scrape(where: number | string): Promise<Map<string, number>> {
  return parseMetrics(await scrapeText(where));
}
