"""The per-user frame checker of the runtime audit: pure Python, no I/O, no Trio.

A :class:`UserLedger` is told what one simulated user sent (its messages with their
canaries, its cancels) and is fed every frame that user received, in order. It
reports :class:`Violation` values -- evidence that data or control of another user
reached this one -- and :class:`Anomaly` values: protocol oddities that are not in
themselves a leak (a frame that is not JSON, a rate-limit error, ...).

Canaries are unguessable markers (``cy`` + 16 hex digits) placed in everything a
user sends. One :class:`CanaryIndex`, shared read-only by every ledger of an audit,
maps each canary to its owner, so the evidence says *whose* data leaked.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Final

import attrs

from .._markers import request_scoped

__all__ = [
    "ANOMALY_KINDS",
    "CANARY_PATTERN",
    "LOOKUP_TYPES",
    "RUN_EVENT_TYPES",
    "TERMINAL_TYPES",
    "VIOLATION_KINDS",
    "Anomaly",
    "CanaryIndex",
    "CanaryOwner",
    "LedgerCounts",
    "Observed",
    "UserLedger",
    "Violation",
    "derive_canary",
    "excerpt",
]

#: A canary: ``cy`` and 16 lower-case hex digits (64 bits).
CANARY_PATTERN: Final = re.compile(r"cy[0-9a-f]{16}")
TERMINAL_TYPES: Final = frozenset({"agent_completed", "agent_error", "run_cancelled"})
RUN_EVENT_TYPES: Final = TERMINAL_TYPES.union(
    ("agent_started", "agent_thinking", "agent_delta", "tool_executing", "tool_completed")
)
_CONNECTION_TYPES: Final = frozenset({"connection_ready", "error", "pong", "auth_ok"})
#: Answers to the thread look-ups (``history``, ``threads``, ``resume``).
LOOKUP_TYPES: Final = frozenset({"history_page", "thread_list", "resumed"})

#: What each violation kind means; every kind a ledger or the auditor reports is here.
VIOLATION_KINDS: Final = MappingProxyType(
    {
        "wrong-user": "connection_ready names another user",
        "foreign-canary": "a frame carries another user's canary",
        "foreign-start": "agent_started for a message this user has not sent (or no client_id)",
        "foreign-run": "a run event for a run_id never announced to this user",
        "duplicate-run-id": "agent_started reuses a run_id already announced",
        "foreign-thread": "a run event on a thread this user did not send or was not given",
        "seq": "a run's seq is not 1, 2, 3, ... without gaps or repeats",
        "after-terminal": "an event of a run after its terminal event",
        "foreign-ref": "an error refers to an id this user never sent nor was given",
        "unrequested-cancel": "a run ended run_cancelled although this user never cancelled it",
        "no-terminal": "an accepted run never ended although the connection stayed open",
        "no-answer": "a user_message got neither agent_started nor an error",
        "shared-run-id": "one run_id was announced to two users",
        "shared-connection-id": "two users were given the same connection_id",
        "shared-thread-id": "a server-chosen thread_id is also another user's thread",
        "idor-distinguishable": "cancel of another user's run is answered unlike an unknown id",
        "idor-cancelled": "another user's cancel ended this user's run",
        "foreign-duplicate": "duplicate_message names a run this user never had",
        "foreign-history": "history or a thread list holds another user's run or thread",
        "foreign-message": "message_accepted on a thread or with a client_id not this user's",
        "thread-distinguishable": "history or resume of another user's thread is answered "
        "unlike one of a thread that never existed",
    }
)
ANOMALY_KINDS: Final = MappingProxyType(
    {
        "bad-frame": "a frame that is not a JSON object with a string 'type'",
        "unknown-type": "a frame type chat.v1 does not define",
        "ready-not-first": "the first frame of a connection is not connection_ready",
        "duplicate-ready": "a second connection_ready on one connection",
        "no-ready": "a connection without connection_ready",
        "no-user-id": "connection_ready without user_id",
        "agent-error": "a run ended agent_error",
        "server-cancel": "a run cancelled by the server (e.g. shutdown), not by a user",
        "rate-limited": "the server answered rate_limited",
        "run-crosstalk": "a run's event carries the canary of another run of the same user",
        "unpaired-error": "an error refers to this user's client_id but answers nothing pending",
        "duplicate-mismatch": "duplicate_message names this user's run of another thread",
        "unknown-thread-listed": "a thread list names a thread no user of the audit used",
    }
)

Frame = Mapping[str, Any]


def derive_canary(seed: str | int, *labels: object) -> str:
    """The canary of ``labels`` under ``seed``: reproducible, unguessable without the seed."""
    material = "\x1f".join(str(part) for part in (seed, *labels)).encode()
    return "cy" + hashlib.blake2b(material, digest_size=8, person=b"trio-enclave").hexdigest()


def excerpt(text: str, position: int | None = None, width: int = 240) -> str:
    """At most ``width`` characters of ``text``, around ``position`` when given."""
    if len(text) <= width:
        return text
    start = 0 if position is None else max(0, min(position - width // 3, len(text) - width))
    head = "..." if start else ""
    tail = "..." if start + width < len(text) else ""
    return f"{head}{text[start : start + width]}{tail}"


def _frozen_mapping(mapping: Mapping[str, CanaryOwner]) -> Mapping[str, CanaryOwner]:
    return MappingProxyType(dict(mapping))


@attrs.frozen
class CanaryOwner:
    """Whose a canary is, and what it marks (``user``, ``thread`` or ``run N``)."""

    user: str
    role: str


@attrs.frozen
class CanaryIndex:
    """canary -> owner, for every canary of an audit; immutable, shared by all ledgers."""

    _owners: Mapping[str, CanaryOwner] = attrs.field(converter=_frozen_mapping)

    @classmethod
    def build(cls, entries: Iterable[tuple[str, CanaryOwner]]) -> CanaryIndex:
        """Raises ValueError for a malformed canary or one given to two owners."""
        owners: dict[str, CanaryOwner] = {}
        for canary, owner in entries:
            if not CANARY_PATTERN.fullmatch(canary):
                raise ValueError(f"not a canary: {canary!r}")
            if owners.setdefault(canary, owner) != owner:
                raise ValueError(f"canary {canary} has two owners")
        return cls(owners)

    def __len__(self) -> int:
        return len(self._owners)

    def owner(self, canary: str) -> CanaryOwner | None:
        return self._owners.get(canary)

    def scan(self, text: str) -> Iterator[tuple[str, CanaryOwner, int]]:
        """(canary, owner, position) of every known canary in ``text``."""
        for match in CANARY_PATTERN.finditer(text):
            owner = self._owners.get(match.group())
            if owner is not None:
                yield match.group(), owner, match.start()

    def canaries_in(self, text: str) -> frozenset[str]:
        return frozenset(canary for canary, _, _ in self.scan(text))


@attrs.frozen
class Violation:
    """Evidence that one user's data or control reached another user."""

    user: str
    kind: str
    evidence: str
    frame: int | None = None  # 1-based, over every frame this user received
    connection: int | None = None  # 1-based, this user's connections in order
    run_id: str | None = None
    owner: str | None = None  # the other user whose data or run it was, when known

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class Anomaly:
    """A protocol oddity that is not an isolation violation by itself."""

    user: str
    kind: str
    detail: str
    frame: int | None = None
    connection: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class Observed:
    """What one received frame turned out to be."""

    index: int
    frame: Frame | None  # None: not a JSON object
    type: str | None
    run_id: str | None = None
    tag: str | None = None  # the sent message this frame answered (agent_started or refusal)
    terminal: bool = False
    ref: str | None = None


