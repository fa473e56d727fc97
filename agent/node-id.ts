// A node keeps one id for its whole life: generated on first start, kept in the state dir.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';

export function loadOrCreateNodeId(stateDir: string, override?: string): string {
  fs.mkdirSync(stateDir, { recursive: true });
  const file = path.join(stateDir, 'node-id');
  if (override) {
    fs.writeFileSync(file, override + '\n');
    return override;
  }
  try {
    const id = fs.readFileSync(file, 'utf8').trim();
    if (id) return id;
  } catch {
    /* first start */
  }
  const id = `node-${randomBytes(6).toString('hex')}`;
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, id + '\n');
  fs.renameSync(tmp, file); // atomic: a crash never leaves a half-written id
  return id;
}

/**
 * This agent's own id (random, made on first start, kept in the state dir): the leader holds a
 * node id for the agent whose uid it first recorded, so a second agent given the same node id (a
 * cloned config, a copied --node-id) is refused instead of taking turns on the node with it.
 */
export function loadOrCreateAgentUid(stateDir: string): string {
  fs.mkdirSync(stateDir, { recursive: true });
  const file = path.join(stateDir, 'agent-uid');
  try {
    const uid = fs.readFileSync(file, 'utf8').trim();
    if (/^[0-9a-f]{16,64}$/.test(uid)) return uid;
  } catch {
    /* first start */
  }
  const uid = randomBytes(8).toString('hex');
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, uid + '\n');
  fs.renameSync(tmp, file);
  return uid;
}
