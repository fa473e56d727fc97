// Configuration compiled once from layers (defaults < file < environment < flags) against a
// schema, so every field has one type, one doc line, one env name and one flag, and every
// problem is reported with its field path and where the value came from. Nothing reads raw
// configuration after compilation.
import * as fs from 'node:fs';
import { Command } from 'commander';
import { ConfigError, FieldViolation } from './errors';

export type FieldType = 'string' | 'int' | 'number' | 'bool' | 'list' | 'map';

export interface FieldSpec {
  type: FieldType;
  doc: string;
  env?: string;
  default?: unknown;
  min?: number;
  max?: number;
  oneOf?: readonly string[];
}

export type Schema = Record<string, FieldSpec>;

export interface Layer {
  source: string; // "default", "file /etc/tessera/agent.yaml", "env", "flag"
  values: Record<string, unknown>;
  /** A file's values as the text written (YAML's failsafe schema): `node-id: 010` is "010", not "10". */
  text?: Record<string, unknown>;
}

/** A number given for a string (or a map of strings' value) is taken as the text written. */
function asWritten(spec: FieldSpec, value: unknown, text: unknown): unknown {
  if (spec.type === 'string' && typeof value === 'number' && typeof text === 'string') return text;
  if (spec.type === 'list' && Array.isArray(value) && Array.isArray(text)) return value.map((v, i) => (typeof v === 'number' && typeof text[i] === 'string' ? text[i] : v));
  if (spec.type === 'map' && value && typeof value === 'object' && !Array.isArray(value) && text && typeof text === 'object') {
    const t = text as Record<string, unknown>;
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, typeof v === 'number' && typeof t[k] === 'string' ? t[k] : v]));
  }
  return value;
}

export function kebab(key: string): string {
  return key.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
}

function parseValue(spec: FieldSpec, value: unknown): { ok: true; value: unknown } | { ok: false; message: string } {
  switch (spec.type) {
    case 'string':
      if (typeof value === 'string') return { ok: true, value };
      if (typeof value === 'number') return { ok: true, value: String(value) };
      return { ok: false, message: 'must be a string' };
    case 'int':
    case 'number': {
      const n = typeof value === 'number' ? value : typeof value === 'string' && value.trim() !== '' ? Number(value) : NaN;
      if (!Number.isFinite(n)) return { ok: false, message: `must be a number, got ${JSON.stringify(value)}` };
      if (spec.type === 'int' && !Number.isInteger(n)) return { ok: false, message: `must be an integer, got ${n}` };
      if (spec.min !== undefined && n < spec.min) return { ok: false, message: `must be >= ${spec.min}, got ${n}` };
      if (spec.max !== undefined && n > spec.max) return { ok: false, message: `must be <= ${spec.max}, got ${n}` };
      return { ok: true, value: n };
    }
    case 'bool':
      if (typeof value === 'boolean') return { ok: true, value };
      if (value === 'true' || value === '1' || value === 'yes') return { ok: true, value: true };
      if (value === 'false' || value === '0' || value === 'no') return { ok: true, value: false };
      return { ok: false, message: `must be true or false, got ${JSON.stringify(value)}` };
    case 'list':
      if (Array.isArray(value) && value.every((v) => typeof v === 'string')) return { ok: true, value: value.filter((v) => v !== '') };
      if (typeof value === 'string') return { ok: true, value: value.split(',').map((s) => s.trim()).filter(Boolean) };
      return { ok: false, message: 'must be a list of strings (or a comma-separated string)' };
    case 'map': {
      if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
        const out: Record<string, string> = {};
        for (const [k, v] of Object.entries(value)) out[k] = String(v);
        return { ok: true, value: out };
      }
      if (typeof value === 'string') {
        const out: Record<string, string> = {};
        for (const part of value.split(',').map((s) => s.trim()).filter(Boolean)) {
          const eq = part.indexOf('=');
          if (eq <= 0) return { ok: false, message: `must be key=value pairs separated by commas, got ${JSON.stringify(part)}` };
          out[part.slice(0, eq)] = part.slice(eq + 1);
        }
        return { ok: true, value: out };
      }
      return { ok: false, message: 'must be a map of strings (or k=v,k2=v2)' };
    }
  }
}

/**
 * Merges the layers in order (later wins) and checks every value against the schema.
 * Throws ConfigError listing every problem; unknown keys in any layer are problems too.
 */
