#!/usr/bin/env bash
# Generates TypeScript types for protos/ into common/generated (never edit those by hand).
# The flags must match LOADER_OPTIONS in common/proto.ts.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf common/generated
npx proto-loader-gen-types --longs=Number --enums=String --defaults --oneofs --includeComments \
  --grpcLib=@grpc/grpc-js --outDir=common/generated protos/tessera/v1/*.proto >/dev/null
