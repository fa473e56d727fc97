#!/usr/bin/env node
// tessera-agent: flags > env > --config file > defaults (see config.ts for every setting).
import * as v8 from 'node:v8';
// An agent that only runs containers waits on I/O; V8's optimizing compilers buy it nothing and
// cost about 7 MB of resident memory (measured: 62 MB -> 55 MB at a 1 s report interval, same
// CPU). Set before any of our code gets hot. The step relay turns it on at the first job step it
// relays (relay-server.ts); TESSERA_AGENT_V8_OPT=1 keeps it on from the start, =0 keeps it off.
if (process.env.TESSERA_AGENT_V8_OPT !== '1') {
  v8.setFlagsFromString('--no-opt');
  // Nor does the baseline compiler (Sparkplug): machine code for warm functions, ~1.7 MB
  // resident (measured: 57.4 -> 55.7 MB median at a 1 s report interval).
  v8.setFlagsFromString('--no-sparkplug');
  // Grow the heap reluctantly and collect sooner: the agent's heap is small and steady.
  v8.setFlagsFromString('--optimize-for-size');
}

import { runDaemon } from '../common/daemon';
import { Agent } from './agent';
import { AGENT_SCHEMA, compileAgentConfig } from './config';

void runDaemon({
  name: 'tessera-agent',
  description: 'Tessera agent: reports the host, runs containers, carries out deployment instructions',
  schema: AGENT_SCHEMA,
  compile: compileAgentConfig,
  create: (c, log) => new Agent(c, log),
  stopNote: 'stopping; containers keep running',
});
