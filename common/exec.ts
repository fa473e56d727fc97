// ExecInstance (a command in an instance's container, as kubectl exec): the request's rules,
// checked alike by the coordinator that takes the call and the agent that runs it.
import { InvalidArgumentError } from './errors';
import type { ExecInstanceRequest__Output } from './generated/tessera/v1/ExecInstanceRequest';

/** At most this much standard input per ExecInstance call. */
export const EXEC_STDIN_MAX = 1024 * 1024;
/** ExecInstance's timeout when the request names none, and the longest it may name. */
export const EXEC_TIMEOUT_DEFAULT_MS = 60_000;
export const EXEC_TIMEOUT_MAX_MS = 3_600_000;

/** An ExecInstance request checked (the same rules on the coordinator and the agent), with its timeout filled in. */
export function validateExec(req: ExecInstanceRequest__Output): ExecInstanceRequest__Output {
  if (!req.instanceId) throw InvalidArgumentError.field('instance_id', 'is required');
  if (!req.command.length) throw InvalidArgumentError.field('command', 'is required: the program to run and its arguments');
  if (!req.command[0]) throw InvalidArgumentError.field('command[0]', 'is empty: name the program to run');
  if (req.stdin.length > EXEC_STDIN_MAX) throw InvalidArgumentError.field('stdin', `is ${req.stdin.length} bytes; at most ${EXEC_STDIN_MAX}`);
  if (req.timeoutMs > EXEC_TIMEOUT_MAX_MS) throw InvalidArgumentError.field('timeout_ms', `is ${req.timeoutMs}; at most ${EXEC_TIMEOUT_MAX_MS} (an hour)`);
  return { ...req, timeoutMs: req.timeoutMs || EXEC_TIMEOUT_DEFAULT_MS };
}
