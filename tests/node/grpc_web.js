#!/usr/bin/env node
// A grpc-web client of agentregistry as a JavaScript developer writes one:
// Connect (@connectrpc/connect with @connectrpc/connect-node's grpc-web
// transport, the same protocol code its browser transport uses) over
// descriptors compiled from proto/ at run time, the error details decoded
// with googleapis' published error_details.proto (google-proto-files).
// Nothing Rust-side, nothing generated in the repository.
//
// Against a running registry-service it creates an agent and lists it
// (HTTP/1.1, as a browser without TLS, and HTTP/2, as one over TLS),
// decodes an INVALID_ARGUMENT's BadRequest, and shows that grpc-web gets
// no way around what native gRPC enforces: no token is UNAUTHENTICATED, a
// viewer may not create (PERMISSION_DENIED), an unknown method is
// UNIMPLEMENTED and a message over REGISTRY_MAX_MESSAGE_BYTES is
// OUT_OF_RANGE.
//
// Every step is asserted; the first mismatch throws and the process exits
// non-zero. On success it prints exactly one final line:
//
//     grpc-web node: all N checks passed
//
// Usage: node grpc_web.js --proto-root DIR --registry-url http://HOST:PORT
//          --editor-token T --viewer-token T --max-message-bytes N
'use strict';

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { create, createFileRegistry } = require('@bufbuild/protobuf');
const { FileDescriptorProtoSchema } = require('@bufbuild/protobuf/wkt');
const { Code, ConnectError, createClient } = require('@connectrpc/connect');
const { createGrpcWebTransport } = require('@connectrpc/connect-node');
const descriptors = require('./descriptors');

// Per-call deadline (sent as grpc-timeout): a hung server fails the run.
const TIMEOUT_MS = 15000;

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i += 2) {
    args[argv[i].replace(/^--/, '').replace(/-/g, '_')] = argv[i + 1];
  }
  for (const key of ['proto_root', 'registry_url', 'editor_token', 'viewer_token', 'max_message_bytes']) {
    if (!args[key]) throw new Error(`missing --${key.replace(/_/g, '-')}`);
  }
  return args;
}

let count = 0;
function check(condition, message) {
  assert.ok(condition, message);
  count += 1;
  console.log(`ok ${count}: ${message}`);
}
function equal(actual, expected, what) {
  assert.deepEqual(actual, expected, what);
  count += 1;
  const shown = JSON.stringify(expected, (_, v) => (typeof v === 'bigint' ? `${v}n` : v));
  console.log(`ok ${count}: ${what} == ${shown}`);
}

function auth(token) {
  return { headers: { authorization: `Bearer ${token}` }, timeoutMs: TIMEOUT_MS };
}

// The call's ConnectError; fails when the call succeeds.
async function refusal(call) {
  try {
    await call();
  } catch (error) {
    return ConnectError.from(error);
  }
  throw new Error('the call succeeded; a refusal was expected');
}

