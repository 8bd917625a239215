"""A small runtime loop for agent processes that run what the registry says.

An agent process needs, for each agent it runs, what ResolveAgent answers:
the agent version a label names (``production`` by default), its provider,
the merged parameters and the decrypted key. ``AgentRuntime`` keeps those
answers in a local cache and keeps the cache true without polling:

- ``get(agent_id)`` answers from the cache; on a miss it resolves the agent
  by label and caches the answer.
- ``follow(stop_event)`` watches the tenant's changes (WatchChanges) and,
  when a cached agent, its provider or a label of either changes,
  re-resolves the affected cached agents with ``if_none_match`` = the etag
  of the answer it holds. An unchanged resolution comes back
  ``not_modified`` (no key, no decrypt in crypto-service) and the cached
  answer, key included, stays; a changed one replaces it.
- The watch resumes after the last revision it applied, so a dropped
  stream, a slow-reader cut (RESOURCE_EXHAUSTED) or a server shutdown
  (UNAVAILABLE) misses and repeats nothing; it reconnects after a short
  backoff. The first watch starts "from now": its SYNCED marker makes the
  runtime re-resolve every cached agent, covering what changed before the
  watch began. OUT_OF_RANGE (the revision was compacted away) does the same:
  re-resolve everything, watch from now.

Only grpcio and the standard library: the generated modules are passed in
(``stubs.runtime``, ``stubs.runtime_grpc``, ``stubs.watch``,
``stubs.watch_grpc``, as ``grpc_tools.protoc`` writes them from
``proto/agentregistry/v1``). Threads, not asyncio: ``follow`` blocks, so run
it in a thread of its own.

Keys: the answers hold plaintext keys. This module never logs or prints an
answer, a key or an etag; its log lines name agent ids, revisions and gRPC
status codes only.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

import grpc

log = logging.getLogger("agentregistry.runtime")

# Watch failures after which the runtime resumes after its last revision.
# CANCELLED is a stream this process dropped itself (see drop_stream).
RESUMABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)

# Resolve answers that say the registry no longer resolves the agent (it,
# its label or its provider is gone): the cached answer is dropped and the
# next get() resolves again (and raises the registry's error).
GONE = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION})


class AgentRuntime:
    """A cache of resolved agents that a watch keeps up to date.

    ``channel``: a grpc.Channel to registry-service. ``stubs``: the generated
    modules (see the module docs). ``token``: a bearer token with the
    ``runtime`` role. ``label``: the agent label to run (``latest`` = each
    agent's current version).

    Thread-safe: ``get`` may be called from any thread while ``follow`` runs
    in another. Counters (``full_answers``, ``not_modified_answers``) and the
    watch bookkeeping (``last_revision``, ``revisions_applied``,
    ``watched_after``, ``connected``) are read-only for callers; read them
    inside ``wait_until`` predicates, which run under the runtime's lock.
    """

    def __init__(
        self,
        channel: grpc.Channel,
        stubs,
        token: str,
        label: str = "production",
        *,
        timeout: float = 15.0,
        backoff: tuple[float, float] = (0.05, 2.0),
    ) -> None:
        self.label = label
        self._messages = stubs.runtime
        self._watch_messages = stubs.watch
        self._resolver = stubs.runtime_grpc.RuntimeServiceStub(channel)
        self._watcher = stubs.watch_grpc.WatchServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._timeout = timeout
        self._backoff_first, self._backoff_most = backoff

        # Resolves and the cache updates that follow them happen one at a
        # time, so an older answer never overwrites a newer one and a change
        # is never judged against a cache that a get() is about to fill.
        self._resolving = threading.Lock()
        # Guards and signals everything below.
        self._state = threading.Condition()
        self._cache: dict = {}
        self.full_answers = 0
        self.not_modified_answers = 0
        # The revision of the last change (or SYNCED marker) applied: the
        # next stream resumes after it. None: watch from now.
        self.last_revision: int | None = None
        # The revision of every change applied, in order (for tests).
        self.revisions_applied: list[int] = []
        # The after_revision of every stream opened (None = from now).
        self.watched_after: list[int | None] = []
        # Whether a stream is open and has answered.
        self.connected = False

        self._stream = None
        self._may_connect = threading.Event()
        self._may_connect.set()

    # ----- the cache ------------------------------------------------------

    def get(self, agent_id: str):
        """The resolved agent (a ResolvedAgent message) to run.

        From the cache; on a miss, resolved by ``label`` and cached. Raises
        grpc.RpcError when the registry does not resolve it. Do not modify
        the message: it is the cached answer.
        """
        with self._state:
            cached = self._cache.get(agent_id)
        if cached is not None:
            return cached
        with self._resolving:
            with self._state:
                cached = self._cache.get(agent_id)
            if cached is not None:
                return cached
            answer = self._call_resolve(agent_id, if_none_match="")
            with self._state:
                self._cache[agent_id] = answer
                self._state.notify_all()
            return answer

    def cached(self, agent_id: str):
        """The cached answer for ``agent_id``, or None; never calls the registry."""
        with self._state:
            return self._cache.get(agent_id)

    def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Waits until ``condition()`` holds, at most ``timeout`` seconds.

        ``condition`` runs under the runtime's lock each time its state
        changes (it may call ``cached`` and read the counters, but must not
        call ``get``). Returns whether it held.
        """
        with self._state:
            return self._state.wait_for(condition, timeout=timeout)

    def _call_resolve(self, agent_id: str, if_none_match: str):
        """ResolveAgent by label, counted by the kind of answer."""
        answer = self._resolver.ResolveAgent(
            self._messages.ResolveAgentRequest(
                agent_id=agent_id, label=self.label, if_none_match=if_none_match
            ),
            metadata=self._metadata,
            timeout=self._timeout,
        )
        with self._state:
            if answer.not_modified:
                self.not_modified_answers += 1
            else:
                self.full_answers += 1
            self._state.notify_all()
        return answer

    def _refresh(self, agent_ids) -> None:
        """Re-resolves cached agents with their etags (caller holds _resolving).

        not_modified keeps the cached answer; a full answer replaces it; an
        agent the registry no longer resolves leaves the cache. Any other
        error propagates (the change is applied again after a resume).
        """
        for agent_id in agent_ids:
            with self._state:
                held = self._cache.get(agent_id)
            if held is None:
                continue
            try:
                answer = self._call_resolve(agent_id, if_none_match=held.etag)
            except grpc.RpcError as error:
                if error.code() not in GONE:
                    raise
                log.info("agent %s no longer resolves (%s): dropped", agent_id, error.code().name)
                with self._state:
                    self._cache.pop(agent_id, None)
                    self._state.notify_all()
                continue
            if not answer.not_modified:
                with self._state:
                    self._cache[agent_id] = answer
                    self._state.notify_all()

    def _affected(self, change) -> list[str]:
        """The cached agents whose resolution `change` may have changed."""
        kinds = self._watch_messages
        if change.kind == kinds.RESOURCE_KIND_AGENT:
            is_label_change = change.action in (
                kinds.CHANGE_ACTION_LABEL_SET,
                kinds.CHANGE_ACTION_LABEL_DELETE,
            )
            if is_label_change and change.label != self.label:
                return []
            return [change.resource_id] if change.resource_id in self._cache else []
        if change.kind == kinds.RESOURCE_KIND_PROVIDER:
            # Every provider change that can alter a resolution names the
            # provider an answer holds: its update, key rotation, label
            # move or delete; a new default gives the old default an UPDATE.
            return [
                agent_id
                for agent_id, answer in self._cache.items()
                if answer.provider.id == change.resource_id
            ]
        return []

    # ----- the watch ------------------------------------------------------

    def follow(self, stop_event: threading.Event) -> None:
        """Keeps the cache up to date until ``stop_event`` is set.

        Blocks; run it in its own thread. Returns when ``stop_event`` is set;
        raises grpc.RpcError on an error that retrying cannot fix
        (UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT).
        """
        finished = threading.Event()
        stopper = threading.Thread(
            target=self._cancel_when_set, args=(stop_event, finished), daemon=True
        )
        stopper.start()
        try:
            delay = self._backoff_first
            while not stop_event.is_set():
                if not self._may_connect.wait(timeout=0.05):
                    continue
                with self._state:
                    resumed_after = self.last_revision
                try:
                    self._watch_once(stop_event)
                    log.warning("watch stream ended without a status; resuming")
                except grpc.RpcError as error:
                    if stop_event.is_set():
                        break
                    code = error.code()
                    if code == grpc.StatusCode.OUT_OF_RANGE:
                        log.warning(
                            "watch: revision %s is no longer kept; re-resolving, watching from now",
                            self.last_revision,
                        )
                        with self._state:
                            self.last_revision = None
                    elif code in RESUMABLE:
                        log.info(
                            "watch ended (%s); resuming after revision %s",
                            code.name,
                            self.last_revision,
                        )
                    else:
                        raise
                finally:
                    with self._state:
                        progressed = self.last_revision != resumed_after
                        self.connected = False
                        self._stream = None
                        self._state.notify_all()
                if progressed:
                    # The stream worked: the backoff starts over.
                    delay = self._backoff_first
                if stop_event.wait(delay):
                    break
                delay = min(delay * 2, self._backoff_most)
        finally:
            finished.set()

    def _watch_once(self, stop_event: threading.Event) -> None:
        """One stream, opened after last_revision: applies what it sends
        until it ends (with the RpcError that ended it)."""
        with self._state:
            after = self.last_revision
            request = self._watch_messages.WatchChangesRequest()
            if after is not None:
                request.after_revision = after
            stream = self._watcher.WatchChanges(request, metadata=self._metadata)
            self._stream = stream
            self.watched_after.append(after)
            self._state.notify_all()
        # A stop or a drop_stream that came before self._stream was set.
        if stop_event.is_set() or not self._may_connect.is_set():
            stream.cancel()
        synced = self._watch_messages.CHANGE_ACTION_SYNCED
        try:
            for change in stream:
                with self._resolving:
                    if change.action == synced:
                        if after is None:
                            # Watching from now: what changed before is unseen.
                            with self._state:
                                everything = list(self._cache)
                            self._refresh(everything)
                    else:
                        with self._state:
                            affected = self._affected(change)
                        self._refresh(affected)
                    with self._state:
                        self.last_revision = change.revision
                        self.connected = True
                        if change.action != synced:
                            self.revisions_applied.append(change.revision)
                        self._state.notify_all()
        finally:
            stream.cancel()

    def _cancel_when_set(self, stop_event: threading.Event, finished: threading.Event) -> None:
        while not finished.is_set():
            if stop_event.wait(timeout=0.1):
                self._cancel_stream()
                return

    def _cancel_stream(self) -> None:
        with self._state:
            stream = self._stream
        if stream is not None:
            stream.cancel()

    # ----- forced reconnects (operations and tests) ------------------------

    def drop_stream(self, hold: bool = False) -> None:
        """Closes the current watch stream; ``follow`` resumes after its last
        revision. With ``hold``, it does not reconnect until ``release()``."""
        if hold:
            self._may_connect.clear()
        self._cancel_stream()

    def release(self) -> None:
        """Lets ``follow`` reconnect after ``drop_stream(hold=True)``."""
        self._may_connect.set()

