// For components written in TypeScript: report task-processing state to the local agent in one
// line. The agent passes its endpoint and the instance id in the environment.
//
//   import { reportTaskState } from 'tessera/common/task-reporter';
//   await reportTaskState({ queueDepth: queue.length, inFlight, processed, failed });
import * as http from 'node:http';

export interface TaskFigures {
  queueDepth?: number;
  inFlight?: number;
  processed?: number;
  failed?: number;
  latencyP95Ms?: number;
  custom?: Record<string, number>;
}

export function reportTaskState(f: TaskFigures, env: NodeJS.ProcessEnv = process.env): Promise<void> {
  const base = env.TESSERA_AGENT_ENDPOINT;
  const id = env.TESSERA_INSTANCE_ID;
  if (!base || !id) return Promise.resolve(); // not run by Tessera: nothing to report to
  const body = JSON.stringify(f);
  return new Promise((resolve, reject) => {
    const req = http.request(`${base}/v1/task-state/${id}`, { method: 'POST', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }, timeout: 1_000 }, (res) => {
      res.resume();
      if ((res.statusCode ?? 500) < 300) resolve();
      else reject(new Error(`agent refused the report: HTTP ${res.statusCode}`));
    });
    req.on('timeout', () => req.destroy(new Error('agent did not answer')));
    req.on('error', reject);
    req.end(body);
  });
}
