// Reading an app spec file (YAML or JSON) for the CLI: parse it, and refuse fields the
// protocol does not have, by path (`components[0].imgae: unknown field`), since protobuf would
// drop them silently and the operator would never know their setting did nothing.
import * as fs from 'node:fs';
import YAML from 'yaml';
import { InvalidArgumentError, FieldViolation } from './errors';
import { tesseraPackageDefinition } from './proto';

interface FieldDesc { name: string; label: string; type: string; typeName: string; map?: boolean }

function fieldsOf(message: string): Map<string, FieldDesc> | undefined {
  const def = tesseraPackageDefinition()[`tessera.v1.${message}`] as unknown as { type?: { field: FieldDesc[]; nestedType?: { name: string; options?: { mapEntry?: boolean } }[] } } | undefined;
  if (!def?.type) return undefined;
  // A map field is a repeated field of a nested entry type marked mapEntry (its name varies).
  const maps = new Set((def.type.nestedType ?? []).filter((n) => n.options?.mapEntry).map((n) => n.name));
  const camel = (s: string) => s.replace(/_([a-z])/g, (_m, c: string) => c.toUpperCase());
  const m = new Map<string, FieldDesc>();
  for (const f of def.type.field) {
    const d = { ...f, map: maps.has(f.typeName) || maps.has(f.typeName.split('.').pop()!) };
    m.set(f.name, d);
    m.set(camel(f.name), d);
  }
  return m;
}

export function unknownFields(value: unknown, message: string, at: string, out: FieldViolation[] = []): FieldViolation[] {
  const fields = fieldsOf(message);
  if (!fields || typeof value !== 'object' || value === null || Array.isArray(value)) return out;
  for (const [k, v] of Object.entries(value)) {
    const f = fields.get(k);
    const path = at ? `${at}.${k}` : k;
    if (!f) {
      out.push({ field: path, message: `unknown field (known: ${[...new Set([...fields.values()].map((x) => x.name.replace(/_([a-z])/g, (_m, c: string) => c.toUpperCase())))].join(', ')})` });
      continue;
    }
    if (f.type !== 'TYPE_MESSAGE' || f.map || f.typeName.endsWith('Entry')) continue;
    if (f.label === 'LABEL_REPEATED') {
      if (Array.isArray(v)) v.forEach((item, i) => unknownFields(item, f.typeName, `${path}[${i}]`, out));
      else out.push({ field: path, message: 'must be a list' });
    } else {
      unknownFields(v, f.typeName, path, out);
    }
  }
  return out;
}

/** Reads and checks a spec file; `-` reads standard input. */
export function readSpecFile(file: string, message = 'AppSpec'): Record<string, unknown> {
  const text = file === '-' ? fs.readFileSync(0, 'utf8') : fs.readFileSync(file, 'utf8');
  let value: unknown;
  try {
    value = YAML.parse(text);
  } catch (e) {
    throw InvalidArgumentError.field(file, `not valid YAML or JSON: ${(e as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw InvalidArgumentError.field(file, 'must hold a map');
  const bad = unknownFields(value, message, '');
  if (bad.length) throw new InvalidArgumentError(bad);
  return value as Record<string, unknown>;
}
