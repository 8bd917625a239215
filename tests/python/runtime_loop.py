#!/usr/bin/env python3
"""The runtime loop (agentregistry_runtime.AgentRuntime) against a running stack.

Stubs are generated from the .proto files at start, as in workflow.py. As
admin it creates a provider (with a key) and an agent whose label
`production` names version 1; then an AgentRuntime (runtime-role token)
serves that agent from its cache while its watch thread keeps the cache
true:

- an update of the agent (v2) leaves `production` on v1: the re-resolve is
  `not_modified` and the cache keeps v1, key included;
- moving `production` to v2 shows v2 in the cache within a deadline;
- a new provider key shows in the cache within a deadline;
- a change made while the watch stream is down is seen after it resumes,
  which it does after its last revision (nothing missed, nothing repeated);
- when that revision has been compacted away (the registry runs with
  REGISTRY_WATCH_HISTORY=2, REGISTRY_WATCH_COMPACTION_SECONDS=1), the resume
  answers OUT_OF_RANGE and the runtime watches from now, re-resolving
  everything: the change is seen all the same;
- every full and not_modified answer is counted: exactly as many as these
  steps need (the Rust test also checks crypto-service decrypted exactly
  FULL_ANSWERS times).

Keys are compared, never printed. Every step is asserted; on success the
last line is exactly:

    python runtime: all N checks passed

Needs: pip install grpcio grpcio-tools grpcio-status grpcio-health-checking.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pathlib
import sys
import tempfile
import threading
import time
import traceback

import grpc

from agentregistry_runtime import AgentRuntime
from workflow import TIMEOUT, CheckFailed, Checks, bearer, generate_stubs

# How long a change may take to reach the cache (a bound, not a
# synchronisation: changes arrive in milliseconds).
WAIT = 10.0

KEY_1 = "sk-runtime-loop-first"
KEY_2 = "sk-runtime-loop-second"
GOAL_V1 = "Answer support tickets"
GOAL_V2 = "Answer support tickets politely"
GOAL_V3 = "Answer support tickets politely and briefly"
GOAL_V4 = "Answer support tickets politely, briefly"
GOAL_V5 = "Answer support tickets politely, briefly and in English"
LABEL = "production"

# Full ResolveAgent answers these steps need: the first get (v1), the label
# moved to v2, the new key, the label moved to v3 while disconnected, the
# re-resolve after OUT_OF_RANGE (v5).
FULL_ANSWERS = 5
# not_modified answers: the re-resolve at the first SYNCED, the update to
# v2, the update to v3 (each while `production` stayed where it was).
# (The re-resolve after OUT_OF_RANGE finds v5: a full answer.)
NOT_MODIFIED_ANSWERS = 3


class Stubs:
    """The generated modules the program and the runtime use."""

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
        self.watch = load("watch_pb2")
        self.watch_grpc = load("watch_pb2_grpc")


def compacted(pb: Stubs, channel: grpc.Channel, admin, after: int) -> grpc.StatusCode:
    """Opens WatchChanges after `after` until it answers OUT_OF_RANGE (the
    registry compacts every second), at most WAIT seconds; the last code."""
    deadline = time.monotonic() + WAIT
    watcher = pb.watch_grpc.WatchServiceStub(channel)
    while True:
        stream = watcher.WatchChanges(
            pb.watch.WatchChangesRequest(after_revision=after), metadata=admin
        )
        try:
            next(stream)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
        finally:
            stream.cancel()
        if code == grpc.StatusCode.OUT_OF_RANGE or time.monotonic() > deadline:
            return code
        time.sleep(0.1)


def run(args: argparse.Namespace, pb: Stubs) -> int:
    checks = Checks()
    admin = bearer(args.admin_token)

    def eventually(runtime: AgentRuntime, condition, what: str) -> None:
        checks.that(runtime.wait_until(condition, WAIT), f"{what} (within {WAIT:.0f} s)")

    with grpc.insecure_channel(args.registry) as channel:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        agents = pb.agent_grpc.AgentServiceStub(channel)
        providers = pb.provider_grpc.ProviderServiceStub(channel)

        def set_goal(agent_id: str, goal: str):
            request = pb.agent.UpdateAgentRequest(agent=pb.agent.Agent(id=agent_id, goal=goal))
            request.update_mask.paths.append("goal")
            return agents.UpdateAgent(request, metadata=admin, timeout=TIMEOUT)

        def move_label(agent_id: str, to: int, expected: int):
            return agents.SetAgentLabel(
                pb.agent.SetAgentLabelRequest(
                    agent_id=agent_id, label=LABEL, version_number=to, expected_version=expected
                ),
                metadata=admin,
                timeout=TIMEOUT,
            )

        # Revision 1: the provider, with a key.
        provider = providers.CreateProvider(
            pb.provider.CreateProviderRequest(
                provider=pb.provider.Provider(
                    name="OpenAI (runtime loop)",
                    provider_type=pb.common.PROVIDER_TYPE_OPENAI,
                    model_name="gpt-4o",
                    api_key=KEY_1,
                )
            ),
            metadata=admin,
            timeout=TIMEOUT,
        )
        checks.equal(provider.api_key_set, True, "CreateProvider api_key_set")
        # Revision 2: the agent, version 1, on that provider.
        agent = agents.CreateAgent(
            pb.agent.CreateAgentRequest(
                agent=pb.agent.Agent(
                    name="Support agent (runtime loop)",
                    role="Support",
                    goal=GOAL_V1,
                    llm_provider_id=provider.id,
                )
            ),
            metadata=admin,
            timeout=TIMEOUT,
        )
        agent_id = agent.id
        checks.equal(agent.version, 1, "CreateAgent version")
        # Revision 3: production -> v1 (the label must not exist yet).
        label = move_label(agent_id, to=1, expected=0)
        checks.equal(label.version_number, 1, "SetAgentLabel production version")

        runtime = AgentRuntime(channel, pb, args.runtime_token, label=LABEL)

        # A miss: resolved by label, with the key.
        first = runtime.get(agent_id)
        checks.equal(first.agent_version, 1, "get: agent_version")
        checks.equal(first.agent.goal, GOAL_V1, "get: goal")
        checks.equal(first.label, LABEL, "get: resolved label")
        checks.that(first.api_key == KEY_1, "get: the provider's key")
        checks.that(runtime.get(agent_id) is first, "a second get answers from the cache")
        checks.equal(runtime.full_answers, 1, "full answers after the first get")

        stop = threading.Event()
        failures: list[BaseException] = []

        def follow() -> None:
            try:
                runtime.follow(stop)
            except BaseException as error:  # reported by the main thread
                failures.append(error)

        follower = threading.Thread(target=follow, name="runtime-follow")
        follower.start()
        try:
            # Watching from now: SYNCED at revision 3, then the cached agent
            # is re-resolved with its etag (nothing changed: not_modified).
            eventually(
                runtime,
                lambda: runtime.connected and runtime.not_modified_answers == 1,
                "SYNCED: the cached agent re-resolved, not_modified",
            )
            checks.equal(runtime.watched_after, [None], "the first watch starts from now")
            checks.equal(runtime.last_revision, 3, "SYNCED revision")
            checks.that(runtime.cached(agent_id) is first, "not_modified keeps the cached answer")

            # Revision 4: v2 written; production stays on v1.
            checks.equal(set_goal(agent_id, GOAL_V2).version, 2, "UpdateAgent version")
            eventually(
                runtime,
                lambda: runtime.not_modified_answers == 2,
                "the update re-resolved, not_modified",
            )
            held = runtime.cached(agent_id)
            checks.equal(held.agent_version, 1, "cache after the update: agent_version")
            checks.equal(held.agent.goal, GOAL_V1, "cache after the update: goal")
            checks.that(held.api_key == KEY_1, "cache after the update: key kept")
            checks.equal(runtime.full_answers, 1, "full answers after the update")

            # Revision 5: production -> v2.
            move_label(agent_id, to=2, expected=1)
            eventually(
                runtime,
                lambda: runtime.cached(agent_id).agent_version == 2,
                "the label move reached the cache",
            )
            held = runtime.cached(agent_id)
            checks.equal(held.agent.goal, GOAL_V2, "cache after the label move: goal")
            checks.that(held.api_key == KEY_1, "cache after the label move: same key")
            checks.equal(runtime.full_answers, 2, "full answers after the label move")

            # Revision 6: a new key (provider version 2).
            request = pb.provider.UpdateProviderRequest(
                provider=pb.provider.Provider(id=provider.id, api_key=KEY_2)
            )
            request.update_mask.paths.append("api_key")
            rotated = providers.UpdateProvider(request, metadata=admin, timeout=TIMEOUT)
            checks.equal(rotated.version, 2, "UpdateProvider (new key) version")
            eventually(
                runtime,
                lambda: runtime.full_answers == 3,
                "the new key: a full answer",
            )
            held = runtime.cached(agent_id)
            # Not asserted: provider_version. For a label naming the current
            # agent version the server answers the provider version recorded
            # when that agent version was written (1), where runtime.proto
            # says "the provider's current version" (2); the key is the
            # current one either way.
            checks.that(held.api_key == KEY_2, "cache after the rotation: the new key")
            checks.equal(held.provider.id, provider.id, "cache after the rotation: provider id")
            checks.equal(held.agent_version, 2, "cache after the rotation: agent_version")
            checks.equal(runtime.full_answers, 3, "full answers after the rotation")

            # Revision 7: v3 written; production stays on v2.
            checks.equal(set_goal(agent_id, GOAL_V3).version, 3, "UpdateAgent v3 version")
            eventually(
                runtime,
                lambda: runtime.not_modified_answers == 3,
                "the v3 update re-resolved, not_modified",
            )
            checks.equal(runtime.cached(agent_id).agent_version, 2, "cache after v3: still v2")

            # A forced reconnect: the stream is closed and held down while
            # production moves to v3 (revision 8).
            runtime.drop_stream(hold=True)
            eventually(runtime, lambda: not runtime.connected, "the stream is down")
            move_label(agent_id, to=3, expected=2)
            checks.equal(
                runtime.cached(agent_id).agent_version, 2, "while down, the cache is unchanged"
            )
            runtime.release()
            eventually(
                runtime,
                lambda: runtime.connected and runtime.cached(agent_id).agent_version == 3,
                "after resuming, the move made while down reached the cache",
            )
            held = runtime.cached(agent_id)
            checks.equal(held.agent.goal, GOAL_V3, "cache after the resume: goal")
            checks.that(held.api_key == KEY_2, "cache after the resume: the current key")
            checks.equal(
                runtime.watched_after, [None, 7], "the second stream resumed after revision 7"
            )
            checks.equal(
                runtime.revisions_applied,
                [4, 5, 6, 7, 8],
                "every change applied once, in order",
            )
            checks.equal(runtime.full_answers, 4, "full answers after the resume")
            checks.equal(runtime.not_modified_answers, 3, "not_modified answers after the resume")

            # Down again while production moves to v5 (revisions 9-11) and
            # the registry (REGISTRY_WATCH_HISTORY=2) compacts revision 9
            # away: resuming after 8 answers OUT_OF_RANGE, so the runtime
            # watches from now and re-resolves everything at SYNCED.
            runtime.drop_stream(hold=True)
            eventually(runtime, lambda: not runtime.connected, "the stream is down again")
            checks.equal(set_goal(agent_id, GOAL_V4).version, 4, "UpdateAgent v4 version")
            checks.equal(set_goal(agent_id, GOAL_V5).version, 5, "UpdateAgent v5 version")
            move_label(agent_id, to=5, expected=3)
            checks.equal(
                compacted(pb, channel, admin, after=8),
                grpc.StatusCode.OUT_OF_RANGE,
                "revision 9 compacted: WatchChanges after 8",
            )
            runtime.release()
            eventually(
                runtime,
                lambda: runtime.connected and runtime.cached(agent_id).agent_version == 5,
                "after OUT_OF_RANGE, watching from now, the cache shows v5",
            )
            held = runtime.cached(agent_id)
            checks.equal(held.agent.goal, GOAL_V5, "cache after OUT_OF_RANGE: goal")
            checks.that(held.api_key == KEY_2, "cache after OUT_OF_RANGE: the current key")
            checks.equal(
                runtime.watched_after,
                [None, 7, 8, None],
                "streams: from now, after 7, after 8 (OUT_OF_RANGE), from now",
            )
            checks.equal(runtime.last_revision, 11, "SYNCED revision after OUT_OF_RANGE")
            checks.equal(
                runtime.revisions_applied,
                [4, 5, 6, 7, 8],
                "no change replayed after OUT_OF_RANGE",
            )
            checks.equal(runtime.full_answers, FULL_ANSWERS, "full answers in all")
            checks.equal(
                runtime.not_modified_answers, NOT_MODIFIED_ANSWERS, "not_modified answers in all"
            )
        finally:
            stop.set()
            follower.join(timeout=WAIT)
        checks.that(not follower.is_alive(), "follow returns once stop is set")
        checks.equal(failures, [], "follow raised nothing")

    print(f"python runtime: all {checks.count} checks passed", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto-root", required=True, type=pathlib.Path)
    parser.add_argument("--registry", required=True, help="HOST:PORT")
    parser.add_argument("--admin-token", required=True)
    parser.add_argument("--runtime-token", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")

    with tempfile.TemporaryDirectory(prefix="agentregistry-stubs-") as out:
        out_dir = pathlib.Path(out)
        generate_stubs(args.proto_root.resolve(), out_dir)
        pb = Stubs(out_dir)
        try:
            return run(args, pb)
        except CheckFailed as failure:
            print(f"python runtime: CHECK FAILED: {failure}", file=sys.stderr, flush=True)
            return 1
        except grpc.RpcError as error:
            traceback.print_exc()
            print(
                f"python runtime: unexpected RPC error {error.code()}: {error.details()}",
                file=sys.stderr,
                flush=True,
            )
            return 1


if __name__ == "__main__":
    sys.exit(main())
