// The script of the page tests/tests/grpc_web.rs serves to headless
// Chromium from an origin other than the registry's: it lists the caller's
// agents through grpc-web with Connect's browser transport
// (@connectrpc/connect-web, fetch) and writes the outcome into the DOM,
//
//     <pre id="result" data-outcome="ok">["name", …]</pre>     the names, sorted
//     <pre id="result" data-outcome="error">ConnectError: …</pre>
//
// The registry address and the token come from the page's JSON
// `#config`; the service's descriptors are bundled in (bundle.js).
import { createClient } from '@connectrpc/connect';
import { createGrpcWebTransport } from '@connectrpc/connect-web';
import { createFileRegistry, fromBinary } from '@bufbuild/protobuf';
import { FileDescriptorSetSchema } from '@bufbuild/protobuf/wkt';
import descriptorSet from 'agentregistry-descriptors';

function report(outcome, text) {
  const result = document.getElementById('result');
  result.dataset.outcome = outcome;
  result.textContent = text;
}

async function listAgentNames() {
  const config = JSON.parse(document.getElementById('config').textContent);
  const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, descriptorSet));
  const agents = createClient(
    registry.getService('agentregistry.v1.AgentService'),
    createGrpcWebTransport({ baseUrl: config.registry }),
  );
  const response = await agents.listAgents(
    { pageSize: 100 },
    { headers: { authorization: `Bearer ${config.token}` }, timeoutMs: 15000 },
  );
  return response.agents.map((agent) => agent.name).sort();
}

// The test runs Chromium with a virtual time budget, so that the DOM is
// dumped once the call is over. Virtual time stands still while a fetch is
// pending, but Chromium does not count every moment of a grpc-web call as
// one: in one run the call's 15 s timer fired although the registry had
// answered in 1 ms. A request to the page's own server that is never
// answered (`/hold`) keeps virtual time still until the outcome is
// written; then it is aborted, and the budget runs out at once.
const hold = new AbortController();
fetch('/hold', { signal: hold.signal }).catch(() => {});

listAgentNames()
  .then(
    (names) => report('ok', JSON.stringify(names)),
    (error) => report('error', `${error.name}: ${error.message}`),
  )
  .finally(() => hold.abort());
