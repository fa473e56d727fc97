// Prometheus metrics, served on their own HTTP port when --metrics-listen is set. prom-client
// is loaded only then: it costs about 11 MB of resident memory, a fifth of the agent's budget,
// so a process that is not scraped does not pay for it. Calls on a disabled Metrics do nothing.
import * as http from 'node:http';

export interface MetricDef {
  name: string;
  help: string;
  type: 'counter' | 'gauge' | 'histogram';
  labels?: string[];
  buckets?: number[];
}

type Labels = Record<string, string | number>;

export class Metrics {
  private registry?: import('prom-client').Registry;
  private metrics = new Map<string, { inc?: Function; set?: Function; observe?: Function; reset?: Function; labels: Function }>();
  private collectors: (() => void)[] = [];
  private server?: http.Server;
  address = '';

  constructor(private readonly defs: MetricDef[]) {}

  get enabled(): boolean {
    return !!this.registry;
  }

  /** Starts the /metrics endpoint; before this every call is a no-op. */
  async serve(listen: string): Promise<string> {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const prom = require('prom-client') as typeof import('prom-client');
    this.registry = new prom.Registry();
    for (const d of this.defs) {
      const opts = { name: d.name, help: d.help, labelNames: d.labels ?? [], registers: [this.registry] };
      const m = d.type === 'counter' ? new prom.Counter(opts) : d.type === 'gauge' ? new prom.Gauge(opts) : new prom.Histogram({ ...opts, buckets: d.buckets ?? prom.exponentialBuckets(0.001, 2, 14) });
      this.metrics.set(d.name, m as never);
    }
    this.server = http.createServer((req, res) => {
      if (req.url !== '/metrics') {
        res.writeHead(404).end('try /metrics\n');
        return;
      }
      for (const c of this.collectors) {
        try { c(); } catch { /* a collector must not break the scrape */ }
      }
      this.registry!.metrics().then((text) => {
        res.writeHead(200, { 'content-type': this.registry!.contentType });
        res.end(text);
      }, (err) => res.writeHead(500).end(String(err)));
    });
    const i = listen.lastIndexOf(':');
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(Number(listen.slice(i + 1)), listen.slice(0, i), () => resolve());
    });
    const a = this.server.address() as { port: number };
    this.address = `${listen.slice(0, i)}:${a.port}`;
    return this.address;
  }

  stop(): void {
    this.server?.close();
  }

  /** Runs before every scrape: for gauges read from state (nodes by state, host figures). */
  onCollect(fn: () => void): void {
    this.collectors.push(fn);
  }

  inc(name: string, labels: Labels = {}, v = 1): void {
    const m = this.metrics.get(name);
    if (m) (Object.keys(labels).length ? m.labels(labels) : m).inc(v);
  }

  set(name: string, labels: Labels, v: number): void {
    const m = this.metrics.get(name);
    if (m) (Object.keys(labels).length ? m.labels(labels) : m).set(v);
  }

  /** Resets a labelled gauge before it is filled again (states that disappeared drop out). */
  reset(name: string): void {
    this.metrics.get(name)?.reset?.();
  }

  observe(name: string, labels: Labels, seconds: number): void {
    const m = this.metrics.get(name);
    if (m) (Object.keys(labels).length ? m.labels(labels) : m).observe(seconds);
  }
}

/** Parses Prometheus text into "name{labels}" -> value (for tests and scripts). */
export function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}
