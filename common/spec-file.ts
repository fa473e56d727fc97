// Reading an app spec file (YAML or JSON) for the CLI: parse it, and refuse fields the
// protocol does not have, by path (`components[0].imgae: unknown field`), and values of the
// wrong type (`components[0].resources.cpuMillis: must be a number, got "100m"`), since protobuf
// would drop or coerce them silently and the operator would never know their setting did nothing.
import * as fs from 'node:fs';
import YAML from 'yaml';
import { InvalidArgumentError, FieldViolation } from './errors';
import { tesseraPackageDefinition } from './proto';

interface FieldDesc { name: string; label: string; type: string; typeName: string; map?: boolean; mapValueType?: string }

function fieldsOf(message: string): Map<string, FieldDesc> | undefined {
  const def = tesseraPackageDefinition()[`tessera.v1.${message}`] as unknown as { type?: { field: FieldDesc[]; nestedType?: { name: string; field?: FieldDesc[]; options?: { mapEntry?: boolean } }[] } } | undefined;
  if (!def?.type) return undefined;
  // A map field is a repeated field of a nested entry type marked mapEntry (its name varies).
  const entries = (def.type.nestedType ?? []).filter((n) => n.options?.mapEntry);
  const maps = new Set(entries.map((n) => n.name));
  const valueType = (typeName: string) => entries.find((n) => n.name === typeName || n.name === typeName.split('.').pop())?.field?.find((x) => x.name === 'value')?.type;
  const camel = (s: string) => s.replace(/_([a-z])/g, (_m, c: string) => c.toUpperCase());
  const m = new Map<string, FieldDesc>();
  for (const f of def.type.field) {
    const d = { ...f, map: maps.has(f.typeName) || maps.has(f.typeName.split('.').pop()!), mapValueType: valueType(f.typeName) };
    m.set(f.name, d);
    m.set(camel(f.name), d);
  }
  return m;
}

/**
 * Refused fields and values by path. With `raw` (the same document read with every scalar as
 * its text), a number given where a string is due is replaced in `value` by the text written:
 * `version: 1.0` stays "1.0" and `tag: 1.10` stays "1.10" (read as numbers they would be "1" and
 * "1.1"), and so does a number among a list of strings or as a value of a map of strings.
 */
export function unknownFields(value: unknown, message: string, at: string, out: FieldViolation[] = [], raw?: unknown): FieldViolation[] {
  const fields = fieldsOf(message);
  if (!fields || value === null || value === undefined) return out;
  if (typeof value !== 'object' || Array.isArray(value)) {
    // A message given as a scalar or a list (`components: [1, 2]`, `health: http`): protobuf
    // would fail to encode it, and the operator would read "serialization failure", not where.
    out.push({ field: at || message, message: `must be a map of fields, got ${describe(value)}` });
    return out;
  }
  const src = (raw && typeof raw === 'object' ? raw : {}) as Record<string, unknown>;
  const asText = (holder: Record<string, unknown> | unknown[], key: string | number, rawHolder: unknown): void => {
    const v = (holder as Record<string, unknown>)[key as string];
    const text = rawHolder && typeof rawHolder === 'object' ? (rawHolder as Record<string, unknown>)[key as string] : undefined;
    if (typeof v === 'number' && typeof text === 'string') (holder as Record<string, unknown>)[key as string] = text;
  };
  for (const [k, v] of Object.entries(value)) {
    const f = fields.get(k);
    const path = at ? `${at}.${k}` : k;
    if (!f) {
      out.push({ field: path, message: `unknown field (known: ${[...new Set([...fields.values()].map((x) => x.name.replace(/_([a-z])/g, (_m, c: string) => c.toUpperCase())))].join(', ')})` });
      continue;
    }
    if (f.type !== 'TYPE_MESSAGE') {
      if (f.label === 'LABEL_REPEATED') {
        if (Array.isArray(v)) {
          v.forEach((item, i) => {
            if (raw && f.type === 'TYPE_STRING') asText(v, i, src[k]);
            badScalar(f, v[i], `${path}[${i}]`, out);
          });
        } else {
          out.push({ field: path, message: 'must be a list' });
        }
      } else {
        if (raw && f.type === 'TYPE_STRING') asText(value as Record<string, unknown>, k, src);
        badScalar(f, (value as Record<string, unknown>)[k], path, out);
      }
      continue;
    }
    if (f.map || f.typeName.endsWith('Entry')) {
      if (v === null || v === undefined) continue;
      if (typeof v !== 'object' || Array.isArray(v)) {
        out.push({ field: path, message: `must be a map, got ${describe(v)}` });
        continue;
      }
      for (const mk of Object.keys(v)) {
        // map<string, string> (env, labels, headers): a number's text, as for a string field.
        if (raw && f.mapValueType === 'TYPE_STRING') asText(v as Record<string, unknown>, mk, src[k]);
        if (f.mapValueType) badScalar({ ...f, type: f.mapValueType }, (v as Record<string, unknown>)[mk], `${path}.${mk}`, out);
      }
      continue;
    }
    if (f.label === 'LABEL_REPEATED') {
      if (Array.isArray(v)) v.forEach((item, i) => unknownFields(item, f.typeName, `${path}[${i}]`, out, (src[k] as unknown[] | undefined)?.[i]));
      else out.push({ field: path, message: 'must be a list' });
    } else {
      unknownFields(v, f.typeName, path, out, src[k]);
    }
  }
  return out;
}

