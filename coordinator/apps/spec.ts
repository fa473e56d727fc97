// Application specs: validation with field paths, and defaults, compiled once. Everything
// downstream (scheduler, reconciler, agents) sees only a normalised spec.
import { InvalidArgumentError, FieldViolation } from '../../common/errors';
import type { AppSpec, AppSpec__Output } from '../../common/generated/tessera/v1/AppSpec';
import type { ComponentSpec__Output } from '../../common/generated/tessera/v1/ComponentSpec';

/** A component with every default filled in: nested settings are never null. */
export type NormalComponent = Omit<ComponentSpec__Output, 'resources' | 'health' | 'restart' | 'update' | 'cpuHardLimit' | 'imagePullPolicy' | 'restartedAtMs' | 'imagePullCredential' | 'secretEnv'> & {
  /** Set only when named (see normalizeComponent). */
  imagePullCredential?: string;
  /** VAR -> "SECRET/KEY"; set only when not empty (see normalizeComponent). */
  secretEnv?: Record<string, string>;
  /** Set only when a restart was asked for (see normalizeComponent). */
  restartedAtMs?: number;
  /** Set only when on (see normalizeComponent). */
  cpuHardLimit?: boolean;
  /** Set only when not IfNotPresent (see normalizeComponent). */
  imagePullPolicy?: 'Always' | 'Never';
  resources: NonNullable<ComponentSpec__Output['resources']>;
  health: NonNullable<ComponentSpec__Output['health']>;
  restart: NonNullable<ComponentSpec__Output['restart']>;
  /** order: set only when named (see normalizeComponent); updateOrder() gives the one in effect. */
  update: Omit<NonNullable<ComponentSpec__Output['update']>, 'order' | 'canary' | 'autoPromote'> & { order?: 'start-first' | 'stop-first'; canary?: number; autoPromote?: boolean };
};
export type NormalAppSpec = Omit<AppSpec__Output, 'components'> & { components: NormalComponent[] };

