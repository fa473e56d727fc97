#!/usr/bin/env node
// tessera-coordinator: flags > env > --config file > defaults (see config.ts for every setting).
import { runDaemon } from '../common/daemon';
import { COORDINATOR_SCHEMA, compileCoordinatorConfig } from './config';
import { Coordinator } from './coordinator';

void runDaemon({
  name: 'tessera-coordinator',
  description: 'Tessera coordinator: leader election in etcd, placement, reconciliation, scaling, Admin API',
  schema: COORDINATOR_SCHEMA,
  compile: compileCoordinatorConfig,
  bindings: (c) => ({ coordinator: c.id }),
  create: (c, log) => new Coordinator(c, log),
});