/** A value as an error shows it: short, and a list or map said as one. */
function describe(v: unknown): string {
  if (Array.isArray(v)) return 'a list';
  const text = JSON.stringify(v) ?? String(v);
  return text.length > 40 ? `${text.slice(0, 40)}...` : text;
}

const NUMBERS = new Set(['TYPE_INT32', 'TYPE_UINT32', 'TYPE_SINT32', 'TYPE_FIXED32', 'TYPE_SFIXED32', 'TYPE_INT64', 'TYPE_UINT64', 'TYPE_SINT64', 'TYPE_FIXED64', 'TYPE_SFIXED64', 'TYPE_DOUBLE', 'TYPE_FLOAT']);

/**
 * A scalar of the wrong type, which protobuf would coerce without a word: `cpuMillis: 100m`
 * to 0, `readOnlyRoot: "false"` to true, a map or list to a string. A number where a string is
 * due is taken (YAML reads `3600` in a command as one); null is taken as the default.
 */
function badScalar(f: FieldDesc, v: unknown, path: string, out: FieldViolation[]): void {
  if (v === null || v === undefined) return;
  if (NUMBERS.has(f.type)) {
    const whole = f.type !== 'TYPE_DOUBLE' && f.type !== 'TYPE_FLOAT';
    const ok = typeof v === 'number' ? (whole ? Number.isInteger(v) : Number.isFinite(v)) : typeof v === 'string' && f.type.endsWith('64') && /^-?\d+$/.test(v);
    if (!ok) out.push({ field: path, message: `must be a ${whole ? 'whole ' : ''}number, got ${JSON.stringify(v)}` });
  } else if (f.type === 'TYPE_BOOL') {
    if (typeof v !== 'boolean') out.push({ field: path, message: `must be true or false, got ${JSON.stringify(v)}` });
  } else if (f.type === 'TYPE_STRING') {
    if (typeof v !== 'string' && typeof v !== 'number') out.push({ field: path, message: `must be a string, got ${JSON.stringify(v)}` });
  } else if (f.type === 'TYPE_ENUM') {
    if (typeof v !== 'string' && typeof v !== 'number') out.push({ field: path, message: `must be one of the enum's names, got ${JSON.stringify(v)}` });
  } else if (f.type === 'TYPE_BYTES') {
    if (typeof v !== 'string') out.push({ field: path, message: `must be a base64 string, got ${JSON.stringify(v)}` });
  }
}

/** Reads and checks a spec file; `-` reads standard input. */
export function readSpecFile(file: string, message = 'AppSpec'): Record<string, unknown> {
  const text = file === '-' ? fs.readFileSync(0, 'utf8') : fs.readFileSync(file, 'utf8');
  let value: unknown;
  let raw: unknown;
  try {
    value = YAML.parse(text);
    // The same document with every scalar as the text written (YAML's failsafe schema).
    raw = YAML.parse(text, { schema: 'failsafe' });
  } catch (e) {
    throw InvalidArgumentError.field(file, `not valid YAML or JSON: ${(e as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw InvalidArgumentError.field(file, 'must hold a map');
  const bad = unknownFields(value, message, '', [], raw);
  if (bad.length) throw new InvalidArgumentError(bad);
  return value as Record<string, unknown>;
}
