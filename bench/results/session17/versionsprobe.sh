#!/bin/bash
# What a version listing costs when the caller names another tenant's
# resource: tenant `owner`'s provider with 200,000 versions
# (versionsseed.sql). Five calls each, twice: ListProviderVersions by the
# owner's viewer (a page of 10) and by a viewer of tenant `other` naming
# the same id (NOT_FOUND).
#   BIN=/work/rel-X bash versionsprobe.sh
set -euo pipefail
BIN=${BIN:-/work/rel-new}
here=$(cd "$(dirname "$0")" && pwd)
source "$here/probe_lib.sh"
start_pair "${SEED:-$here/versionsseed.sql}"
OWNER=$(token olive owner viewer)
OTHER=$(token oscar other viewer)
request='{"provider_id": "0193a000-0000-7000-8000-00000000a001", "page_size": 10}'
for _ in 1 2; do five ProviderService/ListProviderVersions "$OWNER" "$request" owner; done
for _ in 1 2; do five ProviderService/ListProviderVersions "$OTHER" "$request" "another tenant"; done
