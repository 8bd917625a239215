#!/usr/bin/env node
// A Node.js client of agentregistry built from the .proto files alone, with
// the packages a JavaScript developer reaches for: @grpc/grpc-js and
// @grpc/proto-loader for the calls, google-proto-files (googleapis'
// published google/rpc protos) and protobufjs to decode the rich error
// details. Nothing generated here, nothing Rust-side.
//
// It runs the report's workflow against a running registry-service (create
// provider, create agent, update, list versions, diff, rollback, resolve as
// runtime), decodes the error details of refused calls, and shows the
// pitfall the README warns about: proto-loader's default options expect
// camelCase keys and silently drop snake_case ones.
//
// Every step is asserted; the first mismatch throws and the process exits
// non-zero. On success it prints exactly one final line:
//
//     node workflow: all N checks passed
//
// Usage: node workflow.js --proto-root DIR --registry HOST:PORT
//          --admin-token T --editor-token T --viewer-token T --runtime-token T
'use strict';

const assert = require('node:assert/strict');
const path = require('node:path');
const crypto = require('node:crypto');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');
const googleProtoFiles = require('google-proto-files');

// Per-call deadline: a hung server fails the run instead of blocking it.
const TIMEOUT_MS = 15000;
const API_KEY = 'sk-node-client-key';

// The options that keep the contract's field names and 64-bit integers:
// snake_case keys as in the .proto, int64 as decimal strings (a JS number
// loses precision above 2^53), enums by name, unset scalars filled with
// their defaults, and a `oneof` key naming the field that is set.
const LOADER_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

const PROTO_FILES = [
  'agentregistry/v1/agent.proto',
  'agentregistry/v1/provider.proto',
  'agentregistry/v1/runtime.proto',
];

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '').replace(/-/g, '_');
    args[key] = argv[i + 1];
  }
  for (const key of ['proto_root', 'registry', 'admin_token', 'editor_token', 'viewer_token', 'runtime_token']) {
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
  console.log(`ok ${count}: ${what} == ${JSON.stringify(expected)}`);
}

// googleapis' own google/rpc protos, as npm publishes them.
function stockErrorTypes() {
  const root = new protobuf.Root();
  const googleRoot = googleProtoFiles.getProtoPath('..');
  root.resolvePath = (_origin, target) => path.join(googleRoot, target);
  // keepCase: the field names of the .proto files (field_violations, …).
  root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
  return root;
}

function client(pkg, service, address) {
  return new pkg.agentregistry.v1[service](address, grpc.credentials.createInsecure());
}

