// Loads tessera.v1 once per process. The options match the ones the generated types in
// common/generated were made with (scripts/gen-proto.sh): camelCase fields, int64 as number,
// enums as their names, defaults filled in, oneof names set.
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import * as protobuf from 'protobufjs';
import type { ProtoGrpcType } from './generated/tessera';
import { repoRoot } from './version';

export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
};

let cached: { definition: protoLoader.PackageDefinition; tessera: ProtoGrpcType } | undefined;
let reflectable: protoLoader.PackageDefinition | undefined;

function load() {
  if (!cached) {
    const file = path.join(repoRoot(), 'protos', 'tessera', 'v1', 'tessera.proto');
    const definition = protoLoader.loadSync(file, LOADER_OPTIONS);
    fastSerializers(definition, file);
    const tessera = grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;
    cached = { definition, tessera };
  }
  return cached;
}

/**
 * proto-loader serializes a message as encode(fromObject(obj)): fromObject copies the whole
 * object tree into message instances first, which was the largest single cost of the job data
 * plane (measured: 14% of the agent's CPU under load, 8% of the leader's). For the data plane's
 * methods (HOT), when the object is already encodable as it stands (verify() passes: numbers
 * where numbers go, enum values as numbers, Buffers for bytes) it is encoded directly; anything
 * else (enum names, int64 as strings) takes proto-loader's way. The bytes are the same either way.
 * The protobufjs root this needs (~1.5 MB of heap, the .proto parsed a second time) is built at
 * the first such message: an agent that relays no job steps never pays for it (its budget is
 * 60 MB resident).
 */
const HOT = new Set(['SubmitJob', 'SubmitJobs', 'DirectJobs', 'Relay', 'RelayStream', 'Invoke', 'Stream']);
/**
 * Messages only Tessera's own code builds (coordinator and agents relaying routes and hop
 * reports; the steps an agent hands an instance): typed at compile time, so they skip verify()
 * (it cost as much as the encoding). Anything that encodes a user's object (a component's
 * result, a client's submission) is verified.
 */
const TRUSTED_REQUESTS = new Set(['StepRelay.Relay', 'StepRelay.RelayStream', 'Component.Invoke', 'Component.Stream']);
const TRUSTED_RESPONSES = new Set(['StepRelay.Relay', 'StepRelay.RelayStream']);

function fastSerializers(definition: protoLoader.PackageDefinition, file: string): void {
  let root: protobuf.Root | undefined;
  const types = () => {
    if (!root) {
      root = new protobuf.Root().loadSync(file, { keepCase: LOADER_OPTIONS.keepCase });
      root.resolveAll();
    }
    return root;
  };
  const fast = (t: protoLoader.MessageTypeDefinition<unknown, unknown>, slow: (v: unknown) => Buffer, trusted = false) => {
    let type: protobuf.Type | undefined;
    return (arg: unknown): Buffer => {
      if (arg === null || typeof arg !== 'object' || Array.isArray(arg)) return slow(arg);
      type ??= lookup(types(), t);
      if (!type || (!trusted && type.verify(arg as Record<string, unknown>) !== null)) return slow(arg);
      return type.encode(arg as Record<string, unknown>).finish() as Buffer;
    };
  };
  for (const [name, def] of Object.entries(definition)) {
    if (!name.startsWith('tessera.')) continue;
    for (const [method, m] of Object.entries(def as Record<string, protoLoader.MethodDefinition<unknown, unknown>>)) {
      if (!HOT.has(method) || typeof m !== 'object' || !m || typeof m.requestSerialize !== 'function') continue;
      // Trust is by service and method: another service's method of the same name is verified.
      const qualified = `${name.slice(name.lastIndexOf('.') + 1)}.${method}`;
      (m as { requestSerialize: unknown }).requestSerialize = fast(m.requestType, m.requestSerialize, TRUSTED_REQUESTS.has(qualified));
      (m as { responseSerialize: unknown }).responseSerialize = fast(m.responseType, m.responseSerialize, TRUSTED_RESPONSES.has(qualified));
    }
  }
}

/** A method's message type in the protobufjs root (tessera.proto imports nothing: all are tessera.v1). */
function lookup(root: protobuf.Root, t: protoLoader.MessageTypeDefinition<unknown, unknown>): protobuf.Type | undefined {
  const name = (t.type as unknown as { name?: string }).name;
  return name ? root.lookupTypeOrEnum(`tessera.v1.${name}`) as protobuf.Type : undefined;
}

/** The loaded tessera.v1 package: service constructors and definitions. */
export function tesseraProto(): ProtoGrpcType['tessera']['v1'] {
  return load().tessera.tessera.v1;
}

/** The package definition of tessera.v1 plus grpc.health.v1, for server reflection. */
export function reflectablePackageDefinition(): protoLoader.PackageDefinition {
  if (!reflectable) {
    // Loaded on demand: only servers need it, and the agent's memory budget is tight.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { protoPath } = require('grpc-health-check') as { protoPath: string };
    reflectable = { ...load().definition, ...protoLoader.loadSync(protoPath, LOADER_OPTIONS) };
  }
  return reflectable;
}

export function tesseraPackageDefinition(): protoLoader.PackageDefinition {
  return load().definition;
}

/**
 * A tessera.v1 message as a file would hold it: only the fields that are set, not the defaults
 * the loader fills in (defaults: true) nor its oneof markers. Typed by the .proto, so a map is
 * kept whole (an env var set to "" is set; a key "_X" is a key) and an optional field is kept
 * when its marker says it was set, 0 or "" included. What the CLI's get commands print for
 * apply/set to take back.
 */
export function setFieldsOnly(typeName: string, obj: unknown): Record<string, unknown> {
  const root = new protobuf.Root().loadSync(path.join(repoRoot(), 'protos', 'tessera', 'v1', 'tessera.proto'), { keepCase: LOADER_OPTIONS.keepCase });
  root.resolveAll();
  return setFields(root.lookupType(`tessera.v1.${typeName}`), obj as Record<string, unknown>);
}

function setFields(type: protobuf.Type, obj: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const message = (t: unknown, v: unknown) => (t instanceof protobuf.Type && v && typeof v === 'object' ? setFields(t, v as Record<string, unknown>) : v);
  for (const f of type.fieldsArray) {
    const v = obj[f.name];
    if (v === undefined || v === null) continue;
    // A oneof member (a proto3 optional field is one of its own): set when the loader's marker
    // names it (oneofs: true), whatever its value.
    if (f.partOf) {
      if (obj[f.partOf.name] === f.name) out[f.name] = message(f.resolvedType, v);
      continue;
    }
    if (f.map) {
      if (Object.keys(v as object).length) out[f.name] = Object.fromEntries(Object.entries(v as object).map(([k, x]) => [k, message(f.resolvedType, x)]));
    } else if (f.repeated) {
      if ((v as unknown[]).length) out[f.name] = (v as unknown[]).map((x) => message(f.resolvedType, x));
    } else if (f.resolvedType instanceof protobuf.Type) {
      out[f.name] = message(f.resolvedType, v);
    } else {
      // A proto3 scalar without presence: its default is the same as not set.
      const enumDefault = f.resolvedType instanceof protobuf.Enum ? Object.keys(f.resolvedType.values).find((k) => (f.resolvedType as protobuf.Enum).values[k] === 0) : undefined;
      if (!(v === 0 || v === '' || v === false || v === enumDefault || (Buffer.isBuffer(v) && !v.length))) out[f.name] = v;
    }
  }
  return out;
}
