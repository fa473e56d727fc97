// What every Tessera daemon does around its own work: compile its settings from flags, env and
// a file (exit 2 with every problem on bad config), log JSON, stay up until SIGTERM or SIGINT,
// then stop cleanly (exit 0), reload what it can on SIGHUP (as Nomad and Consul do; node's
// default for SIGHUP would end the process without a clean stop), and log instead of crash on
// a stray rejection.
import { Command } from 'commander';
import { addSchemaOptions, Layer, layersFromCommand, Schema } from './config';
import { activeFailpoints } from './failpoints';
import { ConfigError } from './errors';
import { createLogger, Logger, parseLevel } from './logger';
import { routeNodeWarnings } from './node-warnings';
import { VERSION } from './version';

export interface Daemon {
  start(): Promise<void>;
  stop(): Promise<void>;
  /**
   * SIGHUP: the settings compiled again (the --config file and the files it names read anew).
   * Applies what can change while running and returns the names of those it applied (the log
   * level is the caller's, applied first). Throws to keep the rest of the running settings.
   */
  reload?(next: unknown): string[];
}

export interface DaemonSpec<C extends { logLevel: string }> {
  name: string;
  description: string;
  schema: Schema;
  compile(layers: Layer[]): C;
  bindings?(config: C): Record<string, unknown>;
  create(config: C, log: Logger): Daemon;
  /** Logged with the signal: what a stop leaves behind (e.g. containers keep running). */
  stopNote?: string;
}

export async function runDaemon<C extends { logLevel: string }>(spec: DaemonSpec<C>): Promise<void> {
  const cmd = addSchemaOptions(new Command(spec.name).version(VERSION).description(spec.description), spec.schema);
  cmd.parse(process.argv);
  let config: C;
  try {
    config = spec.compile(layersFromCommand(spec.schema, cmd.opts()));
    activeFailpoints(); // a test-only setting in the environment, refused here when unreadable
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(err.message + '\n');
      process.exit(2);
    }
    if ((err as Error).message?.startsWith('TESSERA_FAILPOINTS')) {
      process.stderr.write(`invalid environment:\n  ${(err as Error).message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const log = createLogger(spec.name.replace(/^tessera-/, ''), config.logLevel, spec.bindings?.(config) ?? {});
  routeNodeWarnings((level, fields, msg) => log[level](fields, msg));
  const daemon = spec.create(config, log);
  // Library timers are unref'd so they never hold a process open on their own; the daemon
  // itself stays up until a signal says otherwise.
  const keepAlive = setInterval(() => {}, 1 << 30);
  let stopping = false;
  const shutdown = (signal: string) => {
    if (stopping) return;
    stopping = true;
    clearInterval(keepAlive);
    log.info({ signal }, spec.stopNote ?? 'shutting down');
    daemon.stop().then(() => process.exit(0), (err) => {
      log.error({ err: (err as Error).message }, 'unclean shutdown');
      process.exit(1);
    });
  };
  let current = config;
  process.on('SIGHUP', () => {
    let next: C;
    try {
      next = spec.compile(layersFromCommand(spec.schema, cmd.opts()));
    } catch (err) {
      const v = err instanceof ConfigError ? err.violations : [{ field: '', message: (err as Error).message }];
      log.error({ violations: v }, 'SIGHUP: the settings do not compile; the running ones stay');
      return;
    }
    try {
      const level = next.logLevel !== current.logLevel;
      if (level) log.setLevel(parseLevel(next.logLevel));
      const applied = [...(level ? ['logLevel'] : []), ...(daemon.reload?.(next) ?? [])];
      // What changed and cannot change while running (listen addresses, etcd, TLS files, ...).
      const later = Object.keys(spec.schema).filter((k) => !applied.includes(k) && k !== 'logLevel' && JSON.stringify((next as Record<string, unknown>)[k]) !== JSON.stringify((current as Record<string, unknown>)[k]));
      log.info({ applied, needRestart: later }, later.length ? 'SIGHUP: settings reloaded; the ones in needRestart take effect at the next start' : 'SIGHUP: settings reloaded');
      current = { ...next, ...Object.fromEntries(later.map((k) => [k, (current as Record<string, unknown>)[k]])) } as C;
    } catch (err) {
      const v = err instanceof ConfigError ? err.violations : [{ field: '', message: (err as Error).message }];
      log.error({ violations: v }, 'SIGHUP: not reloaded; the running settings stay');
    }
  });
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('unhandledRejection', (err) => log.error({ err: (err as Error)?.message ?? String(err) }, 'unhandled rejection'));
  try {
    await daemon.start();
  } catch (err) {
    log.fatal({ err: (err as Error).message }, `${spec.name} failed to start`);
    await daemon.stop().catch(() => {});
    process.exit(1);
  }
}