function metadataWith(token) {
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${token}`);
  return metadata;
}

// One unary call as a promise: resolves with the response, rejects with
// the grpc-js ServiceError.
function call(stub, method, request, token) {
  return new Promise((resolve, reject) => {
    stub[method](request, metadataWith(token), { deadline: Date.now() + TIMEOUT_MS }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

async function refused(stub, method, request, token) {
  try {
    const response = await call(stub, method, request, token);
    throw new Error(`${method}: expected an error, got ${JSON.stringify(response)}`);
  } catch (error) {
    if (error.code === undefined) throw error;
    return error;
  }
}

// The google.rpc.Status in the `grpc-status-details-bin` trailer, with its
// details unpacked into the stock message types, by short name.
function details(types, error) {
  const [bytes] = error.metadata.get('grpc-status-details-bin');
  assert.ok(bytes, `no grpc-status-details-bin on ${error.message}`);
  const status = types.lookupType('google.rpc.Status').decode(bytes);
  const byName = {};
  for (const any of status.details) {
    const name = any.type_url.split('/').pop();
    byName[name.replace('google.rpc.', '')] = types.lookupType(name).toObject(types.lookupType(name).decode(any.value), {
      longs: String,
    });
  }
  return { status, byName };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const includeDirs = [path.resolve(args.proto_root)];
  const pkg = grpc.loadPackageDefinition(protoLoader.loadSync(PROTO_FILES, { ...LOADER_OPTIONS, includeDirs }));
  const types = stockErrorTypes();

  const providers = client(pkg, 'ProviderService', args.registry);
  const agents = client(pkg, 'AgentService', args.registry);
  const runtime = client(pkg, 'RuntimeService', args.registry);
  const { admin_token: admin, editor_token: editor, viewer_token: viewer, runtime_token: runner } = args;

  // Create provider (admin): the key goes in, only api_key_set comes out.
  const provider = await call(
    providers,
    'CreateProvider',
    {
      provider: {
        name: 'OpenAI GPT-4 (node)',
        provider_type: 'PROVIDER_TYPE_OPENAI',
        model_name: 'gpt-4',
        api_key: API_KEY,
        is_default: true,
        default_parameters: { temperature: 0.5, max_tokens: 2048 },
      },
    },
    admin,
  );
  check(provider.id.length === 36, 'CreateProvider returned a UUID');
  equal(provider.api_key_set, true, 'CreateProvider api_key_set');
  equal(provider.api_key, '', 'CreateProvider api_key (never returned)');
  equal(provider.version, '1', 'CreateProvider version (int64 as a string)');

  // Create agent (editor), assigned to the provider: version 1.
  let agent = await call(
    agents,
    'CreateAgent',
    {
      agent: {
        name: 'Data Analyst Agent (node)',
        role: 'Senior Data Analyst',
        goal: 'Analyze complex datasets',
        backstory: 'Expert in data science',
        tools: ['search', 'calculator'],
        llm_provider_id: provider.id,
        temperature: 0.7,
        max_iter: 15,
      },
    },
    editor,
  );
  const agentId = agent.id;
  const v1Etag = agent.etag;
  equal(agent.version, '1', 'CreateAgent version');
  equal(agent.llm_provider_id, provider.id, 'CreateAgent llm_provider_id');
  equal(agent.max_iter, 15, 'CreateAgent max_iter (snake_case kept)');
  equal(agent.allow_delegation, true, 'CreateAgent allow_delegation default');

  // Update temperature and max_iter, and override max_tokens: version 2.
  agent = await call(
    agents,
    'UpdateAgent',
    {
      agent: { id: agentId, temperature: 0.8, max_iter: 20, llm_overrides: { max_tokens: 1024 } },
      update_mask: { paths: ['temperature', 'max_iter', 'llm_overrides.max_tokens'] },
      change_description: 'warmer, longer',
    },
    editor,
  );
  equal(agent.version, '2', 'UpdateAgent version');
  equal(agent.temperature, 0.8, 'UpdateAgent temperature');
  equal(agent.max_iter, 20, 'UpdateAgent max_iter');
  equal(agent.llm_overrides.max_tokens, 1024, 'UpdateAgent llm_overrides.max_tokens');

  // List versions (viewer): newest first.
  const history = await call(agents, 'ListAgentVersions', { agent_id: agentId, page_size: 10 }, viewer);
  equal(history.total_size, 2, 'ListAgentVersions total_size');
  equal(
    history.versions.map((v) => [v.version_number, v.action]),
    [
      ['2', 'VERSION_ACTION_UPDATE'],
      ['1', 'VERSION_ACTION_CREATE'],
    ],
    'ListAgentVersions numbers and actions',
  );
  equal(history.versions[0].change_description, 'warmer, longer', 'ListAgentVersions change_description');
  equal(history.next_page_token, '', 'ListAgentVersions next_page_token (last page)');

  // Diff 1 -> 2: the three changed fields, ordered by path, values as
  // google.protobuf.Value (a oneof: `kind` names the set member). proto-loader
  // takes the well-known types from protobufjs' bundled copies, whose field
  // names are camelCase whatever keepCase says: `numberValue`, not
  // `number_value`.
  const diff = await call(agents, 'DiffAgentVersions', { agent_id: agentId, from_version: '1', to_version: '2' }, viewer);
  equal(
    diff.changes.map((c) => [c.path, c.kind]),
    [
      ['llm_overrides.max_tokens', 'CHANGE_KIND_ADDED'],
      ['max_iter', 'CHANGE_KIND_MODIFIED'],
      ['temperature', 'CHANGE_KIND_MODIFIED'],
    ],
    'DiffAgentVersions paths and kinds',
  );
  const maxIter = diff.changes.find((c) => c.path === 'max_iter');
  equal([maxIter.old_value.kind, maxIter.old_value.numberValue], ['numberValue', 15], 'diff max_iter old_value');
  equal(maxIter.new_value.numberValue, 20, 'diff max_iter new_value');

  // Rollback to version 1 (editor): version 3 with v1's values.
  agent = await call(agents, 'RollbackAgent', { agent_id: agentId, version_number: '1' }, editor);
  equal(agent.version, '3', 'RollbackAgent version');
  equal([agent.temperature, agent.max_iter], [0.7, 15], 'RollbackAgent restored temperature and max_iter');
  equal(agent.llm_overrides, null, 'RollbackAgent removed the overrides');

  // Resolve as runtime: the only call that returns the plaintext key.
  const resolved = await call(runtime, 'ResolveAgent', { agent_id: agentId }, runner);
  equal(resolved.agent.id, agentId, 'ResolveAgent agent.id');
  equal(resolved.agent_version, '3', 'ResolveAgent agent_version');
  equal(resolved.api_key, API_KEY, 'ResolveAgent api_key');
  equal(resolved.provider.api_key, '', 'ResolveAgent provider.api_key stays empty');
  equal(
    [resolved.effective.model_name, resolved.effective.temperature, resolved.effective.max_tokens],
    ['gpt-4', 0.7, 2048],
    'ResolveAgent effective parameters',
  );
  const pinned = await call(runtime, 'ResolveAgent', { agent_id: agentId, version_number: '2' }, runner);
  equal(pinned.effective.max_tokens, 1024, 'ResolveAgent version_number 2 (optional int64 set)');

  // Errors, decoded with google-proto-files' google/rpc protos.
  let error = await refused(agents, 'CreateAgent', { agent: { name: 'Nope', role: 'r', goal: 'g' } }, viewer);
  equal(error.code, grpc.status.PERMISSION_DENIED, 'viewer CreateAgent: PERMISSION_DENIED');
  let decoded = details(types, error);
  equal(decoded.status.code, grpc.status.PERMISSION_DENIED, 'google.rpc.Status.code');
  equal(
    [decoded.byName.ErrorInfo.reason, decoded.byName.ErrorInfo.metadata.required_roles],
    ['MISSING_ROLE', 'editor,admin'],
    'PERMISSION_DENIED ErrorInfo',
  );

  error = await refused(
    agents,
    'UpdateAgent',
    { agent: { id: agentId, name: 'x' }, update_mask: { paths: ['name', 'nmae'] } },
    editor,
  );
  equal(error.code, grpc.status.INVALID_ARGUMENT, 'bad mask: INVALID_ARGUMENT');
  decoded = details(types, error);
  equal(
    decoded.byName.BadRequest.field_violations.map((v) => v.field),
    ['update_mask.paths[1]'],
    'bad mask BadRequest field',
  );

  error = await refused(
    agents,
    'UpdateAgent',
    { agent: { id: agentId, etag: v1Etag, max_iter: 30 } },
    editor,
  );
  equal(error.code, grpc.status.ABORTED, 'stale etag: ABORTED');
  equal(details(types, error).byName.ErrorInfo.reason, 'ETAG_MISMATCH', 'stale etag ErrorInfo.reason');

  const unknown = crypto.randomUUID();
  error = await refused(agents, 'GetAgent', { id: unknown }, viewer);
  equal(error.code, grpc.status.NOT_FOUND, 'unknown agent: NOT_FOUND');
  decoded = details(types, error);
  equal(
    [decoded.byName.ResourceInfo.resource_type, decoded.byName.ResourceInfo.resource_name],
    ['agent', unknown],
    'NOT_FOUND ResourceInfo',
  );

  error = await refused(
    agents,
    'CreateAgent',
    { agent: { name: 'Orphan (node)', role: 'r', goal: 'g', llm_provider_id: unknown } },
    editor,
  );
  equal(error.code, grpc.status.FAILED_PRECONDITION, 'unknown provider: FAILED_PRECONDITION');
  equal(
    details(types, error).byName.PreconditionFailure.violations.map((v) => v.type),
    ['PROVIDER_NOT_FOUND'],
    'FAILED_PRECONDITION PreconditionFailure type',
  );

  // The pitfall: with proto-loader's default options the message fields are
  // camelCase, so a snake_case key is silently dropped: `max_iter: 42` is
  // not sent and the server stores its default, 15.
  const naive = grpc.loadPackageDefinition(protoLoader.loadSync(PROTO_FILES, { includeDirs }));
  const naiveAgents = client(naive, 'AgentService', args.registry);
  const dropped = await call(
    naiveAgents,
    'CreateAgent',
    { agent: { name: 'Pitfall (node)', role: 'r', goal: 'g', max_iter: 42 } },
    editor,
  );
  equal([dropped.maxIter, dropped.max_iter], [15, undefined], 'default options drop snake_case max_iter');
  equal(typeof dropped.version, 'object', 'default options give int64 as a Long object');

  for (const stub of [providers, agents, runtime, naiveAgents]) stub.close();
  console.log(`node workflow: all ${count} checks passed`);
}

main().catch((error) => {
  console.error(error && error.stack ? error.stack : error);
  process.exit(1);
});
