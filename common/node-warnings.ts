// Node's process warnings in a daemon's JSON log (the CLI sets process.noDeprecation instead).
/**
 * Node's own process warnings, which it writes to stderr as plain text (a line that is not JSON
 * among the daemon's logs), go to `out` instead, each kind once. DEP0123 ("Setting the TLS
 * ServerName to an IP address") comes from grpc-js giving a channel's target as the TLS server
 * name, on every TLS connection to an address like 127.0.0.1: nothing an operator can change,
 * so it goes at debug.
 */
export function routeNodeWarnings(out: (level: 'warn' | 'debug', fields: Record<string, unknown>, msg: string) => void): void {
  const seen = new Set<string>();
  process.removeAllListeners('warning');
  process.on('warning', (w: Error & { code?: string }) => {
    const key = `${w.name}:${w.code ?? w.message}`;
    if (seen.has(key)) return;
    seen.add(key);
    const fields = { warning: w.name, ...(w.code ? { code: w.code } : {}), detail: w.message };
    if (w.code === 'DEP0123') out('debug', fields, 'node warned that a TLS server name is an IP address (grpc-js names the target address; harmless)');
    else out('warn', fields, `node warning: ${w.name}: ${w.message}`);
  });
}
