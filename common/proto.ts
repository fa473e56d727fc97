// Loads tessera.v1 once per process. The options match the ones the generated types in
// common/generated were made with (scripts/gen-proto.sh): camelCase fields, int64 as number,
// enums as their names, defaults filled in, oneof names set.
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
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
    const tessera = grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;
    cached = { definition, tessera };
  }
  return cached;
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
