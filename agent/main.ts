#!/usr/bin/env node
// tessera-agent: flags > env > --config file > defaults (see config.ts for every setting).
import * as v8 from 'node:v8';
// The agent waits on I/O; V8's optimizing compiler buys it nothing and costs about 7 MB of
// resident memory (measured: 62 MB -> 55 MB at a 1 s report interval, same CPU). Set before
// any of our code gets hot. TESSERA_AGENT_V8_OPT=1 turns it back on.
if (process.env.TESSERA_AGENT_V8_OPT !== '1') v8.setFlagsFromString('--no-opt');
import { Command } from 'commander';
import { addSchemaOptions, layersFromCommand } from '../common/config';
import { ConfigError } from '../common/errors';
import { createLogger } from '../common/logger';
import { VERSION } from '../common/version';
import { Agent } from './agent';
import { AGENT_SCHEMA, AgentConfig, compileAgentConfig } from './config';

async function main(): Promise<void> {
  const cmd = addSchemaOptions(new Command('tessera-agent').version(VERSION).description('Tessera agent: reports the host, runs containers, carries out deployment instructions'), AGENT_SCHEMA);
  cmd.parse(process.argv);
  let config: AgentConfig;
  try {
    config = compileAgentConfig(layersFromCommand(AGENT_SCHEMA, cmd.opts()));
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(err.message + '\n');
      process.exit(2);
    }
    throw err;
  }
  const log = createLogger('agent', config.logLevel);
  const agent = new Agent(config, log);
  // Library timers are unref'd so they never hold a process open on their own; the daemon
  // itself stays up until a signal says otherwise.
  const keepAlive = setInterval(() => {}, 1 << 30);
  let stopping = false;
  const shutdown = (signal: string) => {
    if (stopping) return;
    stopping = true;
    clearInterval(keepAlive);
    log.info({ signal }, 'stopping; containers keep running');
    agent.stop().then(() => process.exit(0), () => process.exit(1));
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('unhandledRejection', (err) => log.error({ err: (err as Error)?.message ?? String(err) }, 'unhandled rejection'));
  try {
    await agent.start();
  } catch (err) {
    log.fatal({ err: (err as Error).message }, 'agent failed to start');
    process.exit(1);
  }
}

void main();
