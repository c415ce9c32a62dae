"""The chaos test's pieces: a thread-following client that survives being cut, and the
checks of a thread's log against what the client saw.

A :class:`ThreadClient` is one user with one thread. It sends its messages one at a
time (each with its own ``client_id``) and waits for each run's terminal event. Its
connection is cut at random by the chaos driver (an abrupt TCP reset, no closing
handshake) or dies with the server; it then reconnects, ``resume``s after the last
``thread_seq`` it saw, and re-sends the message it did not see accepted, with the same
``client_id``. It records every frame of its thread it received, per connection.

:func:`check_thread` compares the whole log (read back with ``history``) with that.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

import attrs
import trio

from tests.security._clients import (
    ABNORMAL,
    TERMINAL_TYPES,
    Closed,
    Rejected,
    WsClient,
    connect,
)

__all__ = [
    "READ_S",
    "Shared",
    "ThreadClient",
    "ThreadReport",
    "check_thread",
    "read_history",
]

#: Longest a client waits for what it expects (an acceptance, a run's end): runs take
#: a fraction of a second; a run that has not ended by then is given up on (a problem).
READ_S: Final = 5.0
#: Longest a client keeps trying to reconnect to a server that is not there.
RECONNECT_S: Final = 20.0
#: How often a client re-sends an accepted message after a resume (a deliberate retry).
RETRY_ACCEPTED: Final = 0.3
#: Largest history page (the protocol's maximum).
PAGE: Final = 200


@attrs.define
class Shared:
    """What the driver and the clients share: where the server is, and its generation
    (0 before the SIGKILL, 1 after; set only once the killed process has exited)."""

    port: int
    generation: int = 0
    #: One process of several was killed (workers, nginx): a client may have followed a
    #: run of the killed process from another one, and never resumed after the kill.
    partial_kill: bool = False


class Reconnect(Exception):
    """The connection is gone (cut, or the server died): reconnect and resume."""


@attrs.define(eq=False)
class ThreadClient:
    """One user, one thread, ``messages`` sent in turn (see the module docstring)."""

    index: int
    shared: Shared
    messages: list[tuple[str, str]]  # (client_id, text)
    rng: random.Random
    user: str = attrs.field(init=False)
    thread_id: str = attrs.field(init=False)
    #: thread_seq -> the event as received (deduplicated; a second copy must be equal).
    seen: dict[int, dict[str, Any]] = attrs.field(factory=dict)
    #: The thread_seqs received on each connection, in order.
    per_connection: list[list[int]] = attrs.field(factory=list)
    accepted: dict[str, str] = attrs.field(factory=dict)  # client_id -> run_id
    terminals: Counter[str] = attrs.field(factory=Counter)  # run_id -> distinct terminals
    #: Runs cut by the SIGKILL (no terminal event will ever come): decided at the first
    #: resume after the restart.
    cut: set[str] = attrs.field(factory=set)
    #: Runs whose end never came within :data:`READ_S` (each is a problem already).
    abandoned: set[str] = attrs.field(factory=set)
    #: ``last_seq`` of the first resume after the restart: the log as the SIGKILL left it.
    boundary: int | None = None
    epoch: str | None = None
    problems: list[str] = attrs.field(factory=list)
    kills: int = 0
    reconnects: int = 0
    resends: int = 0
    duplicates: int = 0
    busy: bool = False
    done: bool = False
    _conn: WsClient | None = None
    _generation: int = 0
    _scope: trio.CancelScope | None = None

    def __attrs_post_init__(self) -> None:
        self.user = f"chaos-{self.index:03d}"
        self.thread_id = f"thr-chaos-{self.index:03d}"

    @property
    def last_seq(self) -> int:
        return max(self.seen, default=0)

    def describe(self) -> str:
        """What the client is at (for a failure message)."""
        open_runs = [r for c, r in self.accepted.items() if self.terminals[r] == 0]
        return (
            f"{self.user}: accepted {sorted(self.accepted)}, runs without end {open_runs}, "
            f"cut {sorted(self.cut)}, last_seq {self.last_seq}, boundary {self.boundary}, "
            f"busy {self.busy}, kills {self.kills}, problems {self.problems}"
        )

    # -- the chaos driver's side ---------------------------------------------------

    def kill(self) -> bool:
        """Cut the connection now (abrupt TCP reset); False if there is none to cut."""
        if self._scope is None or self._conn is None or not self.busy:
            return False
        self.kills += 1
        self._scope.cancel()
        return True

    # -- the client's own task -----------------------------------------------------

    async def run(self) -> None:
        """Send every message and see every run end; bounded by the caller's deadline."""
        try:
            k = 0
            while k < len(self.messages):
                client_id, text = self.messages[k]
                lost = True
                with trio.CancelScope() as scope:
                    self._scope = scope
                    try:
                        await self._turn(client_id, text)
                        k, lost = k + 1, False
                    except Reconnect:
                        pass
                self._scope = None
                if lost or scope.cancelled_caught:
                    await self._drop()
        finally:
            self.busy = False
            self.done = True
            await self._drop()

    async def _turn(self, client_id: str, text: str) -> None:
        conn = await self._connected()
        self.busy = True
        if client_id not in self.accepted:
            if self.rng.random() < 0.5:
                await trio.sleep(self.rng.uniform(0, 0.02))  # sometimes cut before sending
            await self._send(
                conn,
                {
                    "type": "user_message",
                    "text": text,
                    "thread_id": self.thread_id,
                    "client_id": client_id,
                },
            )
            await self._read_until(conn, lambda: client_id in self.accepted, "its acceptance")
        run_id = self.accepted[client_id]
        ended = await self._read_until(
            conn,
            lambda: self.terminals[run_id] > 0 or run_id in self.cut,
            f"the end of run {run_id}",
            give_up=True,
        )
        if not ended:  # a problem already; the log check says what became of the run
            self.abandoned.add(run_id)
            await self._drop()
        self.busy = False

    async def _connected(self) -> WsClient:
        if self._conn is not None:
            return self._conn
        deadline = trio.current_time() + RECONNECT_S
        delay = 0.02
        while True:
            generation = self.shared.generation  # read before connecting: see Shared
            try:
                conn = await connect(self.shared.port, self.user)
                break
            except (OSError, Closed, Rejected, trio.TooSlowError, trio.BrokenResourceError) as exc:
                if trio.current_time() > deadline:
                    raise AssertionError(f"{self.user}: cannot reconnect: {exc!r}") from exc
            await trio.sleep(delay * (0.5 + self.rng.random()))
            delay = min(delay * 2, 0.5)
        self._conn, self._generation = conn, generation
        self.per_connection.append([])
        ready = conn.frames[0]
        if self.epoch is None:
            self.epoch = ready["epoch"]
        elif ready["epoch"] != self.epoch:
            self.problems.append(f"epoch changed: {self.epoch} -> {ready['epoch']}")
        if len(self.per_connection) > 1 or self.seen:
            self.reconnects += 1
        await self._resume(conn)
        return conn

    async def _resume(self, conn: WsClient) -> None:
        after = self.last_seq
        request: dict[str, Any] = {"type": "resume", "thread_id": self.thread_id, "after": after}
        if self.epoch is not None:
            request["epoch"] = self.epoch
        await self._send(conn, request)
        resumed: dict[str, Any] = {}

        def got_resumed() -> bool:
            return bool(resumed)

        await self._read_until(conn, got_resumed, "resumed", resumed)
        if resumed.get("recovered") is True:
            if resumed.get("last_seq") != self.last_seq:
                self.problems.append(f"resumed after {after}: {resumed} but saw {self.last_seq}")
            last = int(resumed["last_seq"])
        elif resumed.get("reason") == "unknown_thread" and after == 0:
            last = 0
        else:
            self.problems.append(f"resume after {after} (gen {self._generation}): {resumed}")
            last = self.last_seq
        if self.accepted and self.rng.random() < RETRY_ACCEPTED:
            await self._retry_accepted(conn)
        if self._generation == 1 and self.boundary is None:
            # Nothing was sent on this server yet: every run without its end is cut.
            self.boundary = last
            for run_id in self.accepted.values():
                if self.terminals[run_id] == 0:
                    self.cut.add(run_id)

    async def _retry_accepted(self, conn: WsClient) -> None:
        # What a client that does not trust its memory does: send an accepted message
        # again. Its client_id must be recognised: duplicate_message, no second run.
        texts = dict(self.messages)
        client_id = self.rng.choice(sorted(self.accepted))
        before = self.duplicates
        message = {
            "type": "user_message",
            "text": texts[client_id],
            "thread_id": self.thread_id,
            "client_id": client_id,
        }
        await self._send(conn, message)
        self.resends += 1
        await self._read_until(conn, lambda: self.duplicates > before, "duplicate_message")

    async def _send(self, conn: WsClient, message: dict[str, Any]) -> None:
        try:
            await conn.send(message)
        except Closed as exc:
            raise Reconnect from exc

    async def _read_until(
        self,
        conn: WsClient,
        done: Callable[[], bool],
        what: str,
        resumed: dict[str, Any] | None = None,
        *,
        give_up: bool = False,
    ) -> bool:
        """Read until ``done()``; True. After :data:`READ_S` a problem, and False if
        ``give_up`` else :class:`Reconnect` (as when the connection ends)."""
        with trio.move_on_after(READ_S):
            while not done():
                try:
                    frame = await conn.recv()
                except Closed as exc:
                    if exc.code not in (ABNORMAL, 1001):  # cut, or the server went away
                        self.problems.append(f"closed {exc.code} {exc.reason} waiting for {what}")
                    raise Reconnect from exc
                if frame["type"] == "resumed" and resumed is not None:
                    resumed.update(frame)
                else:
                    self._on_frame(frame)
            return True
        self.problems.append(f"no {what} within {READ_S:g} s")
        if give_up:
            return False
        raise Reconnect

    def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "duplicate_message":
            self.duplicates += 1
            self.accepted.setdefault(frame["client_id"], frame["run_id"])
            if self.accepted[frame["client_id"]] != frame["run_id"]:
                self.problems.append(f"duplicate_message names another run: {frame}")
            return
        if "thread_seq" not in frame:
            self.problems.append(f"unexpected frame: {frame}")
            return
        if frame.get("thread_id") != self.thread_id:
            self.problems.append(f"a frame of another thread: {frame}")
            return
        seq = int(frame["thread_seq"])
        self.per_connection[-1].append(seq)
        earlier = self.seen.setdefault(seq, frame)
        if earlier != frame:
            self.problems.append(f"thread_seq {seq} received as {earlier} and as {frame}")
            return
        if earlier is not frame:
            return  # a second copy (a replay of something seen live): already counted
        client_id = frame.get("client_id")
        if kind in ("message_accepted", "agent_started") and client_id is not None:
            known = self.accepted.setdefault(client_id, frame["run_id"])
            if known != frame["run_id"]:
                self.problems.append(f"client_id {client_id} started {known} and {frame}")
        elif kind in TERMINAL_TYPES:
            self.terminals[frame["run_id"]] += 1

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        # An abrupt close: RST, no closing handshake (what a dead network looks like).
        sock = conn.stream.socket
        with contextlib.suppress(OSError):  # already closed by the peer
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await trio.aclose_forcefully(conn.stream)