export function compileLayers<T>(schema: Schema, layers: Layer[]): T {
  const violations: FieldViolation[] = [];
  const out: Record<string, unknown> = {};
  for (const [key, spec] of Object.entries(schema)) {
    if (spec.default !== undefined) out[key] = spec.default;
  }
  for (const layer of layers) {
    for (const [key, raw] of Object.entries(layer.values)) {
      if (raw === undefined) continue;
      const spec = schema[key];
      if (!spec) {
        violations.push({ field: key, message: `unknown setting (from ${layer.source})` });
        continue;
      }
      const parsed = parseValue(spec, layer.text ? asWritten(spec, raw, layer.text[key]) : raw);
      if (!parsed.ok) {
        violations.push({ field: key, message: `${parsed.message} (from ${layer.source})` });
        continue;
      }
      if (spec.oneOf && !spec.oneOf.includes(parsed.value as string)) {
        violations.push({ field: key, message: `must be one of ${spec.oneOf.join(', ')}, got ${JSON.stringify(parsed.value)} (from ${layer.source})` });
        continue;
      }
      out[key] = parsed.value;
    }
  }
  if (violations.length) throw new ConfigError(violations);
  return out as T;
}

/** Values from the environment, by each field's env name. */
export function envLayer(schema: Schema, env: NodeJS.ProcessEnv = process.env): Layer {
  const values: Record<string, unknown> = {};
  for (const [key, spec] of Object.entries(schema)) {
    if (spec.env && env[spec.env] !== undefined && env[spec.env] !== '') values[key] = env[spec.env];
  }
  return { source: 'env', values };
}

/** Values from a YAML or JSON file; a missing or unreadable file is a ConfigError. */
export function fileLayer(file: string): Layer {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError([{ field: 'config', message: `cannot read ${file}: ${(e as Error).message}` }]);
  }
  let values: unknown;
  let written: unknown;
  try {
    // Loaded on demand: most processes take no config file, and yaml costs memory.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const YAML = require('yaml') as typeof import('yaml');
    values = YAML.parse(text) ?? {};
    written = YAML.parse(text, { schema: 'failsafe' });
  } catch (e) {
    throw new ConfigError([{ field: 'config', message: `${file} is not valid YAML/JSON: ${(e as Error).message}` }]);
  }
  if (typeof values !== 'object' || values === null || Array.isArray(values)) {
    throw new ConfigError([{ field: 'config', message: `${file} must hold a map of settings` }]);
  }
  return { source: `file ${file}`, values: values as Record<string, unknown>, text: written && typeof written === 'object' ? written as Record<string, unknown> : undefined };
}

/** Adds one flag per schema field (`--lease-ttl-seconds <value>`) plus `--config FILE`. */
export function addSchemaOptions(cmd: Command, schema: Schema): Command {
  cmd.option('--config <file>', 'YAML or JSON file with settings (flags and env override it)');
  for (const [key, spec] of Object.entries(schema)) {
    const envNote = spec.env ? ` [env ${spec.env}]` : '';
    const def = spec.default !== undefined ? ` (default ${JSON.stringify(spec.default)})` : '';
    if (spec.type === 'bool') cmd.option(`--${kebab(key)} [value]`, `${spec.doc}${envNote}${def}`);
    else cmd.option(`--${kebab(key)} <value>`, `${spec.doc}${envNote}${def}`);
  }
  return cmd;
}

/** The layers after the defaults: --config file < env < flags. */
export function layersFromCommand(schema: Schema, opts: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): Layer[] {
  const layers: Layer[] = [];
  if (typeof opts.config === 'string') layers.push(fileLayer(opts.config));
  layers.push(envLayer(schema, env));
  const flags: Record<string, unknown> = {};
  for (const key of Object.keys(schema)) {
    const v = opts[key];
    if (v !== undefined) flags[key] = v === true && schema[key].type === 'bool' ? true : v;
  }
  layers.push({ source: 'flag', values: flags });
  return layers;
}

/** host:port check used by several schemas' cross-field validation. */
export function isHostPort(s: string): boolean {
  return /^[^\s:]+:\d{1,5}$/.test(s) || /^\[[0-9a-fA-F:]+\]:\d{1,5}$/.test(s);
}
