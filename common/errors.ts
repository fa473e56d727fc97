// One error taxonomy for all of Tessera. Each failure is a class with a gRPC status; it is
// mapped to a ServiceError once on the server side (toServiceError) and back once on the
// client side (fromServiceError), so callers switch on classes, never on message text.
import * as grpc from '@grpc/grpc-js';

/** A field that failed validation, named by its path in the request (e.g. `components[1].resources.memoryMiB`). */
export interface FieldViolation {
  field: string;
  message: string;
}

export const LEADER_ADDRESS_KEY = 'tessera-leader-address';
/**
 * Request metadata of a SubmitJobs stream whose client moves to the leader itself: a follower
 * refuses such a stream naming the leader, instead of forwarding each submission there.
 */
export const NO_FORWARD_KEY = 'tessera-no-forward';
export const LEADER_ID_KEY = 'tessera-leader-id';
export const ERROR_KIND_KEY = 'tessera-error-kind';
export const VIOLATIONS_KEY = 'tessera-field-violations';

export class TesseraError extends Error {
  readonly code: grpc.status = grpc.status.UNKNOWN;
  /** Retrying the same call later may succeed. */
  readonly retryable: boolean = false;
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
  metadata(): grpc.Metadata {
    const md = new grpc.Metadata();
    md.set(ERROR_KIND_KEY, this.name);
    return md;
  }
}

export class InvalidArgumentError extends TesseraError {
  override readonly code = grpc.status.INVALID_ARGUMENT;
  constructor(readonly violations: FieldViolation[]) {
    super(violations.map((v) => (v.field ? `${v.field}: ${v.message}` : v.message)).join('; '));
  }
  static field(field: string, message: string): InvalidArgumentError {
    return new InvalidArgumentError([{ field, message }]);
  }
  override metadata(): grpc.Metadata {
    const md = super.metadata();
    md.set(VIOLATIONS_KEY, JSON.stringify(this.violations));
    return md;
  }
}

export class NotFoundError extends TesseraError {
  override readonly code = grpc.status.NOT_FOUND;
  constructor(readonly kind: string, readonly id: string) {
    super(`${kind} "${id}" not found`);
  }
}

export class AlreadyExistsError extends TesseraError {
  override readonly code = grpc.status.ALREADY_EXISTS;
}

export class FailedPreconditionError extends TesseraError {
  override readonly code = grpc.status.FAILED_PRECONDITION;
}

export class ResourceExhaustedError extends TesseraError {
  override readonly code = grpc.status.RESOURCE_EXHAUSTED;
  override readonly retryable = true;
}

/** A write reached a coordinator that is not the leader and could not be forwarded. */
/** How a NotLeaderError reads: a refusal (nothing was done), recognisable where only the text travels. */
export const NOT_LEADER_TEXT = 'this coordinator is not the leader';
export const NO_LEADER_TEXT = 'no leader is elected right now; retry shortly';

export class NotLeaderError extends TesseraError {
  override readonly code = grpc.status.UNAVAILABLE;
  override readonly retryable = true;
  constructor(readonly leaderId?: string, readonly leaderAddress?: string) {
    super(
      leaderAddress
        ? `${NOT_LEADER_TEXT}; the leader is ${leaderId} at ${leaderAddress}`
        : NO_LEADER_TEXT,
    );
  }
  override metadata(): grpc.Metadata {
    const md = super.metadata();
    if (this.leaderAddress) md.set(LEADER_ADDRESS_KEY, this.leaderAddress);
    if (this.leaderId) md.set(LEADER_ID_KEY, this.leaderId);
    return md;
  }
}

/** A leader's write was refused by etcd because its campaign key is gone: it is no longer the leader. */
export class FencedError extends TesseraError {
  override readonly code = grpc.status.UNAVAILABLE;
  override readonly retryable = true;
  constructor(message = 'write refused by the leadership fence: this coordinator lost leadership') {
    super(message);
  }
}

/** etcd (or another dependency) cannot be reached. */
export class UnavailableError extends TesseraError {
  override readonly code = grpc.status.UNAVAILABLE;
  override readonly retryable = true;
}