# -- reading the log back, and checking it ------------------------------------------


async def read_history(port: int, user: str, thread_id: str) -> list[dict[str, Any]]:
    """Every event of the thread, oldest first: ``history`` pages, newest first, paged
    back with ``before`` until ``has_more`` is false."""
    conn = await connect(port, user)
    try:
        pages: list[list[dict[str, Any]]] = []
        before: int | None = None
        for _ in range(10_000):  # bounded: far more pages than any thread here has
            request: dict[str, Any] = {"type": "history", "thread_id": thread_id, "limit": PAGE}
            if before is not None:
                request["before"] = before
            await conn.send(request)
            page = await conn.expect("history_page")
            events: list[dict[str, Any]] = page["events"]
            pages.append(events)
            if not page["has_more"] or not events:
                break
            before = int(events[0]["thread_seq"])
        return [event for page_events in reversed(pages) for event in page_events]
    finally:
        await conn.aclose()


@attrs.frozen
class ThreadReport:
    events: int
    runs: int
    cut_by_kill: int
    problems: tuple[str, ...]


def check_thread(client: ThreadClient, log: list[dict[str, Any]]) -> ThreadReport:
    """The invariants of one thread: see the test module's docstring."""
    problems = list(client.problems)
    seqs = [int(event["thread_seq"]) for event in log]
    if seqs != list(range(1, len(seqs) + 1)):
        dups = sorted(s for s, n in Counter(seqs).items() if n > 1)
        missing = sorted(set(range(1, max(seqs, default=0) + 1)) - set(seqs))
        problems.append(f"log not contiguous from 1: duplicates {dups}, missing {missing}")
    by_seq = {int(event["thread_seq"]): event for event in log}
    for event in log:
        if event.get("thread_id") != client.thread_id:
            problems.append(f"an event of another thread in the log: {event}")

    # Runs: one message_accepted, agent_started, per-run seq 1..n, exactly one terminal last.
    runs: dict[str, list[dict[str, Any]]] = {}
    for event in log:
        runs.setdefault(event["run_id"], []).append(event)
    cut = 0
    for run_id, events in runs.items():
        kinds = [event["type"] for event in events]
        if kinds[0] != "message_accepted" or kinds.count("message_accepted") != 1:
            problems.append(f"run {run_id}: not one message_accepted first: {kinds}")
        numbered = [int(event["seq"]) for event in events if "seq" in event]
        if numbered != list(range(1, len(numbered) + 1)):
            problems.append(f"run {run_id}: seq {numbered}")
        terminals = sum(kind in TERMINAL_TYPES for kind in kinds)
        last = int(events[-1]["thread_seq"])
        interrupted = events[-1].get("reason") == "interrupted"
        if terminals == 1 and kinds[-1] in TERMINAL_TYPES and not interrupted:
            continue
        before_end = int(events[-2]["thread_seq"]) if len(events) > 1 else 0
        if (
            terminals == 1
            and interrupted
            and (
                (client.boundary is not None and before_end <= client.boundary)
                or (client.boundary is None and client.shared.partial_kill)
            )
            and client.shared.generation == 1
        ):
            # Cut by the SIGKILL: the restarted server ended it when the thread was opened.
            cut += 1
            continue
        problems.append(
            f"run {run_id}: {terminals} terminal events ({kinds}); "
            f"SIGKILL boundary {client.boundary}, last thread_seq {last}"
        )

    # Idempotency: each client_id started exactly one run.
    sent = dict(client.messages)
    accepted_ids = Counter(e.get("client_id") for e in log if e["type"] == "message_accepted")
    for client_id in sent:
        if accepted_ids[client_id] != 1:
            problems.append(f"client_id {client_id}: {accepted_ids[client_id]} runs in the log")
    if set(accepted_ids) - set(sent):
        problems.append(f"runs of unknown client_ids: {set(accepted_ids) - set(sent)}")

    # The client's view is the log's: every received thread_seq is the logged event; every
    # gap below the last it saw is a message_accepted of its own (never sent to the sender).
    for seq, frame in client.seen.items():
        if by_seq.get(seq) != frame:
            problems.append(f"received thread_seq {seq} {frame} but the log has {by_seq.get(seq)}")
    texts = {client_id: text for client_id, text in client.messages}
    for seq in range(1, client.last_seq + 1):
        if seq in client.seen:
            continue
        logged = by_seq.get(seq, {})
        client_id = str(logged.get("client_id"))
        inferred = {
            "type": "message_accepted",
            "run_id": client.accepted.get(client_id),
            "thread_id": client.thread_id,
            "thread_seq": seq,
            "text": texts.get(client_id),
            "client_id": client_id,
        }
        if logged != inferred:
            problems.append(f"thread_seq {seq} never received; the log has {logged}")
    for received in client.per_connection:
        if received != sorted(set(received)):
            problems.append(f"a connection received thread_seqs out of order: {received}")
    if cut > 1:  # one run at a time per client, and one kill: a live run was ended too
        problems.append(f"{cut} runs ended interrupted; one kill cuts one run of a thread")
    return ThreadReport(len(log), len(runs), cut, tuple(problems))
