// The descriptor sets the grpc-web clients are built on, compiled at test
// time with the pinned buf (no generated code is kept in the repository):
//
//   agentregistry.binpb  proto/agentregistry/ and what it imports;
//   google-rpc.binpb     googleapis' google/rpc/error_details.proto as npm
//                        publishes it (google-proto-files), to decode the
//                        error details with the published definitions.
//
// Usage as a module: build(protoRoot, outDir) -> { agentregistry, googleRpc }
// (the two files' paths); load(path) -> a @bufbuild/protobuf registry.
'use strict';

const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { createFileRegistry, fromBinary } = require('@bufbuild/protobuf');
const { FileDescriptorSetSchema } = require('@bufbuild/protobuf/wkt');

const BUF = path.join(__dirname, 'node_modules', '.bin', 'buf');
const GOOGLE_PROTOS = path.dirname(require.resolve('google-proto-files/package.json'));

function buf(args) {
  execFileSync(BUF, args, { stdio: ['ignore', 'inherit', 'inherit'] });
}

function build(protoRoot, outDir) {
  const agentregistry = path.join(outDir, 'agentregistry.binpb');
  const googleRpc = path.join(outDir, 'google-rpc.binpb');
  buf([
    'build', protoRoot,
    '--path', path.join(protoRoot, 'agentregistry'),
    '--as-file-descriptor-set', '-o', agentregistry,
  ]);
  buf([
    'build', GOOGLE_PROTOS,
    '--path', path.join(GOOGLE_PROTOS, 'google', 'rpc', 'error_details.proto'),
    '--as-file-descriptor-set', '-o', googleRpc,
  ]);
  return { agentregistry, googleRpc };
}

function load(file) {
  return createFileRegistry(fromBinary(FileDescriptorSetSchema, fs.readFileSync(file)));
}

module.exports = { build, load };
