// Structured JSON logs, one object per line on stdout, with a level set by flag or
// TESSERA_LOG_LEVEL. The call shape follows pino (`log.info({ key: value }, 'message')`,
// `log.child({ part })`) but it is written here: pino and its helpers cost the agent about
// 8 MB of resident memory, a seventh of its budget, for features we do not use.
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

const RANK: Record<LogLevel, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60, silent: Infinity };

type LogFn = {
  (msg: string): void;
  (obj: Record<string, unknown>, msg?: string): void;
};

export interface Logger {
  readonly level: LogLevel;
  /** Sets the level of this logger, its parent and every child of either (one level a process: SIGHUP reloads it). */
  setLevel(level: LogLevel): void;
  trace: LogFn;
  debug: LogFn;
  info: LogFn;
  warn: LogFn;
  error: LogFn;
  fatal: LogFn;
  child(bindings: Record<string, unknown>): Logger;
  isLevelEnabled(level: LogLevel): boolean;
}

export type Sink = (line: string) => void;
const stdoutSink: Sink = (line) => process.stdout.write(line);

function errorToJson(v: unknown): unknown {
  return v instanceof Error ? { type: v.name, message: v.message, stack: v.stack } : v;
}

class JsonLogger implements Logger {
  trace: LogFn = this.method('trace');
  debug: LogFn = this.method('debug');
  info: LogFn = this.method('info');
  warn: LogFn = this.method('warn');
  error: LogFn = this.method('error');
  fatal: LogFn = this.method('fatal');

  /** Shared by a logger and all its children. */
  constructor(private readonly shared: { level: LogLevel; rank: number }, private readonly bindings: Record<string, unknown>, private readonly sink: Sink) {}

  get level(): LogLevel { return this.shared.level; }

  setLevel(level: LogLevel): void {
    this.shared.level = level;
    this.shared.rank = RANK[level];
  }

  isLevelEnabled(level: LogLevel): boolean {
    return RANK[level] >= this.shared.rank;
  }

  child(bindings: Record<string, unknown>): Logger {
    return new JsonLogger(this.shared, { ...this.bindings, ...bindings }, this.sink);
  }

  private method(level: LogLevel): LogFn {
    return ((a: string | Record<string, unknown>, b?: string) => {
      if (RANK[level] < this.shared.rank) return;
      const fields = typeof a === 'string' ? {} : a;
      const msg = typeof a === 'string' ? a : b;
      const rec: Record<string, unknown> = { level, time: new Date().toISOString(), ...this.bindings };
      for (const [k, v] of Object.entries(fields)) rec[k] = errorToJson(v);
      if (msg !== undefined) rec.msg = msg;
      let line: string;
      try {
        line = JSON.stringify(rec);
      } catch {
        line = JSON.stringify({ level, time: rec.time, msg, note: 'fields could not be serialised' });
      }
      this.sink(line + '\n');
    }) as LogFn;
  }
}

export function parseLevel(level: string | undefined): LogLevel {
  return (LOG_LEVELS as readonly string[]).includes(level ?? '') ? (level as LogLevel) : 'info';
}

export function createLogger(name: string, level: string = process.env.TESSERA_LOG_LEVEL ?? 'info', bindings: Record<string, unknown> = {}, sink: Sink = stdoutSink): Logger {
  const l = parseLevel(level);
  return new JsonLogger({ level: l, rank: RANK[l] }, { pid: process.pid, name, ...bindings }, sink);
}
