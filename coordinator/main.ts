#!/usr/bin/env node
// tessera-coordinator: flags > env > --config file > defaults (see config.ts for every setting).
import { Command } from 'commander';
import { addSchemaOptions, layersFromCommand } from '../common/config';
import { ConfigError } from '../common/errors';
import { createLogger } from '../common/logger';
import { VERSION } from '../common/version';
import { COORDINATOR_SCHEMA, compileCoordinatorConfig, CoordinatorConfig } from './config';
import { Coordinator } from './coordinator';

async function main(): Promise<void> {
  const cmd = addSchemaOptions(new Command('tessera-coordinator').version(VERSION).description('Tessera coordinator: leader election in etcd, placement, reconciliation, Admin API'), COORDINATOR_SCHEMA);
  cmd.parse(process.argv);
  let config: CoordinatorConfig;
  try {
    config = compileCoordinatorConfig(layersFromCommand(COORDINATOR_SCHEMA, cmd.opts()));
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(err.message + '\n');
      process.exit(2);
    }
    throw err;
  }
  const log = createLogger('coordinator', config.logLevel, { coordinator: config.id });
  const coordinator = new Coordinator(config, log);
  // Library timers are unref'd so they never hold a process open on their own; the daemon
  // itself stays up until a signal says otherwise.
  const keepAlive = setInterval(() => {}, 1 << 30);
  let stopping = false;
  const shutdown = (signal: string) => {
    if (stopping) return;
    stopping = true;
    clearInterval(keepAlive);
    log.info({ signal }, 'shutting down');
    coordinator.stop().then(() => process.exit(0), (err) => {
      log.error({ err: (err as Error).message }, 'unclean shutdown');
      process.exit(1);
    });
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('unhandledRejection', (err) => log.error({ err: (err as Error)?.message ?? String(err) }, 'unhandled rejection'));
  try {
    await coordinator.start();
  } catch (err) {
    log.fatal({ err: (err as Error).message }, 'coordinator failed to start');
    await coordinator.stop().catch(() => {});
    process.exit(1);
  }
}

void main();