const NAME_RE = /^[a-z][a-z0-9-]{0,62}$/;
const ENV_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
// Docker's image reference grammar, loosely: [host[:port]/]path[:tag][@digest], lower-case path.
const IMAGE_RE = /^(?:[A-Za-z0-9.-]+(?::\d{1,5})?\/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$/;
const OPS = new Set(['=', '!=', 'in', 'not_in', 'exists']);
export const HEALTH_TYPES = new Set(['none', 'http', 'tcp', 'grpc', 'exec']);
export const MAX_INSTANCES = 1000;
/** Kubernetes' image pull policies, by their lower-case spelling. */
export const PULL_POLICIES: ReadonlyMap<string, 'IfNotPresent' | 'Always' | 'Never'> = new Map([['ifnotpresent', 'IfNotPresent'], ['always', 'Always'], ['never', 'Never']]);

export const DEFAULTS = {
  health: { intervalMs: 5_000, timeoutMs: 2_000, failureThreshold: 3, graceMs: 10_000, path: '/' },
  restart: { attempts: 3, windowMs: 60_000, delayMs: 1_000 },
  update: { maxParallel: 1, minHealthyMs: 2_000, healthyDeadlineMs: 60_000 },
  stopGraceMs: 10_000,
};

/** An app spec's size limit (its JSON): an apply writes it with the version it supersedes (two specs) in one etcd request, 1.5 MiB at most. */
export const MAX_SPEC_BYTES = 512 * 1024;

/** The field path of the largest value in a spec (for the size limit's message), with its size. */
export function largestField(x: unknown, at = ''): [string, number] {
  if (x === null || typeof x !== 'object') return [at, Buffer.byteLength(JSON.stringify(x) ?? '')];
  let best: [string, number] = [at, 0];
  const entries: [string, unknown][] = Array.isArray(x) ? x.map((e, i) => [`${at}[${i}]`, e]) : Object.entries(x).map(([k, e]) => [at ? `${at}.${k}` : k, e]);
  for (const [p, e] of entries) {
    const f = largestField(e, p);
    if (f[1] > best[1]) best = f;
  }
  return best;
}

/**
 * Validates a spec as received (JSON from grpcurl, YAML from the CLI, already decoded into the
 * proto shape) and returns it with defaults filled in. Throws InvalidArgumentError listing
 * every problem by field path, e.g. `components[1].resources.memoryMib: must be > 0`.
 */
export function normalizeAppSpec(spec: AppSpec__Output | AppSpec | undefined | null): NormalAppSpec {
  const v: FieldViolation[] = [];
  const bad = (field: string, message: string) => v.push({ field, message });
  if (!spec) throw InvalidArgumentError.field('spec', 'is required');
  const size = Buffer.byteLength(JSON.stringify(spec));
  if (size > MAX_SPEC_BYTES) {
    const [field, bytes] = largestField(spec);
    throw InvalidArgumentError.field(field, `the spec is ${size.toLocaleString('en-US')} bytes, at most ${MAX_SPEC_BYTES.toLocaleString('en-US')} (etcd holds each version in one value, and takes 1.5 MiB a request); this field is ${bytes.toLocaleString('en-US')} bytes: large data belongs in a volume or an image, not the spec`);
  }
  const name = spec.name ?? '';
  if (!NAME_RE.test(name)) bad('name', `must be 1-63 characters of a-z, 0-9 and "-", starting with a letter; got ${JSON.stringify(name)}`);
  const comps = spec.components ?? [];
  if (!comps.length) bad('components', 'at least one component is required');
  const seen = new Set<string>();
  const out: NormalComponent[] = comps.map((c, i) => normalizeComponent(c as ComponentSpec__Output, `components[${i}]`, bad, seen));
  for (const k of Object.keys(spec.labels ?? {})) if (!k) bad('labels', 'keys must not be empty');
  if (v.length) throw new InvalidArgumentError(v);
  return { name, components: out, labels: { ...(spec.labels ?? {}) } };
}

function normalizeComponent(c: Partial<ComponentSpec__Output>, at: string, bad: (f: string, m: string) => void, seen: Set<string>): NormalComponent {
  const name = c.name ?? '';
  if (!NAME_RE.test(name)) bad(`${at}.name`, `must be 1-63 characters of a-z, 0-9 and "-", starting with a letter; got ${JSON.stringify(name)}`);
  else if (seen.has(name)) bad(`${at}.name`, `duplicate component name "${name}"`);
  seen.add(name);
  if (!c.image) bad(`${at}.image`, 'is required');
  else if (!IMAGE_RE.test(c.image)) bad(`${at}.image`, `must be an image reference such as registry.example:5000/team/name:1.2 or name@sha256:<digest>, got ${JSON.stringify(c.image)}`);
  const pull = c.imagePullPolicy ? PULL_POLICIES.get(c.imagePullPolicy.toLowerCase()) : 'IfNotPresent';
  if (!pull) bad(`${at}.imagePullPolicy`, `must be IfNotPresent (the default), Always or Never, got ${JSON.stringify(c.imagePullPolicy)}`);
  if (c.imagePullCredential && !NAME_RE.test(c.imagePullCredential)) bad(`${at}.imagePullCredential`, `must name a registry credential (a-z, 0-9, "-"), got ${JSON.stringify(c.imagePullCredential)}`);
  const cpu = Number(c.resources?.cpuMillis ?? 0);
  const mem = Number(c.resources?.memoryMib ?? 0);
  if (!(cpu > 0)) bad(`${at}.resources.cpuMillis`, `must be > 0, got ${cpu}`);
  if (!(mem > 0)) bad(`${at}.resources.memoryMib`, `must be > 0, got ${mem}`);
  else if (mem < 6) bad(`${at}.resources.memoryMib`, 'must be at least 6 (the Docker Engine minimum)');
  if (c.cpuHardLimit && cpu > 0 && cpu < 10) bad(`${at}.resources.cpuMillis`, `must be at least 10 with cpuHardLimit (the Docker Engine's smallest quota, 0.01 CPU), got ${cpu}`);
  const instances = c.instances ?? 0;
  if (instances < 0 || instances > MAX_INSTANCES || !Number.isInteger(instances)) bad(`${at}.instances`, `must be an integer from 0 to ${MAX_INSTANCES}, got ${instances}`);

  const portNames = new Set<string>();
  const fixed = new Set<number>();
  (c.ports ?? []).forEach((p, j) => {
    if (!NAME_RE.test(p.name ?? '')) bad(`${at}.ports[${j}].name`, `must match ${NAME_RE.source}`);
    else if (portNames.has(p.name)) bad(`${at}.ports[${j}].name`, `duplicate port name "${p.name}"`);
    portNames.add(p.name);
    const port = p.port ?? 0;
    if (port < 0 || port > 65535 || !Number.isInteger(port)) bad(`${at}.ports[${j}].port`, `must be 0 (dynamic) or 1-65535, got ${port}`);
    else if (port && fixed.has(port)) bad(`${at}.ports[${j}].port`, `port ${port} is used twice`);
    if (port) fixed.add(port);
  });
  if (fixed.size && instances > 1 && !c.distinctHosts) {
    bad(`${at}.distinctHosts`, 'must be true when a fixed port is asked for more than one instance (two instances cannot bind one host port)');
  }
  for (const k of Object.keys(c.env ?? {})) if (!ENV_RE.test(k)) bad(`${at}.env.${k}`, 'is not a valid environment variable name');
  for (const [k, ref] of Object.entries(c.secretEnv ?? {})) {
    if (!ENV_RE.test(k)) bad(`${at}.secretEnv.${k}`, 'is not a valid environment variable name');
    else if (Object.prototype.hasOwnProperty.call(c.env ?? {}, k)) bad(`${at}.secretEnv.${k}`, 'is set in env too: name it in one of the two');
    else if (/^(TESSERA_|PORT_)/.test(k)) bad(`${at}.secretEnv.${k}`, 'TESSERA_* and PORT_* are set by Tessera');
    if (!parseSecretRef(ref)) bad(`${at}.secretEnv.${k}`, `must be SECRET/KEY (a secret's name, a key in it), got ${JSON.stringify(ref)}`);
  }

  (c.constraints ?? []).forEach((k, j) => {
    if (!k.label) bad(`${at}.constraints[${j}].label`, 'is required');
    const op = k.op || '=';
    if (!OPS.has(op)) bad(`${at}.constraints[${j}].op`, `must be one of ${[...OPS].join(', ')}, got ${JSON.stringify(k.op)}`);
    if ((op === 'in' || op === 'not_in') && !(k.values ?? []).length) bad(`${at}.constraints[${j}].values`, `must not be empty for "${op}"`);
  });
  const placement = c.placement || 'spread';
  if (placement !== 'spread' && placement !== 'binpack') bad(`${at}.placement`, `must be "spread" or "binpack", got ${JSON.stringify(c.placement)}`);

  const h = c.health;
  const htype = h?.type || 'none';
  if (!HEALTH_TYPES.has(htype)) bad(`${at}.health.type`, `must be one of ${[...HEALTH_TYPES].join(', ')}, got ${JSON.stringify(h?.type)}`);
  if ((htype === 'http' || htype === 'tcp' || htype === 'grpc') && !portNames.has(h?.port ?? '')) {
    bad(`${at}.health.port`, `must name one of the component's ports (${[...portNames].join(', ') || 'none declared'}), got ${JSON.stringify(h?.port ?? '')}`);
  }
  if (htype === 'exec' && !(h?.command ?? []).length) bad(`${at}.health.command`, 'is required for an exec check');
  const interval = Number(h?.intervalMs) || DEFAULTS.health.intervalMs;
  const timeout = Number(h?.timeoutMs) || DEFAULTS.health.timeoutMs;
  if (interval < 100) bad(`${at}.health.intervalMs`, 'must be at least 100');
  if (timeout >= interval) bad(`${at}.health.timeoutMs`, `must be less than intervalMs (${interval})`);
  if ((h?.failureThreshold ?? 0) < 0) bad(`${at}.health.failureThreshold`, 'must be >= 0');
  // Unset: the default (10 s); 0: no grace, failures count from the start (grace_ms is a proto3
  // optional field: before session 24, 0 could not be told from unset and meant the default).
  const grace = h?.graceMs === undefined || h?.graceMs === null ? DEFAULTS.health.graceMs : Number(h.graceMs);
  if (!Number.isFinite(grace) || grace < 0) bad(`${at}.health.graceMs`, `must be 0 or more (ms), got ${JSON.stringify(h?.graceMs)}`);

  const r = c.restart;
  if ((r?.attempts ?? 0) < 0) bad(`${at}.restart.attempts`, 'must be >= 0');
  const u = c.update;
  if ((u?.maxParallel ?? 0) < 0) bad(`${at}.update.maxParallel`, 'must be >= 0');
  if (u?.order && u.order !== 'start-first' && u.order !== 'stop-first') bad(`${at}.update.order`, `must be start-first or stop-first (or left out: stop-first with volumes), got ${JSON.stringify(u.order)}`);
  const canary = Number(u?.canary ?? 0);
  if (!Number.isInteger(canary) || canary < 0 || canary > MAX_INSTANCES) bad(`${at}.update.canary`, `must be a whole number from 0 to ${MAX_INSTANCES}, got ${u?.canary}`);
  // A canary runs beside the instance of its slot it may replace: never with stop-first (one process per slot's volume).
  else if (canary > 0 && (u?.order === 'stop-first' || (!u?.order && (c.volumes ?? []).length))) bad(`${at}.update.canary`, 'needs update.order start-first: a canary runs beside the old instance of its slot (a component with volumes is stop-first unless it says start-first)');
  if (u?.autoPromote && canary === 0) bad(`${at}.update.autoPromote`, 'needs update.canary: it promotes a version once its canaries are healthy');

  if (c.taskStatePoll?.port && !portNames.has(c.taskStatePoll.port)) bad(`${at}.taskStatePoll.port`, `must name one of the component's ports, got ${JSON.stringify(c.taskStatePoll.port)}`);
  (c.tunables ?? []).forEach((t, j) => {
    if (!ENV_RE.test(t.env ?? '')) bad(`${at}.tunables[${j}].env`, 'is not a valid environment variable name');
    if (Number(t.min) > Number(t.max)) bad(`${at}.tunables[${j}].min`, `must not exceed max (${t.min} > ${t.max})`);
    const cur = Number((c.env ?? {})[t.env]);
    if (!Number.isFinite(cur) || (c.env ?? {})[t.env] === undefined) bad(`${at}.env.${t.env}`, `a tunable needs a numeric starting value in env, got ${JSON.stringify((c.env ?? {})[t.env])}`);
    else if (cur < Number(t.min) || cur > Number(t.max)) bad(`${at}.env.${t.env}`, `${cur} is outside the tunable range ${t.min}..${t.max}`);
  });
  (c.capabilities ?? []).forEach((cap, j) => {
    if (!/^[A-Z][A-Z_]{1,31}$/.test(cap) || cap === 'ALL') bad(`${at}.capabilities[${j}]`, `must be one capability name such as NET_BIND_SERVICE (not ALL), got ${JSON.stringify(cap)}`);
  });
  const volNames = new Set<string>();
  (c.volumes ?? []).forEach((vol, j) => {
    if (!NAME_RE.test(vol.name ?? '')) bad(`${at}.volumes[${j}].name`, `must match ${NAME_RE.source}`);
    else if (volNames.has(vol.name)) bad(`${at}.volumes[${j}].name`, `duplicate volume name "${vol.name}"`);
    volNames.add(vol.name);
    if (!vol.path?.startsWith('/') || vol.path.includes('..')) bad(`${at}.volumes[${j}].path`, 'must be an absolute path without ".."');
    // A copy is only consistent from a stopped instance: the old one must stop before the new one starts.
    if (vol.migrate && u?.order === 'start-first') bad(`${at}.volumes[${j}].migrate`, 'needs update.order stop-first (or left out): a volume is copied from the slot\'s stopped instance');
  });
  if (c.kind && !NAME_RE.test(c.kind)) bad(`${at}.kind`, `must be 1-63 characters of a-z, 0-9 and "-", starting with a letter; got ${JSON.stringify(c.kind)}`);

  return {
    name,
    image: c.image ?? '',
    command: [...(c.command ?? [])],
    args: [...(c.args ?? [])],
    env: { ...(c.env ?? {}) },
    ports: (c.ports ?? []).map((p) => ({ name: p.name, port: p.port ?? 0 })),
    resources: { cpuMillis: cpu, memoryMib: mem, diskMib: Number(c.resources?.diskMib ?? 0) },
    instances,
    constraints: (c.constraints ?? []).map((k) => ({ label: k.label, op: k.op || '=', value: k.value ?? '', values: [...(k.values ?? [])] })),
    placement,
    distinctHosts: !!c.distinctHosts,
    health: {
      type: htype,
      path: h?.path || DEFAULTS.health.path,
      port: h?.port ?? '',
      command: [...(h?.command ?? [])],
      intervalMs: interval,
      timeoutMs: timeout,
      failureThreshold: h?.failureThreshold || DEFAULTS.health.failureThreshold,
      graceMs: grace,
    },
    restart: {
      attempts: r?.attempts || DEFAULTS.restart.attempts,
      windowMs: Number(r?.windowMs) || DEFAULTS.restart.windowMs,
      delayMs: Number(r?.delayMs) || DEFAULTS.restart.delayMs,
    },
    update: {
      maxParallel: u?.maxParallel || DEFAULTS.update.maxParallel,
      minHealthyMs: Number(u?.minHealthyMs) || DEFAULTS.update.minHealthyMs,
      healthyDeadlineMs: Number(u?.healthyDeadlineMs) || DEFAULTS.update.healthyDeadlineMs,
      autoRevert: !!u?.autoRevert,
      // Left out unless named, so that specs from before the field hash as they did (no restarts).
      ...(u?.order ? { order: u.order } : {}),
      // Likewise left out when off.
      ...(canary > 0 ? { canary } : {}),
      ...(canary > 0 && u?.autoPromote ? { autoPromote: true } : {}),
    },
    // migrate is left out when off, so that specs from before the field hash as they did.
    volumes: (c.volumes ?? []).map((vol) => ({ name: vol.name, path: vol.path, readOnly: !!vol.readOnly, ...(vol.migrate ? { migrate: true } : {}) })),
    stopGraceMs: Number(c.stopGraceMs) || DEFAULTS.stopGraceMs,
    capabilities: [...(c.capabilities ?? [])].map((x) => x.replace(/^CAP_/, '')),
    readOnlyRoot: !!c.readOnlyRoot,
    // Left out when off, so that specs from before the field hash as they did (no restarts).
    cpuHardLimit: c.cpuHardLimit ? true : undefined,
    // Likewise left out at the default.
    imagePullPolicy: pull && pull !== 'IfNotPresent' ? pull : undefined,
    ...(c.imagePullCredential ? { imagePullCredential: c.imagePullCredential } : {}),
    // Left out when empty, so that specs from before the field hash as they did (no restarts).
    ...(Object.keys(c.secretEnv ?? {}).length ? { secretEnv: { ...c.secretEnv } } : {}),
    restartedAtMs: Number(c.restartedAtMs) > 0 ? Number(c.restartedAtMs) : undefined,
    tunables: (c.tunables ?? []).map((t) => ({ env: t.env, min: Number(t.min), max: Number(t.max) })),
    taskStatePoll: c.taskStatePoll?.port ? { port: c.taskStatePoll.port, path: c.taskStatePoll.path || '/', intervalMs: Number(c.taskStatePoll.intervalMs) || 2_000 } : null,
    // Present only when it differs from the name, so specs written before kinds existed keep
    // their hash (and their instances are not restarted by an upgrade).
    ...(c.kind && c.kind !== name ? { kind: c.kind } : {}),
  } as NormalComponent;
}

export const SECRET_NAME_RE = NAME_RE;
export const SECRET_KEY_RE = /^[A-Za-z0-9_.-]{1,253}$/;

/** A secret_env value, "SECRET/KEY", split; undefined when it is not one. */
export function parseSecretRef(ref: string | undefined): { secret: string; key: string } | undefined {
  const i = (ref ?? '').indexOf('/');
  if (i < 0) return undefined;
  const secret = ref!.slice(0, i);
  const key = ref!.slice(i + 1);
  return SECRET_NAME_RE.test(secret) && SECRET_KEY_RE.test(key) ? { secret, key } : undefined;
}

/** The update order in effect: as named, else stop-first for a component with volumes (its slots' data). */
export function updateOrder(c: Pick<NormalComponent, 'update' | 'volumes'>): 'start-first' | 'stop-first' {
  return c.update.order ?? (c.volumes.length ? 'stop-first' : 'start-first');
}

/** The kind a component's instances register as: its kind, or its name. */
export function kindOf(c: { name: string; kind?: string }): string {
  return c.kind || c.name;
}

/** Stable JSON for comparing specs: "is this apply a change?" */
export function specKey(s: NormalAppSpec): string {
  return JSON.stringify(s, (_k, val) => (val && typeof val === 'object' && !Array.isArray(val) ? Object.fromEntries(Object.entries(val).sort(([a], [b]) => a.localeCompare(b))) : val));
}