// A service the registry does not serve, made the way a client with a
// newer contract would have it.
function unknownService(registry) {
  const file = create(FileDescriptorProtoSchema, {
    name: 'agentregistry/v9/nowhere.proto',
    package: 'agentregistry.v9',
    syntax: 'proto3',
    dependency: ['google/protobuf/empty.proto'],
    service: [{
      name: 'NowhereService',
      method: [{ name: 'Nothing', inputType: '.google.protobuf.Empty', outputType: '.google.protobuf.Empty' }],
    }],
  });
  return createFileRegistry(file, (name) => registry.getFile(name)).getService('agentregistry.v9.NowhereService');
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const outDir = fs.mkdtempSync(path.join(os.tmpdir(), 'grpc-web-node-'));
  const built = descriptors.build(args.proto_root, outDir);
  const registry = descriptors.load(built.agentregistry);
  const googleRpc = descriptors.load(built.googleRpc);
  const AgentService = registry.getService('agentregistry.v1.AgentService');
  const BadRequest = googleRpc.getMessage('google.rpc.BadRequest');
  const ErrorInfo = googleRpc.getMessage('google.rpc.ErrorInfo');
  check(AgentService && BadRequest && ErrorInfo, 'descriptors built from proto/ and google-proto-files');

  const http1 = createGrpcWebTransport({ baseUrl: args.registry_url, httpVersion: '1.1' });
  const http2 = createGrpcWebTransport({ baseUrl: args.registry_url, httpVersion: '2' });
  const agents = createClient(AgentService, http1);

  // Create and list, as an editor and a viewer.
  const name = `grpc-web-${crypto.randomUUID()}`;
  const created = await agents.createAgent(
    { agent: { name, role: 'Researcher', goal: 'Find facts', maxIter: 20 } },
    auth(args.editor_token),
  );
  check(/^[0-9a-f-]{36}$/.test(created.id), `CreateAgent over grpc-web returned an id (${created.id})`);
  equal(created.version, 1n, 'version of the new agent');
  equal(created.maxIter, 20, 'max_iter as sent');
  const listed = await agents.listAgents({ pageSize: 100 }, auth(args.viewer_token));
  check(listed.agents.some((agent) => agent.id === created.id && agent.name === name),
    'ListAgents over grpc-web (HTTP/1.1) lists it');
  const overHttp2 = await createClient(AgentService, http2).listAgents({ pageSize: 100 }, auth(args.viewer_token));
  check(overHttp2.agents.some((agent) => agent.id === created.id), 'ListAgents over grpc-web (HTTP/2) lists it');

  // A rich error: INVALID_ARGUMENT with a BadRequest naming the field.
  const invalid = await refusal(() => agents.createAgent(
    { agent: { name: `${name}-hot`, role: 'r', goal: 'g', temperature: 5 } },
    auth(args.editor_token),
  ));
  equal(invalid.code, Code.InvalidArgument, 'a temperature of 5: code');
  const [badRequest] = invalid.findDetails(BadRequest);
  check(badRequest !== undefined, 'the BadRequest detail decodes with the published error_details.proto');
  equal(badRequest.fieldViolations.map((v) => v.field), ['agent.temperature'], 'the field violated');
  const [info] = invalid.findDetails(ErrorInfo);
  equal(info && info.domain, 'registry.agentregistry.dev', 'ErrorInfo domain');

  // grpc-web is no way around authentication and authorization.
  const anonymous = await refusal(() => agents.listAgents({}, { timeoutMs: TIMEOUT_MS }));
  equal(anonymous.code, Code.Unauthenticated, 'ListAgents without a token: code');
  const forged = await refusal(() => agents.listAgents({}, auth('not.a.token')));
  equal(forged.code, Code.Unauthenticated, 'ListAgents with a garbage token: code');
  const viewerWrite = await refusal(() => agents.createAgent(
    { agent: { name: `${name}-viewer`, role: 'r', goal: 'g' } },
    auth(args.viewer_token),
  ));
  equal(viewerWrite.code, Code.PermissionDenied, 'CreateAgent as a viewer: code');

  // Paths the server does not serve, and the message limit, as over gRPC.
  const unknown = await refusal(() => createClient(unknownService(registry), http1).nothing({}, auth(args.viewer_token)));
  equal(unknown.code, Code.Unimplemented, 'an unknown method over grpc-web: code');
  // Over HTTP/2: the server answers as soon as it reads the length prefix;
  // over HTTP/1.1 it then closes the connection, and a client still
  // sending the body may see that (EPIPE) instead of the answer (README,
  // "Browsers (grpc-web)").
  const limit = Number(args.max_message_bytes);
  const oversized = await refusal(() => createClient(AgentService, http2).createAgent(
    { agent: { name: `${name}-big`, role: 'r', goal: 'g', backstory: 'x'.repeat(limit) } },
    auth(args.editor_token),
  ));
  equal(oversized.code, Code.OutOfRange, `a message over ${limit} bytes: code`);

  const after = await agents.listAgents({ pageSize: 100 }, auth(args.viewer_token));
  equal(after.agents.filter((agent) => agent.name.startsWith(name)).map((agent) => agent.name), [name],
    'only the valid agent was created');

  fs.rmSync(outDir, { recursive: true, force: true });
  console.log(`grpc-web node: all ${count} checks passed`);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
