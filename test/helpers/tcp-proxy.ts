// A small TCP proxy that a test can cut and restore, to put a process out of reach of etcd
// (or of a coordinator) without touching either side. Given a path as its target it proxies a
// unix socket (e.g. the Docker Engine's) and listens on one (start(path)).
import * as net from 'node:net';

export class TcpProxy {
  private server: net.Server;
  private sockets = new Set<net.Socket>();
  private cut = false;
  private holding = false;
  /** Each upstream connection and the client its replies go to. */
  private replies = new Map<net.Socket, net.Socket>();
  port = 0;

  constructor(private readonly target: number | string, private readonly targetHost = '127.0.0.1') {
    this.server = net.createServer((client) => {
      if (this.cut) {
        client.destroy();
        return;
      }
      const upstream = typeof this.target === 'string' ? net.connect(this.target) : net.connect(this.target, this.targetHost);
      this.track(client);
      this.track(upstream);
      client.pipe(upstream);
      if (this.holding) upstream.pause();
      else upstream.pipe(client);
      this.replies.set(upstream, client);
      upstream.on('close', () => this.replies.delete(upstream));
      const kill = () => { client.destroy(); upstream.destroy(); };
      client.on('error', kill).on('close', kill);
      upstream.on('error', kill).on('close', kill);
    });
  }

  private track(s: net.Socket): void {
    this.sockets.add(s);
    s.on('close', () => this.sockets.delete(s));
  }

  /** Listens on a free loopback port, or on the unix socket path given. */
  async start(socketPath?: string): Promise<number> {
    if (socketPath) {
      await new Promise<void>((r) => this.server.listen(socketPath, r));
      return 0;
    }
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this.port;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /**
   * Cuts the link like a network partition: open connections stall (no FIN, no RST: traffic
   * is dropped) and new ones are refused.
   */
  cutLink(): void {
    this.cut = true;
    for (const s of this.sockets) {
      s.pause();
      s.unpipe();
    }
  }

  /**
   * Requests still reach the target, their replies do not (held back, never delivered): the
   * target acts on a write whose answer the client never gets.
   */
  holdReplies(): void {
    this.holding = true;
    for (const [upstream, client] of this.replies) {
      upstream.unpipe(client);
      upstream.pause();
    }
  }

  /** Tears the open connections down and refuses new ones: calls under way fail at once. */
  breakLink(): void {
    this.cut = true;
    for (const s of this.sockets) s.destroy();
  }

  /** New connections go through again; stalled ones are torn down so clients reconnect. */
  restore(): void {
    this.cut = false;
    this.holding = false;
    for (const s of this.sockets) s.destroy();
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}