export class DeadlineExceededError extends TesseraError {
  override readonly code = grpc.status.DEADLINE_EXCEEDED;
  override readonly retryable = true;
}

export class UnauthenticatedError extends TesseraError {
  override readonly code = grpc.status.UNAUTHENTICATED;
}

export class PermissionDeniedError extends TesseraError {
  override readonly code = grpc.status.PERMISSION_DENIED;
}

export class InternalError extends TesseraError {
  override readonly code = grpc.status.INTERNAL;
}

/** Configuration that cannot be compiled; lists every problem with its field path. */
export class ConfigError extends Error {
  constructor(readonly violations: FieldViolation[]) {
    super('invalid configuration:\n' + violations.map((v) => `  ${v.field}: ${v.message}`).join('\n'));
    this.name = 'ConfigError';
  }
}

/**
 * The problems of a file a setting names, read with the settings (so that a bad file is a
 * configuration error, exit 2, not a failed start): `load`'s ConfigError, or none.
 */
export function fileViolations(load: () => unknown): FieldViolation[] {
  try {
    load();
    return [];
  } catch (e) {
    if (e instanceof ConfigError) return e.violations;
    throw e;
  }
}

/** The codes a client may retry on its own: in one set, not scattered. */
export const RETRYABLE_CODES: ReadonlySet<grpc.status> = new Set([
  grpc.status.UNAVAILABLE,
  grpc.status.DEADLINE_EXCEEDED,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.ABORTED,
]);

/** Server side: any thrown value becomes a ServiceError; unknown exceptions become INTERNAL. */
export function toServiceError(err: unknown): Partial<grpc.ServiceError> {
  if (err instanceof TesseraError) {
    return { code: err.code, details: err.message, metadata: err.metadata() };
  }
  if (isServiceError(err)) {
    // Already a gRPC error (e.g. from a forwarded call): pass it through unchanged.
    return { code: err.code, details: err.details, metadata: err.metadata };
  }
  const message = err instanceof Error ? err.message : String(err);
  return { code: grpc.status.INTERNAL, details: `internal error: ${message}` };
}

export function isServiceError(err: unknown): err is grpc.ServiceError {
  return typeof err === 'object' && err !== null && 'code' in err && 'details' in err && 'metadata' in err;
}

/** Client side: a ServiceError becomes the matching TesseraError class again. */
export function fromServiceError(err: grpc.ServiceError): TesseraError {
  const kind = String(err.metadata?.get(ERROR_KIND_KEY)?.[0] ?? '');
  const details = err.details || err.message;
  switch (err.code) {
    case grpc.status.INVALID_ARGUMENT: {
      const raw = err.metadata?.get(VIOLATIONS_KEY)?.[0];
      const violations: FieldViolation[] = raw ? JSON.parse(String(raw)) : [{ field: '', message: details }];
      return new InvalidArgumentError(violations);
    }
    case grpc.status.NOT_FOUND: {
      const e = new NotFoundError('resource', '');
      e.message = details;
      return e;
    }
    case grpc.status.UNAVAILABLE: {
      if (kind === 'NotLeaderError') {
        const addr = err.metadata.get(LEADER_ADDRESS_KEY)[0];
        const id = err.metadata.get(LEADER_ID_KEY)[0];
        return new NotLeaderError(id ? String(id) : undefined, addr ? String(addr) : undefined);
      }
      if (kind === 'FencedError') return new FencedError(details);
      return new UnavailableError(details);
    }
    case grpc.status.ALREADY_EXISTS: return new AlreadyExistsError(details);
    case grpc.status.FAILED_PRECONDITION: return new FailedPreconditionError(details);
    case grpc.status.RESOURCE_EXHAUSTED: return new ResourceExhaustedError(details);
    case grpc.status.DEADLINE_EXCEEDED: return new DeadlineExceededError(details);
    case grpc.status.UNAUTHENTICATED: return new UnauthenticatedError(details);
    case grpc.status.PERMISSION_DENIED: return new PermissionDeniedError(details);
    default: return new InternalError(details);
  }
}
