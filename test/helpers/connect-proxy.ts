// An HTTP CONNECT proxy on loopback, for cutting one process off from one address while it still
// reaches the others: a partition between that process and one peer alone. Give the process
// `grpc_proxy=http://127.0.0.1:<port>` (grpc-js sends every channel through it, loopback too),
// then partition(port): its tunnels to that port stall (no FIN, no RST: traffic is dropped) and
// new ones are never answered, as a network that drops the packets.
import http from 'node:http';
import net from 'node:net';

export class ConnectProxy {
  private server = http.createServer((_req, res) => res.writeHead(405).end());
  private tunnels = new Set<{ port: number; sockets: net.Socket[] }>();
  private cut = new Set<number>();
  private held: { port: number; socket: net.Socket }[] = [];

  async start(): Promise<number> {
    this.server.on('connect', (req: http.IncomingMessage, client: net.Socket, head: Buffer) => {
      const [host, p] = String(req.url).split(':');
      const port = Number(p);
      if (host !== '127.0.0.1' && host !== 'localhost') {
        client.end('HTTP/1.1 403 Forbidden\r\n\r\n');
        return;
      }
      if (this.cut.has(port)) {
        this.held.push({ port, socket: client }); // never answered
        client.on('error', () => {});
        return;
      }
      const upstream = net.connect(port, '127.0.0.1', () => {
        client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
        if (head.length) upstream.write(head);
        upstream.pipe(client);
        client.pipe(upstream);
      });
      const t = { port, sockets: [client, upstream] };
      this.tunnels.add(t);
      const done = () => {
        this.tunnels.delete(t);
        client.destroy();
        upstream.destroy();
      };
      upstream.on('error', done);
      client.on('error', done);
      upstream.on('close', done);
      client.on('close', done);
    });
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()));
    return (this.server.address() as net.AddressInfo).port;
  }

  /** Drops the traffic to one port: open tunnels stall, new ones are never answered. */
  partition(port: number): void {
    this.cut.add(port);
    for (const t of this.tunnels) {
      if (t.port !== port) continue;
      for (const s of t.sockets) {
        s.unpipe();
        s.pause();
      }
    }
  }

  /** Lets the traffic to a port through again; stalled tunnels are torn down so clients reconnect. */
  heal(port: number): void {
    this.cut.delete(port);
    for (const t of [...this.tunnels]) if (t.port === port) for (const s of t.sockets) s.destroy();
    for (const h of this.held.filter((x) => x.port === port)) h.socket.destroy();
    this.held = this.held.filter((x) => x.port !== port);
  }

  async stop(): Promise<void> {
    for (const t of this.tunnels) for (const s of t.sockets) s.destroy();
    for (const h of this.held.splice(0)) h.socket.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}
