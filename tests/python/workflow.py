#!/usr/bin/env python3
"""A Python client of agentregistry built from the .proto files alone.

At start it compiles every .proto of the contract (--proto-root's
agentregistry/ tree; the rich-error messages come from googleapis-common-protos,
as for any client) with grpc_tools.protoc into a temporary directory and imports the generated modules; nothing
Rust-side is used. Then it runs the README walkthrough (Create -> Assign ->
Update -> Override -> Rollback -> Resolve) against a running
registry-service, decodes the rich error details of a failed call, and checks
the PERMISSION_DENIED / UNAUTHENTICATED / NOT_FOUND answers.

Every step is asserted; the first mismatch raises with a clear message and
the program exits non-zero. On success it prints exactly one final line:

    python workflow: all N checks passed

Needs: pip install grpcio grpcio-tools grpcio-status grpcio-health-checking
(googleapis-common-protos comes with grpcio-status).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.resources
import pathlib
import sys
import tempfile
import traceback

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from google.rpc import error_details_pb2

# Per-call deadline, seconds: a hung server fails the run instead of
# blocking it.
TIMEOUT = 15.0

API_KEY = "sk-python-client-key"


class CheckFailed(AssertionError):
    """One asserted step did not hold."""


class Checks:
    """Counts assertions; raises CheckFailed on the first false one."""

    def __init__(self) -> None:
        self.count = 0

    def that(self, condition: bool, message: str) -> None:
        if not condition:
            raise CheckFailed(message)
        self.count += 1
        print(f"ok {self.count}: {message}", flush=True)

    def equal(self, actual, expected, what: str) -> None:
        if actual != expected:
            raise CheckFailed(f"{what}: expected {expected!r}, got {actual!r}")
        self.count += 1
        print(f"ok {self.count}: {what} == {expected!r}", flush=True)


def generate_stubs(proto_root: pathlib.Path, out_dir: pathlib.Path) -> None:
    """Compiles every .proto under proto_root/agentregistry into out_dir."""
    from grpc_tools import protoc

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    protos = sorted(
        str(path.relative_to(proto_root))
        for path in (proto_root / "agentregistry").rglob("*.proto")
    )
    if not protos:
        raise SystemExit(f"no .proto files under {proto_root}")
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed ({code}) compiling {protos}")


class Stubs:
    """The generated modules, imported from the temporary directory."""

    def __init__(self, out_dir: pathlib.Path) -> None:
        sys.path.insert(0, str(out_dir))

        def load(name: str):
            return importlib.import_module(f"agentregistry.v1.{name}")

        self.common = load("common_pb2")
        self.agent = load("agent_pb2")
        self.agent_grpc = load("agent_pb2_grpc")
        self.provider = load("provider_pb2")
        self.provider_grpc = load("provider_pb2_grpc")
        self.runtime = load("runtime_pb2")
        self.runtime_grpc = load("runtime_pb2_grpc")


def bearer(token: str | None):
    return () if token is None else (("authorization", f"Bearer {token}"),)


def expect_error(checks: Checks, code: grpc.StatusCode, what: str, call):
    """Runs call(); checks it fails with `code`; returns the RpcError."""
    try:
        response = call()
    except grpc.RpcError as error:
        checks.equal(error.code(), code, f"{what}: status code")
        return error
    raise CheckFailed(f"{what}: expected {code.name}, but the call succeeded: {response}")


def number(value, what: str) -> float:
    """The number in a google.protobuf.Value (which must hold a number)."""
    kind = value.WhichOneof("kind")
    if kind != "number_value":
        raise CheckFailed(f"{what}: expected a number_value, got {kind}: {value}")
    return value.number_value


def run(args: argparse.Namespace, pb: Stubs) -> int:
    checks = Checks()
    admin = bearer(args.admin_token)
    editor = bearer(args.editor_token)
    viewer = bearer(args.viewer_token)
    runtime = bearer(args.runtime_token)
    other = bearer(args.other_tenant_token)

    with grpc.insecure_channel(args.registry) as channel:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        agents = pb.agent_grpc.AgentServiceStub(channel)
        providers = pb.provider_grpc.ProviderServiceStub(channel)
        resolver = pb.runtime_grpc.RuntimeServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)

        # Health: no token needed.
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
        checks.equal(
            health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status),
            "SERVING",
            "health Check('')",
        )

        # Provider (admin): the key goes in, only api_key_set comes out.
        provider = providers.CreateProvider(
            pb.provider.CreateProviderRequest(
                provider=pb.provider.Provider(
                    name="OpenAI GPT-4 (python)",
                    provider_type=pb.common.PROVIDER_TYPE_OPENAI,
                    model_name="gpt-4",
                    api_key=API_KEY,
                    is_default=True,
                )
            ),
            metadata=admin,
            timeout=TIMEOUT,
        )
        checks.that(bool(provider.id), "CreateProvider returned an id")
        checks.equal(provider.api_key_set, True, "CreateProvider api_key_set")
        checks.equal(provider.api_key, "", "CreateProvider api_key (never returned)")

        # Create + Assign (editor) -> version 1.
        agent = agents.CreateAgent(
            pb.agent.CreateAgentRequest(
                agent=pb.agent.Agent(
                    name="Data Analyst Agent (python)",
                    role="Senior Data Analyst",
                    goal="Analyze complex datasets",
                    backstory="Expert in data science",
                    llm_provider_id=provider.id,
                    temperature=0.7,
                    cache=True,
                    max_iter=15,
                )
            ),
            metadata=editor,
            timeout=TIMEOUT,
        )
        agent_id = agent.id
        checks.that(bool(agent_id), "CreateAgent returned an id")
        checks.equal(agent.version, 1, "CreateAgent version")
        checks.equal(agent.llm_provider_id, provider.id, "CreateAgent llm_provider_id")

        # Update temperature 0.7 -> 0.8 and max_iter 15 -> 20 -> version 2.
        request = pb.agent.UpdateAgentRequest(
            agent=pb.agent.Agent(id=agent_id, temperature=0.8, max_iter=20)
        )
        request.update_mask.paths.extend(["temperature", "max_iter"])
        agent = agents.UpdateAgent(request, metadata=editor, timeout=TIMEOUT)
        checks.equal(agent.version, 2, "UpdateAgent version")
        checks.equal(agent.temperature, 0.8, "UpdateAgent temperature")
        checks.equal(agent.max_iter, 20, "UpdateAgent max_iter")

        # History: newest first, v2's diff is exactly max_iter + temperature.
        history = agents.ListAgentVersions(
            pb.agent.ListAgentVersionsRequest(agent_id=agent_id, page_size=10),
            metadata=viewer,
            timeout=TIMEOUT,
        )
        checks.equal(history.total_size, 2, "ListAgentVersions total_size")
        checks.equal(
            [v.version_number for v in history.versions],
            [2, 1],
            "ListAgentVersions order (newest first)",
        )
        v2, v1 = history.versions
        checks.equal(
            pb.common.VersionAction.Name(v2.action), "VERSION_ACTION_UPDATE", "v2 action"
        )
        checks.equal(
            pb.common.VersionAction.Name(v1.action), "VERSION_ACTION_CREATE", "v1 action"
        )
        checks.equal(len(v1.diff), 0, "v1 diff length")
        checks.equal(
            [c.path for c in v2.diff], ["max_iter", "temperature"], "v2 diff paths (ordered)"
        )
        changes = {c.path: c for c in v2.diff}
        for path, old, new in [("max_iter", 15, 20), ("temperature", 0.7, 0.8)]:
            change = changes[path]
            checks.equal(
                pb.common.ChangeKind.Name(change.kind), "CHANGE_KIND_MODIFIED", f"{path} kind"
            )
            checks.equal(number(change.old_value, f"{path} old"), old, f"{path} old_value")
            checks.equal(number(change.new_value, f"{path} new"), new, f"{path} new_value")

        # Override: llm_overrides replaced via the mask -> version 3.
        request = pb.agent.UpdateAgentRequest(
            agent=pb.agent.Agent(
                id=agent_id,
                llm_overrides=pb.common.ModelParameters(temperature=0.2, max_tokens=1024),
            )
        )
        request.update_mask.paths.append("llm_overrides")
        agent = agents.UpdateAgent(request, metadata=editor, timeout=TIMEOUT)
        checks.equal(agent.version, 3, "override UpdateAgent version")
        checks.equal(agent.llm_overrides.temperature, 0.2, "llm_overrides.temperature")
        checks.equal(agent.llm_overrides.max_tokens, 1024, "llm_overrides.max_tokens")

        # Rollback to version 1 -> version 4, v1's values, no overrides.
        agent = agents.RollbackAgent(
            pb.agent.RollbackAgentRequest(agent_id=agent_id, version_number=1),
            metadata=editor,
            timeout=TIMEOUT,
        )
        checks.equal(agent.version, 4, "RollbackAgent version")
        checks.equal(agent.temperature, 0.7, "RollbackAgent temperature")
        checks.equal(agent.max_iter, 15, "RollbackAgent max_iter")
        checks.equal(agent.HasField("llm_overrides"), False, "RollbackAgent has llm_overrides")

        v4 = agents.GetAgentVersion(
            pb.agent.GetAgentVersionRequest(agent_id=agent_id, version_number=4),
            metadata=viewer,
            timeout=TIMEOUT,
        )
        checks.equal(
            pb.common.VersionAction.Name(v4.action), "VERSION_ACTION_ROLLBACK", "v4 action"
        )
        checks.equal(v4.configuration.version, 4, "v4 configuration.version")

        # Resolve (runtime): the decrypted key and the merged parameters.
        resolved = resolver.ResolveAgent(
            pb.runtime.ResolveAgentRequest(agent_id=agent_id),
            metadata=runtime,
            timeout=TIMEOUT,
        )
        checks.equal(resolved.api_key, API_KEY, "ResolveAgent api_key")
        checks.equal(resolved.provider.api_key, "", "ResolveAgent provider.api_key")
        checks.equal(resolved.effective.temperature, 0.7, "ResolveAgent effective.temperature")
        checks.equal(resolved.effective.model_name, "gpt-4", "ResolveAgent effective.model_name")
        checks.equal(resolved.agent_version, 4, "ResolveAgent agent_version")

        # Rich errors: google.rpc.Status in grpc-status-details-bin.
        error = expect_error(
            checks,
            grpc.StatusCode.INVALID_ARGUMENT,
            "CreateAgent with an empty name and temperature 5.0",
            lambda: agents.CreateAgent(
                pb.agent.CreateAgentRequest(
                    agent=pb.agent.Agent(
                        name="", role="Analyst", goal="Analyze", temperature=5.0
                    )
                ),
                metadata=editor,
                timeout=TIMEOUT,
            ),
        )
        status = rpc_status.from_call(error)
        checks.that(status is not None, "INVALID_ARGUMENT carries grpc-status-details-bin")
        checks.equal(status.code, grpc.StatusCode.INVALID_ARGUMENT.value[0], "google.rpc.Status code")
        violations: set[str] = set()
        reasons: list[str] = []
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations.update(v.field for v in bad_request.field_violations)
            elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reasons.append(info.reason)
        checks.equal(violations, {"agent.name", "agent.temperature"}, "BadRequest field violations")
        checks.that("INVALID_FIELD" in reasons, f"ErrorInfo reason INVALID_FIELD present (got {reasons})")

        # Authorization and tenancy.
        expect_error(
            checks,
            grpc.StatusCode.PERMISSION_DENIED,
            "viewer CreateAgent",
            lambda: agents.CreateAgent(
                pb.agent.CreateAgentRequest(
                    agent=pb.agent.Agent(name="Viewer's agent", role="r", goal="g")
                ),
                metadata=viewer,
                timeout=TIMEOUT,
            ),
        )
        expect_error(
            checks,
            grpc.StatusCode.UNAUTHENTICATED,
            "GetAgent without a token",
            lambda: agents.GetAgent(
                pb.agent.GetAgentRequest(id=agent_id), timeout=TIMEOUT
            ),
        )
        expect_error(
            checks,
            grpc.StatusCode.NOT_FOUND,
            "other tenant GetAgent on our agent",
            lambda: agents.GetAgent(
                pb.agent.GetAgentRequest(id=agent_id), metadata=other, timeout=TIMEOUT
            ),
        )

    print(f"python workflow: all {checks.count} checks passed", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto-root", required=True, type=pathlib.Path)
    parser.add_argument("--registry", required=True, help="HOST:PORT")
    parser.add_argument("--admin-token", required=True)
    parser.add_argument("--editor-token", required=True)
    parser.add_argument("--viewer-token", required=True)
    parser.add_argument("--runtime-token", required=True)
    parser.add_argument("--other-tenant-token", required=True)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="agentregistry-stubs-") as out:
        out_dir = pathlib.Path(out)
        generate_stubs(args.proto_root.resolve(), out_dir)
        pb = Stubs(out_dir)
        try:
            return run(args, pb)
        except CheckFailed as failure:
            print(f"python workflow: CHECK FAILED: {failure}", file=sys.stderr, flush=True)
            return 1
        except grpc.RpcError as error:
            traceback.print_exc()
            print(
                f"python workflow: unexpected RPC error {error.code()}: {error.details()}",
                file=sys.stderr,
                flush=True,
            )
            return 1


if __name__ == "__main__":
    sys.exit(main())
