#!/usr/bin/env python3
"""Every rich error detail common.proto promises, decoded with stock packages.

Run against a registry whose crypto-service is down (the test stops it),
with the agentregistry stubs generated from --proto-root's agentregistry/
tree only (as workflow.py does): the google.rpc messages come from
googleapis-common-protos and nothing else. Each error of the contract's
table is provoked and decoded with grpc_status.rpc_status.from_call, and
its details unpacked into the googleapis classes:

    INVALID_ARGUMENT     BadRequest (update_mask.paths[i]) + ErrorInfo
    NOT_FOUND            ResourceInfo + ErrorInfo
    ALREADY_EXISTS       ResourceInfo + ErrorInfo
    ABORTED              ErrorInfo ETAG_MISMATCH
    FAILED_PRECONDITION  PreconditionFailure + ErrorInfo
    PERMISSION_DENIED    ErrorInfo MISSING_ROLE
    UNAVAILABLE          RetryInfo + ErrorInfo DEPENDENCY_UNAVAILABLE
    RESOURCE_EXHAUSTED   RetryInfo + QuotaFailure + ErrorInfo TENANT_RATE_LIMITED
                         (the registry runs with a tenant call rate; one
                         tenant calls until it is refused)

It also checks that proto/google/ holds the published googleapis files:
compiled the same way, each is identical to the copy googleapis-common-protos
ships (so reflection clients and generated clients agree on the wire).

On success it prints exactly one final line:

    error details: all N checks passed

Needs: pip install grpcio grpcio-tools grpcio-status
"""

from __future__ import annotations

import argparse
import importlib.resources
import pathlib
import sys
import tempfile
import traceback
import uuid

import grpc
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from workflow import TIMEOUT, Checks, CheckFailed, Stubs, bearer, generate_stubs

DOMAIN = "registry.agentregistry.dev"

# The googleapis files proto/google/ must hold exactly as published.
GOOGLE_FILES = [
    "google/api/annotations.proto",
    "google/api/field_behavior.proto",
    "google/api/http.proto",
    "google/rpc/code.proto",
    "google/rpc/error_details.proto",
    "google/rpc/status.proto",
]


def details_of(checks: Checks, error: grpc.RpcError, code: grpc.StatusCode, what: str) -> dict:
    """Checks the code; returns the status details unpacked, by message name."""
    checks.equal(error.code(), code, f"{what}: status code")
    status = rpc_status.from_call(error)
    checks.that(status is not None, f"{what}: carries a google.rpc.Status")
    checks.that(isinstance(status, status_pb2.Status), f"{what}: stock google.rpc.Status")
    unpacked = {}
    for any_detail in status.details:
        name = any_detail.TypeName()
        cls = getattr(error_details_pb2, name.removeprefix("google.rpc."), None)
        if cls is None:
            raise CheckFailed(f"{what}: detail {name} is not a googleapis error detail")
        message = cls()
        if not any_detail.Unpack(message):
            raise CheckFailed(f"{what}: detail {name} does not unpack")
        unpacked[name.removeprefix("google.rpc.")] = message
    return unpacked


def failing(call) -> grpc.RpcError:
    try:
        response = call()
    except grpc.RpcError as error:
        return error
    raise CheckFailed(f"expected an error, but the call succeeded: {response}")


def error_info(checks: Checks, details: dict, reason: str, what: str):
    info = details.get("ErrorInfo")
    checks.that(info is not None, f"{what}: has ErrorInfo")
    checks.equal(info.reason, reason, f"{what}: ErrorInfo.reason")
    checks.equal(info.domain, DOMAIN, f"{what}: ErrorInfo.domain")
    return info


def compare_google_files(checks: Checks, proto_root: pathlib.Path) -> None:
    """proto/google/* compiles to the same descriptors as the published files."""
    from grpc_tools import protoc

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    published_root = pathlib.Path(error_details_pb2.__file__).parents[2]

    def compile_from(root: pathlib.Path) -> dict:
        with tempfile.TemporaryDirectory() as out:
            target = pathlib.Path(out) / "set.bin"
            code = protoc.main(
                ["protoc", f"-I{root}", f"-I{well_known}", f"--descriptor_set_out={target}"]
                + GOOGLE_FILES
            )
            if code != 0:
                raise CheckFailed(f"protoc failed ({code}) on {root}")
            files = descriptor_pb2.FileDescriptorSet.FromString(target.read_bytes()).file
            return {f.name: f for f in files}

    ours, published = compile_from(proto_root), compile_from(published_root)
    for name in GOOGLE_FILES:
        checks.that(
            ours[name] == published[name],
            f"proto/{name} is identical to googleapis-common-protos' copy",
        )