@attrs.frozen
class LedgerCounts:
    frames: int
    connections: int
    sent: int
    started: int
    rejected: int
    lost: int  # sent, but the connection ended before any answer
    completed: int
    cancelled: int
    errored: int
    interrupted: int  # started, but the connection ended before the terminal event
    cancels_sent: int
    duplicates: int = 0  # messages answered duplicate_message
    lookups: int = 0  # history, threads and resume requests sent


@attrs.define
class _Send:
    tag: str
    client_id: str
    thread_id: str | None
    canaries: frozenset[str]
    connection: int = 0


@attrs.define
class _Run:
    run_id: str
    tag: str
    thread_id: str
    connection: int
    canaries: frozenset[str]
    client_id: str | None = None
    last_seq: int = 1
    terminal: str | None = None
    cancel_sent: bool = False


@attrs.define
class _Connection:
    number: int
    frames: int = 0
    ready: bool = False
    pending: dict[str, deque[_Send]] = attrs.field(factory=dict)
    runs: list[str] = attrs.field(factory=list)
    unattributed_refusals: int = 0  # rate_limited errors without a ref


@request_scoped
class UserLedger:
    """What one user sent and received, judged frame by frame.

    Call :meth:`begin_connection` for each connection, :meth:`sent_message` /
    :meth:`sent_cancel` *before* sending, :meth:`observe` for each received frame,
    :meth:`end_connection` when a connection ends, and :meth:`finish` at the end.
    At most ``max_findings`` violations and anomalies are kept; all are counted.
    """

    def __init__(self, user: str, canaries: CanaryIndex, *, max_findings: int = 200) -> None:
        self.user = user
        self._index = canaries
        self._max = max_findings
        self._violations: list[Violation] = []
        self._anomalies: list[Anomaly] = []
        self.violation_count = 0
        self.anomaly_count = 0
        self._frames = 0
        self._conn: _Connection | None = None
        self._connections = 0
        self._runs: dict[str, _Run] = {}
        self._client_ids: set[str] = set()
        self._sent_ids: set[str] = set()  # ids this user put in a cancel
        self._echo_ok: set[str] = set()  # canaries this user sent itself
        self._connection_ids: list[str] = []
        self._threads_sent: set[str] = set()
        self._threads_assigned: set[str] = set()
        #: Messages pending on connections that ended: another connection of this user
        #: following the thread may still be told of their runs.
        self._lost_sends: dict[str, deque[_Send]] = {}
        #: Run ids named in history pages, thread lists and message_accepted, and thread
        #: ids listed: judged across users at the end (another user's is a leak).
        self._named_runs: dict[str, str] = {}  # run_id -> evidence
        self._listed_threads: dict[str, str] = {}  # thread_id -> evidence
        self._n = {"sent": 0, "rejected": 0, "lost": 0, "cancels": 0, "dup": 0, "lookups": 0}
        self._terminals = {kind: 0 for kind in TERMINAL_TYPES}

    # -- results ------------------------------------------------------------------

    @property
    def violations(self) -> tuple[Violation, ...]:
        return tuple(self._violations)

    @property
    def anomalies(self) -> tuple[Anomaly, ...]:
        return tuple(self._anomalies)

    @property
    def frames(self) -> int:
        return self._frames

    def counts(self) -> LedgerCounts:
        return LedgerCounts(
            frames=self._frames,
            connections=self._connections,
            sent=self._n["sent"],
            started=len(self._runs),
            rejected=self._n["rejected"],
            lost=self._n["lost"],
            completed=self._terminals["agent_completed"],
            cancelled=self._terminals["run_cancelled"],
            errored=self._terminals["agent_error"],
            interrupted=sum(run.terminal is None for run in self._runs.values()),
            cancels_sent=self._n["cancels"],
            duplicates=self._n["dup"],
            lookups=self._n["lookups"],
        )

    @property
    def connection_ids(self) -> tuple[str, ...]:
        """The connection_id of each connection_ready received, in order."""
        return tuple(self._connection_ids)

    @property
    def threads_sent(self) -> frozenset[str]:
        return frozenset(self._threads_sent)

    @property
    def threads_assigned(self) -> frozenset[str]:
        """thread_ids the server chose for this user's runs (it sent none)."""
        return frozenset(self._threads_assigned)

    @property
    def threads_used(self) -> frozenset[str]:
        """Every thread id this user sent or was given."""
        return frozenset(self._threads_sent | self._threads_assigned)

    @property
    def named_runs(self) -> Mapping[str, str]:
        """Run ids this user was told of outside its own runs' events (history, lists,
        message_accepted), with the evidence; another user's is a leak."""
        return MappingProxyType(dict(self._named_runs))

    @property
    def listed_threads(self) -> Mapping[str, str]:
        """Thread ids a thread list gave this user that it never used, with the evidence."""
        return MappingProxyType(dict(self._listed_threads))

    def run_ids(self) -> frozenset[str]:
        return frozenset(self._runs)

    def terminal_of(self, run_id: str) -> str | None:
        run = self._runs.get(run_id)
        return None if run is None else run.terminal

    def thread_of(self, run_id: str) -> str | None:
        run = self._runs.get(run_id)
        return None if run is None else run.thread_id

    def add_violation(self, violation: Violation) -> None:
        """Record a violation found outside this ledger (cross-user checks of the auditor)."""
        self.violation_count += 1
        if len(self._violations) < self._max:
            self._violations.append(violation)

    def add_anomaly(self, kind: str, detail: str) -> None:
        """Record an anomaly seen outside this ledger (close codes, timeouts, ...)."""
        self._anomaly(kind, detail)

    def _violation(
        self,
        kind: str,
        detail: str,
        text: str | None = None,
        *,
        position: int | None = None,
        run_id: str | None = None,
        owner: str | None = None,
        connection: int | None = None,
    ) -> None:
        conn = connection if connection is not None else self._conn.number if self._conn else None
        where = f"conn {conn} frame {self._frames}" if text is not None else f"conn {conn} end"
        shown = f" | {excerpt(text, position)}" if text is not None else ""
        frame = self._frames if text is not None else None
        evidence = f"{self.user} {where}: [{kind}] {detail}{shown}"
        self.add_violation(Violation(self.user, kind, evidence, frame, conn, run_id, owner))

    def _anomaly(
        self, kind: str, detail: str, text: str | None = None, *, connection: int | None = None
    ) -> None:
        self.anomaly_count += 1
        if len(self._anomalies) < self._max:
            conn = (
                connection if connection is not None else self._conn.number if self._conn else None
            )
            shown = f" | {excerpt(text)}" if text is not None else ""
            frame = self._frames if text is not None else None
            self._anomalies.append(Anomaly(self.user, kind, detail + shown, frame, conn))

    # -- what the user did ----------------------------------------------------------

    def begin_connection(self) -> int:
        """Start judging a new connection (ending the current one as lost); returns its number."""
        if self._conn is not None:
            self.end_connection(lost=True)
        self._connections += 1
        self._conn = _Connection(self._connections)
        return self._connections

    def sent_message(
        self, *, client_id: str, text: str, thread_id: str | None = None, tag: str | None = None
    ) -> None:
        """The user is sending a ``user_message``; ``tag`` names it in :class:`Observed`."""
        conn = self._require_connection()
        canaries = self._index.canaries_in(" ".join((text, client_id, thread_id or "")))
        self._echo_ok.update(canaries)
        self._client_ids.add(client_id)
        if thread_id is not None:
            self._threads_sent.add(thread_id)
        send = _Send(tag or client_id, client_id, thread_id, canaries, conn.number)
        conn.pending.setdefault(client_id, deque()).append(send)
        self._n["sent"] += 1

    def sent_cancel(self, run_id: str) -> None:
        """The user is sending ``cancel`` for ``run_id`` (its own, or a probe of another's)."""
        self._require_connection()
        self._n["cancels"] += 1
        self._sent_ids.add(run_id)
        self._echo_ok.update(self._index.canaries_in(run_id))
        run = self._runs.get(run_id)
        if run is not None:
            run.cancel_sent = True

    def sent_lookup(self, thread_id: str | None = None) -> None:
        """The user is sending ``history``, ``threads`` or ``resume`` (of ``thread_id``).

        The answer echoes the thread id: its canaries are this user's to see.
        """
        self._require_connection()
        self._n["lookups"] += 1
        if thread_id is not None:
            self._echo_ok.update(self._index.canaries_in(thread_id))

    def _require_connection(self) -> _Connection:
        if self._conn is None:
            raise RuntimeError("begin_connection() first")
        return self._conn

    # -- what the user received --------------------------------------------------------

    def observe(self, text: str) -> Observed:
        """Judge one received text frame."""
        conn = self._require_connection()
        self._frames += 1
        conn.frames += 1
        index = self._frames
        for canary, owner, position in self._index.scan(text):
            if owner.user != self.user and canary not in self._echo_ok:
                self._violation(
                    "foreign-canary",
                    f"carries {owner.user}'s {owner.role} canary {canary}",
                    text,
                    position=position,
                    owner=owner.user,
                )
        try:
            frame = json.loads(text)
        except (ValueError, RecursionError):
            frame = None
        kind = frame.get("type") if isinstance(frame, dict) else None
        if not isinstance(frame, dict) or not isinstance(kind, str):
            self._anomaly("bad-frame", "not a JSON object with a string type", text)
            return Observed(index, None, None)
        if conn.frames == 1 and kind != "connection_ready":
            self._anomaly("ready-not-first", f"first frame is {kind!r}", text)
        if kind in RUN_EVENT_TYPES:
            return self._run_event(index, frame, kind, text)
        if kind == "duplicate_message":
            return self._duplicate(index, conn, frame, text)
        if kind == "message_accepted":
            self._accepted(frame, text)
        elif kind == "history_page":
            self._history(frame, text)
        elif kind == "thread_list":
            self._thread_list(frame, text)
        elif kind == "connection_ready":
            self._ready(conn, frame, text)
        elif kind == "error":
            return self._error(index, conn, frame, text)
        elif kind not in _CONNECTION_TYPES and kind not in LOOKUP_TYPES:
            self._anomaly("unknown-type", f"frame type {kind!r}", text)
        return Observed(index, frame, kind)

    def _ready(self, conn: _Connection, frame: Frame, text: str) -> None:
        if conn.ready:
            self._anomaly("duplicate-ready", "a second connection_ready", text)
        conn.ready = True
        user_id = frame.get("user_id")
        if user_id is None:
            self._anomaly("no-user-id", "connection_ready without user_id", text)
        elif user_id != self.user:
            owner = user_id if isinstance(user_id, str) else None
            self._violation("wrong-user", f"connection_ready for {user_id!r}", text, owner=owner)
        connection_id = frame.get("connection_id")
        if isinstance(connection_id, str):
            self._connection_ids.append(connection_id)

    def _error(self, index: int, conn: _Connection, frame: Frame, text: str) -> Observed:
        ref = frame.get("ref")
        if frame.get("code") == "rate_limited":
            self._anomaly("rate-limited", "the server rate-limited this user", text)
            if ref is None:
                conn.unattributed_refusals += 1
        if ref is None:
            return Observed(index, frame, "error")
        if not isinstance(ref, str):
            self._violation("foreign-ref", f"error with a non-string ref {ref!r}", text)
            return Observed(index, frame, "error")
        if ref in self._sent_ids or ref in self._runs:
            return Observed(index, frame, "error", ref=ref)
        queue = conn.pending.get(ref)
        if queue:
            send = queue.popleft()
            self._n["rejected"] += 1
            return Observed(index, frame, "error", tag=send.tag, ref=ref)
        if ref in self._client_ids:
            self._anomaly("unpaired-error", f"error for client_id {ref} with nothing pending", text)
        else:
            detail = f"error refers to {ref!r}, never sent here"
            self._violation("foreign-ref", detail, text, run_id=ref)
        return Observed(index, frame, "error", ref=ref)

    def _run_event(self, index: int, frame: Frame, kind: str, text: str) -> Observed:
        run_id = frame.get("run_id")
        if not isinstance(run_id, str):
            self._anomaly("bad-frame", f"{kind} without a string run_id", text)
            return Observed(index, frame, kind)
        if kind == "agent_started":
            return self._started(index, frame, run_id, text)
        run = self._runs.get(run_id)
        if run is None:
            self._violation(
                "foreign-run", f"{kind} of run {run_id} never announced here", text, run_id=run_id
            )
            return Observed(index, frame, kind, run_id)
        # An event of a run of an earlier connection of this user is fine: a connection
        # following a thread gets the events of every run of the user on it.
        if run.terminal is not None:
            detail = f"{kind} of run {run_id} after its {run.terminal}"
            self._violation("after-terminal", detail, text, run_id=run_id)
            return Observed(index, frame, kind, run_id)
        thread_id = frame.get("thread_id")
        if thread_id != run.thread_id:
            self._violation(
                "foreign-thread",
                f"{kind} of run {run_id} on thread {thread_id!r}, the run is on {run.thread_id!r}",
                text,
                run_id=run_id,
            )
        seq = frame.get("seq")
        if seq != run.last_seq + 1 or isinstance(seq, bool):
            self._violation(
                "seq", f"run {run_id}: seq {seq!r} after {run.last_seq}", text, run_id=run_id
            )
        if isinstance(seq, int) and not isinstance(seq, bool):
            run.last_seq = max(run.last_seq, seq)
        self._crosstalk(run, text)
        terminal = kind in TERMINAL_TYPES
        if terminal:
            self._terminal(run, frame, kind, text)
        return Observed(index, frame, kind, run_id, run.tag, terminal)

    def _started(self, index: int, frame: Frame, run_id: str, text: str) -> Observed:
        assert self._conn is not None
        client_id = frame.get("client_id")
        thread = frame.get("thread_id")
        send = self._take(self._conn.pending, client_id, thread)
        relayed = send is None
        if relayed:  # a message of an earlier connection, relayed through its thread
            send = self._take(self._lost_sends, client_id, thread, strict=True)
        if run_id in self._runs:
            self._violation(
                "duplicate-run-id", f"agent_started reuses run_id {run_id}", text, run_id=run_id
            )
            return Observed(index, frame, "agent_started", run_id)
        if send is None:
            self._violation(
                "foreign-start",
                f"agent_started of run {run_id} for client_id {client_id!r}, "
                "no message of this user waits for it",
                text,
                run_id=run_id,
            )
            return Observed(index, frame, "agent_started", run_id)
        if relayed:
            self._n["lost"] -= 1  # counted lost when its connection ended; it did start
        seq = frame.get("seq")
        if seq != 1 or isinstance(seq, bool):
            self._violation("seq", f"agent_started with seq {seq!r}", text, run_id=run_id)
        thread_id = frame.get("thread_id")
        if not isinstance(thread_id, str):
            detail = f"agent_started without a thread_id: {thread_id!r}"
            self._violation("foreign-thread", detail, text, run_id=run_id)
            thread_id = str(thread_id)
        elif send.thread_id is not None and thread_id != send.thread_id:
            self._violation(
                "foreign-thread",
                f"run {run_id} on thread {thread_id!r}, this user sent {send.thread_id!r}",
                text,
                run_id=run_id,
            )
        elif send.thread_id is None:
            self._threads_assigned.add(thread_id)
        run = _Run(run_id, send.tag, thread_id, send.connection, send.canaries, send.client_id)
        self._runs[run_id] = run
        if not relayed:  # a relayed run is its own connection's to finish, not this one's
            self._conn.runs.append(run_id)
        return Observed(index, frame, "agent_started", run_id, None if relayed else send.tag)

    @staticmethod
    def _take(
        pending: dict[str, deque[_Send]], client_id: object, thread: object, *, strict: bool = False
    ) -> _Send | None:
        """The pending send ``client_id``'s answer on ``thread`` answers: the first on that
        thread, else the first leaving the thread to the server; else (unless ``strict``)
        the first at all (its thread is then wrong: a violation)."""
        queue = pending.get(client_id) if isinstance(client_id, str) else None
        if not queue:
            return None
        for wanted in (thread, None):
            for send in queue:
                if send.thread_id == wanted:
                    queue.remove(send)
                    return send
        return None if strict else queue.popleft()

    # -- the thread frames ------------------------------------------------------------

    def _duplicate(self, index: int, conn: _Connection, frame: Frame, text: str) -> Observed:
        """``duplicate_message``: the answer to a message whose client_id the thread has."""
        client_id, run_id, thread = (
            frame.get("client_id"),
            frame.get("run_id"),
            frame.get("thread_id"),
        )
        send = self._take(conn.pending, client_id, thread)
        if send is None:
            if client_id in self._client_ids:
                self._anomaly("unpaired-error", f"duplicate_message for {client_id!r}", text)
            else:
                detail = f"duplicate_message for client_id {client_id!r}, never sent here"
                self._violation("foreign-ref", detail, text)
            return Observed(index, frame, "duplicate_message")
        self._n["dup"] += 1
        run = self._runs.get(run_id) if isinstance(run_id, str) else None
        if run is None:
            self._violation(
                "foreign-duplicate",
                f"message {send.tag} (client_id {client_id!r}) answered as a duplicate of run "
                f"{run_id!r}, which this user never had",
                text,
                run_id=run_id if isinstance(run_id, str) else None,
            )
        elif run.thread_id != thread or run.client_id != client_id:
            detail = (
                f"duplicate_message names run {run_id} of thread {run.thread_id!r} "
                f"(client_id {run.client_id!r}) for a message on {thread!r}"
            )
            self._anomaly("duplicate-mismatch", detail, text)
        return Observed(index, frame, "duplicate_message", tag=send.tag)

    def _own_thread(self, thread: object) -> bool:
        return thread in self._threads_sent or thread in self._threads_assigned

    def _accepted(self, frame: Frame, text: str) -> None:
        """``message_accepted`` of a message this user sent on another connection."""
        thread, client_id, run_id = (
            frame.get("thread_id"),
            frame.get("client_id"),
            frame.get("run_id"),
        )
        if not self._own_thread(thread) or (
            client_id is not None and client_id not in self._client_ids
        ):
            detail = f"message_accepted on thread {thread!r} for client_id {client_id!r}"
            self._violation(
                "foreign-message", detail, text, run_id=run_id if isinstance(run_id, str) else None
            )
        if isinstance(run_id, str) and run_id not in self._runs:
            self._named_runs.setdefault(run_id, f"{self.user}: message_accepted of run {run_id}")

    def _history(self, frame: Frame, text: str) -> None:
        """``history_page``: every event is of the page's thread; its runs are judged later."""
        thread = frame.get("thread_id")
        events = frame.get("events")
        for event in events if isinstance(events, list) else ():
            if not isinstance(event, Mapping):
                self._anomaly("bad-frame", "a history event that is not an object", text)
                continue
            if event.get("thread_id") != thread:
                detail = f"history of {thread!r} holds an event of {event.get('thread_id')!r}"
                self._violation("foreign-history", detail, text)
            run_id = event.get("run_id")
            if isinstance(run_id, str) and run_id not in self._runs:
                evidence = f"{self.user}: history of {thread!r} holds run {run_id}"
                self._named_runs.setdefault(run_id, evidence)

    def _thread_list(self, frame: Frame, text: str) -> None:
        threads = frame.get("threads")
        for item in threads if isinstance(threads, list) else ():
            thread = item.get("thread_id") if isinstance(item, Mapping) else None
            if not isinstance(thread, str):
                self._anomaly("bad-frame", "a thread list entry without a thread_id", text)
            elif not self._own_thread(thread):
                evidence = (
                    f"{self.user}: [foreign-history] thread list names {thread!r} | {excerpt(text)}"
                )
                self._listed_threads.setdefault(thread, evidence)

    def _crosstalk(self, run: _Run, text: str) -> None:
        for canary, owner, _ in self._index.scan(text):
            if (
                owner.user == self.user
                and owner.role.startswith("run ")
                and (canary not in run.canaries)
            ):
                self._anomaly(
                    "run-crosstalk", f"run {run.run_id} carries the canary of {owner.role}", text
                )

    def _terminal(self, run: _Run, frame: Frame, kind: str, text: str) -> None:
        run.terminal = kind
        self._terminals[kind] += 1
        if kind == "agent_error":
            self._anomaly("agent-error", f"run {run.run_id} failed", text)
        elif kind == "run_cancelled" and not run.cancel_sent:
            reason = frame.get("reason")
            if reason == "server_shutdown":
                self._anomaly("server-cancel", f"run {run.run_id} cancelled: {reason}", text)
            else:
                self._violation(
                    "unrequested-cancel",
                    f"run {run.run_id} cancelled ({reason!r}) but this user never cancelled it",
                    text,
                    run_id=run.run_id,
                )

    # -- the end -----------------------------------------------------------------------

    def end_connection(self, *, lost: bool) -> None:
        """The current connection ended; ``lost``: dropped or closed before its work was done.

        On a lost connection unfinished runs and unanswered messages are counted, not
        reported; on one that ended normally each is a violation.
        """
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        number = conn.number
        # A connection lost before its first frame: the auditor reports why it failed.
        if not conn.ready and (conn.frames or not lost):
            self._anomaly("no-ready", "the connection had no connection_ready", connection=number)
        unanswered = [send for queue in conn.pending.values() for send in queue]
        unfinished = [rid for rid in conn.runs if self._runs[rid].terminal is None]
        if lost:
            self._n["lost"] += len(unanswered)
            for send in unanswered:
                self._lost_sends.setdefault(send.client_id, deque()).append(send)
            return
        excused = conn.unattributed_refusals
        for send in unanswered:
            detail = f"message {send.tag} (client_id {send.client_id}) never answered"
            if excused > 0:  # perhaps refused by a rate_limited error that named nothing
                excused -= 1
                self._anomaly("rate-limited", f"{detail}; a rate_limited error had no ref")
                continue
            self._violation("no-answer", detail, connection=number)
        for run_id in unfinished:
            detail = f"run {run_id} never ended"
            self._violation("no-terminal", detail, run_id=run_id, connection=number)

    def finish(self, connection_ended: bool) -> tuple[Violation, ...]:
        """End the current connection (``connection_ended``: it was lost) and return all
        violations kept."""
        self.end_connection(lost=connection_ended)
        return self.violations
