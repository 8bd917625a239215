// Validates every custom resource in the rendered manifests named on the
// command line against its CRD's OpenAPI schema, as the @kubernetes-models
// packages generate it from the published CRDs. Prints one line per
// resource ("passed KIND/NAME" or "failed KIND/NAME: why") and exits 1 if
// any failed or a document's kind is neither built in nor known here.
// Built-in kinds are left to kubernetes-validate; this is only for the
// kinds it has no schema for.
//
// Like the API server, these schemas reject wrong types, values outside an
// enum, bad patterns and missing required fields, but not unknown fields
// (a CRD's structural schema prunes those instead).
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import { AuthorizationPolicy } from "@kubernetes-models/istio/security.istio.io/v1/AuthorizationPolicy";
import { PeerAuthentication } from "@kubernetes-models/istio/security.istio.io/v1/PeerAuthentication";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const models = new Map(
  [AuthorizationPolicy, PeerAuthentication, ServiceMonitor].map((model) => [
    `${model.apiVersion}/${model.kind}`,
    model,
  ]),
);

// API groups whose kinds are built in (kubernetes-validate checks them).
const builtIn = (apiVersion) => !apiVersion.includes(".") || apiVersion.endsWith(".k8s.io/v1");

let failed = 0;
for (const file of process.argv.slice(2)) {
  for (const document of parseAllDocuments(readFileSync(file, "utf8"))) {
    if (document.errors.length > 0) {
      console.log(`failed ${file}: ${document.errors[0].message}`);
      failed++;
      continue;
    }
    const resource = document.toJS();
    if (resource === null) continue;
    const id = `${resource.kind}/${resource.metadata?.name}`;
    if (builtIn(resource.apiVersion)) continue;
    const model = models.get(`${resource.apiVersion}/${resource.kind}`);
    if (model === undefined) {
      console.log(`failed ${id}: no schema here for ${resource.apiVersion}`);
      failed++;
      continue;
    }
    try {
      new model(resource).validate();
      console.log(`passed ${id}`);
    } catch (error) {
      console.log(`failed ${id}: ${error.message}`);
      failed++;
    }
  }
}
process.exit(failed === 0 ? 0 : 1);