def run(args: argparse.Namespace, pb: Stubs, out_dir: pathlib.Path) -> int:
    checks = Checks()
    editor = bearer(args.editor_token)
    viewer = bearer(args.viewer_token)
    admin = bearer(args.admin_token)

    # No generated google.rpc / google.api module of ours shadows the stock ones.
    checks.that(not (out_dir / "google").exists(), "no google/ package generated from proto/")
    checks.that(
        "site-packages" in error_details_pb2.__file__ or "dist-packages" in error_details_pb2.__file__,
        f"google.rpc.error_details_pb2 is googleapis-common-protos' ({error_details_pb2.__file__})",
    )
    compare_google_files(checks, args.proto_root.resolve())

    with grpc.insecure_channel(args.registry) as channel:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        agents = pb.agent_grpc.AgentServiceStub(channel)
        providers = pb.provider_grpc.ProviderServiceStub(channel)

        def new_agent(name: str, **fields):
            return pb.agent.CreateAgentRequest(
                agent=pb.agent.Agent(name=name, role="Analyst", goal="Analyze", **fields)
            )

        agent = agents.CreateAgent(new_agent("Details Agent"), metadata=editor, timeout=TIMEOUT)

        # INVALID_ARGUMENT: one field violation per bad mask path.
        request = pb.agent.UpdateAgentRequest(agent=pb.agent.Agent(id=agent.id, name="X"))
        request.update_mask.paths.extend(["name", "bogus"])
        error = failing(lambda: agents.UpdateAgent(request, metadata=editor, timeout=TIMEOUT))
        details = details_of(checks, error, grpc.StatusCode.INVALID_ARGUMENT, "bad mask")
        fields = [v.field for v in details["BadRequest"].field_violations]
        checks.equal(fields, ["update_mask.paths[1]"], "bad mask: BadRequest fields")
        error_info(checks, details, "INVALID_FIELD", "bad mask")

        # Output-only paths are ignored, not refused.
        request = pb.agent.UpdateAgentRequest(agent=pb.agent.Agent(id=agent.id, max_iter=7))
        request.update_mask.paths.extend(["max_iter", "version", "etag", "create_time"])
        updated = agents.UpdateAgent(request, metadata=editor, timeout=TIMEOUT)
        checks.equal(updated.max_iter, 7, "mask with output-only paths: applied")

        # NOT_FOUND: ResourceInfo names the kind and the id.
        missing = str(uuid.uuid4())
        error = failing(
            lambda: agents.GetAgent(pb.agent.GetAgentRequest(id=missing), metadata=viewer, timeout=TIMEOUT)
        )
        details = details_of(checks, error, grpc.StatusCode.NOT_FOUND, "unknown agent")
        resource = details.get("ResourceInfo")
        checks.that(resource is not None, "unknown agent: has ResourceInfo")
        checks.equal(resource.resource_type, "agent", "unknown agent: ResourceInfo.resource_type")
        checks.equal(resource.resource_name, missing, "unknown agent: ResourceInfo.resource_name")
        error_info(checks, details, "NOT_FOUND", "unknown agent")

        # ALREADY_EXISTS: ResourceInfo names the kind and the name.
        error = failing(lambda: agents.CreateAgent(new_agent("Details Agent"), metadata=editor, timeout=TIMEOUT))
        details = details_of(checks, error, grpc.StatusCode.ALREADY_EXISTS, "name taken")
        checks.equal(details["ResourceInfo"].resource_name, "Details Agent", "name taken: ResourceInfo.resource_name")
        error_info(checks, details, "NAME_TAKEN", "name taken")

        # ABORTED: a stale etag.
        stale = pb.agent.UpdateAgentRequest(agent=pb.agent.Agent(id=agent.id, etag=agent.etag, max_iter=9))
        error = failing(lambda: agents.UpdateAgent(stale, metadata=editor, timeout=TIMEOUT))
        details = details_of(checks, error, grpc.StatusCode.ABORTED, "stale etag")
        error_info(checks, details, "ETAG_MISMATCH", "stale etag")

        # FAILED_PRECONDITION: PreconditionFailure says why.
        error = failing(
            lambda: agents.CreateAgent(
                new_agent("Orphan Agent", llm_provider_id=missing), metadata=editor, timeout=TIMEOUT
            )
        )
        details = details_of(checks, error, grpc.StatusCode.FAILED_PRECONDITION, "unknown provider")
        violations = details.get("PreconditionFailure")
        checks.that(violations is not None, "unknown provider: has PreconditionFailure")
        checks.equal(
            [v.type for v in violations.violations], ["PROVIDER_NOT_FOUND"], "unknown provider: violation type"
        )
        checks.that(bool(violations.violations[0].description), "unknown provider: violation described")
        error_info(checks, details, "PROVIDER_NOT_FOUND", "unknown provider")

        # PERMISSION_DENIED: ErrorInfo names the method and the roles.
        error = failing(lambda: agents.CreateAgent(new_agent("Viewer Agent"), metadata=viewer, timeout=TIMEOUT))
        details = details_of(checks, error, grpc.StatusCode.PERMISSION_DENIED, "viewer creates")
        info = error_info(checks, details, "MISSING_ROLE", "viewer creates")
        checks.equal(info.metadata["method"], "/agentregistry.v1.AgentService/CreateAgent", "viewer creates: method")
        checks.equal(info.metadata["required_roles"], "editor,admin", "viewer creates: required_roles")

        # UNAVAILABLE: crypto-service is down; RetryInfo says when to retry.
        error = failing(
            lambda: providers.CreateProvider(
                pb.provider.CreateProviderRequest(
                    provider=pb.provider.Provider(
                        name="Unreachable",
                        provider_type=pb.common.PROVIDER_TYPE_OPENAI,
                        model_name="gpt-4o",
                        api_key="sk-details-never-stored",
                    )
                ),
                metadata=admin,
                timeout=TIMEOUT,
            )
        )
        details = details_of(checks, error, grpc.StatusCode.UNAVAILABLE, "crypto down")
        retry = details.get("RetryInfo")
        checks.that(retry is not None, "crypto down: has RetryInfo")
        checks.that(retry.retry_delay.ToMilliseconds() > 0, "crypto down: RetryInfo.retry_delay > 0")
        info = error_info(checks, details, "DEPENDENCY_UNAVAILABLE", "crypto down")
        checks.equal(info.metadata["dependency"], "crypto-service", "crypto down: dependency")

        # RESOURCE_EXHAUSTED: a tenant over its call rate (the registry
        # lets each tenant make 1,000 calls at once, then one a minute);
        # RetryInfo says when to retry, QuotaFailure which quota.
        throttled = bearer(args.throttled_token)
        error = None
        for _ in range(1001):
            try:
                agents.ListAgents(pb.agent.ListAgentsRequest(), metadata=throttled, timeout=TIMEOUT)
            except grpc.RpcError as refused:
                error = refused
                break
        checks.that(error is not None, "tenant rate: a call past the burst is refused")
        details = details_of(checks, error, grpc.StatusCode.RESOURCE_EXHAUSTED, "tenant rate")
        retry = details.get("RetryInfo")
        checks.that(retry is not None, "tenant rate: has RetryInfo")
        checks.that(retry.retry_delay.ToMilliseconds() > 0, "tenant rate: RetryInfo.retry_delay > 0")
        quota = details.get("QuotaFailure")
        checks.that(quota is not None, "tenant rate: has QuotaFailure")
        checks.equal([v.subject for v in quota.violations], ["tenant"], "tenant rate: QuotaFailure subject")
        error_info(checks, details, "TENANT_RATE_LIMITED", "tenant rate")

    print(f"error details: all {checks.count} checks passed", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto-root", required=True, type=pathlib.Path)
    parser.add_argument("--registry", required=True, help="HOST:PORT")
    parser.add_argument("--admin-token", required=True)
    parser.add_argument("--editor-token", required=True)
    parser.add_argument("--viewer-token", required=True)
    parser.add_argument("--throttled-token", required=True, help="a token of a tenant of its own")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentregistry-stubs-") as out:
        out_dir = pathlib.Path(out)
        generate_stubs(args.proto_root.resolve(), out_dir)
        pb = Stubs(out_dir)
        try:
            return run(args, pb, out_dir)
        except (CheckFailed, grpc.RpcError) as error:
            traceback.print_exc()
            print(f"error details: FAILED: {error}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
