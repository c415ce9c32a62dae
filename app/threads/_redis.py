"""The ``redis`` backend: thread logs in Redis Streams, shared by several server processes.

Key layout (every key starts with ``prefix``, default ``enclave``; a user id may hold
``:``, so it is written after its length, ``{len(user_id)}:{user_id}``, which makes
``("a", "b:c")`` and ``("a:b", "c")`` different keys; ``len`` counts code points):

- ``{prefix}:s:{len}:{user}:{thread}`` -- the thread's stream. Entry ids are
  ``{thread_seq}-0``; fields ``k`` kind, ``r`` run id, ``c`` client id (``""`` for
  none), ``x`` the text, ``a`` the time (``repr`` of the float).
- ``{prefix}:m:…`` -- hash ``last_seq``, ``updated_at``: survives its entries.
- ``{prefix}:c:…`` -- hash ``client_id -> run_id`` of the retained user messages.
- ``{prefix}:r:…`` -- hash ``run_id -> text of its last entry`` of the open runs (no
  terminal event); ``{prefix}:l:…`` -- hash ``run_id -> thread_seq of that entry``, to
  forget a run whose entries were all trimmed.
- ``{prefix}:o:…`` -- string: the worker that owns the thread (see :meth:`RedisBackend.claim`).
- ``{prefix}:u:{len}:{user}`` -- sorted set of the user's threads holding entries, scored
  by ``updated_at``.
- ``{prefix}:x`` -- sorted set of ``{len}:{user}:{thread}`` scored by the time of the
  thread's oldest entry (or earlier): what :meth:`RedisBackend.prune` visits.
- ``{prefix}:w:{worker_id}`` -- a worker's heartbeat (``1``, with a time to live).
- ``{prefix}:f:…`` -- ``1`` with a time to live: a client of some process follows the
  thread (its owner keeps a run whose own client left).
- ``{prefix}:cancels`` -- a stream of ``u`` user, ``t`` thread, ``r`` run: cancels asked
  of the runs of other processes (capped at :data:`CANCELS_MAXLEN`).
- ``{prefix}:epoch`` -- random hex, ``SET NX`` when a backend opens: a store that lost
  its data (flushed, a new server) gets a new one.

Every call is one round trip: a single command, or a Lua script (atomic). The scripts
build keys from the prefix too, so the backend needs one Redis (not Redis Cluster),
version 6.2 or later (``XTRIM MINID``). Durability is Redis's: with ``appendonly yes``
and ``appendfsync everysec`` an acknowledged append survives a Redis crash but for the
last second; without persistence, a Redis restart loses everything (a new epoch).

Entries' times are expected to rise within a thread (as :mod:`app.threads._memory`
expects): TTL pruning drops a thread's entries from its oldest while they are expired.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final, cast

import coredis
import coredis.exceptions
import trio
from coredis.response.types import StreamEntry

from . import _redis_lua as lua
from ._backend import Entry, Retention, ThreadHead, ThreadSummary
from ._common import (
    NotOwner,
    SeqConflict,
    StoreConfigError,
    StoreLost,
    ThreadKey,
    check_limit,
)

__all__ = [
    "DEFAULT_PREFIX",
    "RedisBackend",
    "cancels_key",
    "client_ids_key",
    "connected_redis",
    "epoch_key",
    "followed_key",
    "meta_key",
    "open_redis",
    "open_runs_key",
    "owner_key",
    "prune_index_key",
    "run_seqs_key",
    "stream_key",
    "thread_ident",
    "threads_key",
    "worker_key",
]

DEFAULT_PREFIX: Final = "enclave"

#: How long opening may take to reach Redis and read the epoch.
OPEN_TIMEOUT_S: Final = 5.0
#: The longest a command of a server's client may wait for its reply: above the blocking
#: reads' own waits, so that those end by themselves.
CLIENT_TIMEOUT_S: Final = 10.0

#: Entries one prune script drops at most, and threads it visits: Redis runs one script
#: at a time, so appends of other processes wait for one chunk, not all.
PRUNE_CHUNK: Final = 5000
PRUNE_THREADS: Final = 200

#: Cancels asked through the store that are kept for the owners to read (approximately).
CANCELS_MAXLEN: Final = 10_000

#: The largest count or rank passed to Redis (a signed 64-bit integer, with room).
_MAX_COUNT: Final = 2**62
#: The largest ``thread_seq`` a stream id holds (its unsigned 64-bit first part).
_MAX_ID: Final = 2**64 - 1


# -- the key layout: pure functions ---------------------------------------------------


def user_ident(user_id: str) -> str:
    """``{len}:{user}``: a user id that cannot run into what follows it."""
    return f"{len(user_id)}:{user_id}"


def thread_ident(user_id: str, thread_id: str) -> str:
    """``{len}:{user}:{thread}``: one thread, unambiguously."""
    return f"{len(user_id)}:{user_id}:{thread_id}"


def _thread_key(prefix: str, kind: str, user_id: str, thread_id: str) -> str:
    return f"{prefix}:{kind}:{len(user_id)}:{user_id}:{thread_id}"


def stream_key(prefix: str, user_id: str, thread_id: str) -> str:
    """The thread's stream of entries."""
    return _thread_key(prefix, "s", user_id, thread_id)


def meta_key(prefix: str, user_id: str, thread_id: str) -> str:
    """The thread's hash of ``last_seq`` and ``updated_at``."""
    return _thread_key(prefix, "m", user_id, thread_id)


def client_ids_key(prefix: str, user_id: str, thread_id: str) -> str:
    """The thread's hash ``client_id -> run_id``."""
    return _thread_key(prefix, "c", user_id, thread_id)


def open_runs_key(prefix: str, user_id: str, thread_id: str) -> str:
    """The thread's hash ``run_id -> text of its last entry`` of the open runs."""
    return _thread_key(prefix, "r", user_id, thread_id)


def run_seqs_key(prefix: str, user_id: str, thread_id: str) -> str:
    """The thread's hash ``run_id -> thread_seq of its last entry`` of the open runs."""
    return _thread_key(prefix, "l", user_id, thread_id)


def owner_key(prefix: str, user_id: str, thread_id: str) -> str:
    """The worker that claimed the thread."""
    return _thread_key(prefix, "o", user_id, thread_id)


def threads_key(prefix: str, user_id: str) -> str:
    """The user's sorted set of thread ids by ``updated_at``."""
    return f"{prefix}:u:{user_ident(user_id)}"


def prune_index_key(prefix: str) -> str:
    """The sorted set of threads by the time of their oldest entry."""
    return f"{prefix}:x"


def worker_key(prefix: str, worker_id: str) -> str:
    """A worker's heartbeat."""
    return f"{prefix}:w:{worker_id}"


def followed_key(prefix: str, user_id: str, thread_id: str) -> str:
    """``1`` while a client of some process follows the thread (with a time to live)."""
    return _thread_key(prefix, "f", user_id, thread_id)


def cancels_key(prefix: str) -> str:
    """The stream of cancels asked of the runs of other processes."""
    return f"{prefix}:cancels"


def epoch_key(prefix: str) -> str:
    """The store's epoch."""
    return f"{prefix}:epoch"


def _head_keys(prefix: str, user_id: str, thread_id: str) -> list[str]:
    return [
        meta_key(prefix, user_id, thread_id),
        stream_key(prefix, user_id, thread_id),
        client_ids_key(prefix, user_id, thread_id),
        open_runs_key(prefix, user_id, thread_id),
    ]


def _redacted(url: str) -> str:
    """``url`` without its password."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port is not None else ""
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}{host}{port}"))


# -- opening ---------------------------------------------------------------------------


async def open_redis(
    target: str | coredis.Redis[str],
    retention: Retention,
    *,
    prefix: str = DEFAULT_PREFIX,
    worker_id: str | None = None,
    contiguous: bool = True,
) -> RedisBackend:
    """A backend on the Redis at ``target``: a ``redis://`` / ``rediss://`` URL (the
    backend makes its own client, closed by :meth:`RedisBackend.aclose`) or a client
    the caller entered (``async with client``) and closes itself. Reads the epoch,
    setting it if the store has none.

    Raises :class:`~app.threads.StoreConfigError` when Redis cannot be reached within
    :data:`OPEN_TIMEOUT_S`. Cancellation: nothing is left open (a client of ours is
    closed).
    """
    host: _ClientHost | None = None
    if isinstance(target, str):
        where = _redacted(target)
        try:
            client: coredis.Redis[str] = coredis.Redis.from_url(target, decode_responses=True)
        except (ValueError, coredis.exceptions.RedisError) as exc:
            raise StoreConfigError(f"bad Redis URL {where!r}: {exc}") from exc
        await _probe(target, where)
        host = await _ClientHost.start(client)
    else:
        client, where = target, repr(target)
    try:
        with trio.fail_after(OPEN_TIMEOUT_S):
            epoch: Any = await client.register_script(lua.EPOCH)(
                keys=[epoch_key(prefix)], args=[secrets.token_hex(16)]
            )
        backend = RedisBackend(
            client,
            retention,
            epoch=str(epoch),
            prefix=prefix,
            worker_id=worker_id,
            contiguous=contiguous,
        )
    except BaseException as exc:
        if host is not None:
            await host.aclose()
        if isinstance(exc, (OSError, trio.TooSlowError, coredis.exceptions.RedisError)):
            raise StoreConfigError(f"cannot reach Redis at {where}: {exc or 'timed out'}") from exc
        raise
    backend._host = host
    return backend


@contextlib.asynccontextmanager
async def connected_redis(url: str) -> AsyncIterator[coredis.Redis[str]]:
    """A client of the Redis at ``url`` for the block: the one a server process shares
    between its thread store and its admission (``serve()`` holds it).

    Its connections live in a task of their own (see :class:`_ClientHost`): a server
    stopped by cancellation still commits its last events and gives back its users'
    places before the client closes, when the block ends. Raises
    :class:`~app.threads.StoreConfigError` when nothing answers at the address.
    Cancellation: the client is closed all the same.
    """
    where = _redacted(url)
    try:
        client: coredis.Redis[str] = coredis.Redis.from_url(
            url, decode_responses=True, stream_timeout=CLIENT_TIMEOUT_S
        )
    except (ValueError, coredis.exceptions.RedisError) as exc:
        raise StoreConfigError(f"bad Redis URL {where!r}: {exc}") from exc
    await _probe(url, where)
    host = await _ClientHost.start(client)
    try:
        yield client
    finally:
        await host.aclose()


async def _probe(url: str, where: str) -> None:
    """Raise :class:`StoreConfigError` unless something listens at the URL's address.

    Checked with a plain socket first: a coredis connection that fails to connect
    leaves its buffers unclosed (a ``ResourceWarning`` each).
    """
    parts = urllib.parse.urlsplit(url)
    try:
        with trio.fail_after(OPEN_TIMEOUT_S):
            stream = await trio.open_tcp_stream(parts.hostname or "localhost", parts.port or 6379)
            await stream.aclose()
    except (OSError, ValueError, trio.TooSlowError) as exc:
        raise StoreConfigError(f"cannot reach Redis at {where}: {exc or 'timed out'}") from exc


class _ClientHost:
    """A coredis client kept entered in a system task of its own.

    coredis runs a client's connections in a task group that must be left in the task
    and at the cancel-scope depth it was entered at; a backend is opened in one place
    and closed in another (:meth:`ThreadLogs.aclose` shields the call), so the group
    lives in a task of its own, told to stop by :meth:`aclose`. If the group fails (a
    connection task's error), the task ends and the client's commands raise from then on.
    """

    def __init__(self, client: coredis.Redis[str]) -> None:
        self.client = client
        self._entered = trio.Event()
        self._stop = trio.Event()
        self._done = trio.Event()

    @classmethod
    async def start(cls, client: coredis.Redis[str]) -> _ClientHost:
        host = cls(client)
        # The store serves the whole server, not one connection; it ends with aclose().
        trio.lowlevel.spawn_system_task(  # isolation: allow ISO108 -- process-wide store client
            host._run, name=f"redis client {client!r}"
        )
        with trio.CancelScope(shield=True):  # at once: entering makes no connection
            await host._entered.wait()
        return host

    async def _run(self) -> None:
        try:
            async with self.client:
                self._entered.set()
                await self._stop.wait()
        # A system task must not raise (it would crash the run); its client's callers
        # get the errors of its commands.
        except BaseException:
            pass
        finally:
            self._entered.set()
            self._done.set()

    async def aclose(self) -> None:
        """Stop the task and wait for its connections to close. Cancellation: shielded."""
        self._stop.set()
        with trio.CancelScope(shield=True):
            await self._done.wait()


class RedisBackend:
    """Thread logs in Redis; made by :func:`open_redis` (or given an entered client and
    the epoch it holds).

    ``append`` checks the batch against the store (see :meth:`append`), so several
    processes may share one Redis and ``prefix``. ``retention.max_events`` applies at
    append, ``ttl_s`` at :meth:`prune`. With ``contiguous`` (the default) a thread's
    entries must follow its ``last_seq`` without gaps, which also catches a Redis that
    lost its newest writes (a failover to a replica behind). Calls are not concurrent
    with each other (as every backend's), except :meth:`read_after` and
    :meth:`heartbeat`, which may run beside any. A cancelled call either happened whole
    (the script reached Redis) or not at all. After :meth:`aclose` every call raises
    :class:`trio.ClosedResourceError`.
    """

    def __init__(
        self,
        client: coredis.Redis[str],
        retention: Retention,
        *,
        epoch: str,
        prefix: str = DEFAULT_PREFIX,
        worker_id: str | None = None,
        contiguous: bool = True,
    ) -> None:
        if not client.decode_responses:
            raise ValueError("the Redis client must decode responses (decode_responses=True)")
        self.retention = retention
        self.prefix = prefix
        #: This process's name among the workers sharing the store.
        self.worker_id = worker_id or uuid.uuid4().hex
        self.contiguous = contiguous
        self._client = client
        self._epoch = epoch
        self._closed = False
        self._cancels_after: str | None = None  # the id of the last cancel read
        # The task keeping our own client open (None: the caller's client).
        self._host: _ClientHost | None = None
        self._append = client.register_script(lua.APPEND)
        self._head = client.register_script(lua.HEAD)
        self._claim = client.register_script(lua.CLAIM)
        self._release = client.register_script(lua.RELEASE)
        self._threads = client.register_script(lua.THREADS)
        self._prune = client.register_script(lua.PRUNE)

    @property
    def epoch(self) -> str:
        """Read (or set) in Redis when the backend opened."""
        return self._epoch

    @property
    def client(self) -> coredis.Redis[str]:
        return self._open_client()

    async def head(self, user_id: str, thread_id: str) -> ThreadHead:
        """Where the thread stands (one script: one snapshot)."""
        client = self._open_client()
        raw: Any = await self._head(keys=_head_keys(self.prefix, user_id, thread_id), client=client)
        return _head(raw)

    async def append(self, entries: Sequence[Entry]) -> None:
        """Write ``entries`` and apply ``max_events`` to their threads, in one script.

        Writes nothing, raising: :class:`ValueError` if a thread's ``thread_seq`` values
        do not rise in the batch (or, ``contiguous``, do not follow each other);
        :class:`~app.threads.SeqConflict` (a ``ValueError`` too) if a thread's first one
        does not follow the ``last_seq`` in Redis; :class:`~app.threads.NotOwner` if
        another live worker owns a thread; :class:`~app.threads.StoreLost` if the store's
        epoch is no longer this backend's. Cancellation: the script ran whole or not.
        """
        client = self._open_client()
        if not entries:
            await trio.lowlevel.checkpoint()
            return
        groups: dict[ThreadKey, list[Entry]] = {}
        for entry in entries:
            groups.setdefault((entry.user_id, entry.thread_id), []).append(entry)
        prefix = self.prefix
        keys = [epoch_key(prefix), prune_index_key(prefix)]
        args: list[str | int] = [
            self._epoch,
            self.worker_id,
            worker_key(prefix, ""),
            self.retention.max_events,
            1 if self.contiguous else 0,
            len(groups),
        ]
        for (user_id, thread_id), group in groups.items():
            self._check_order(group)
            keys += (
                stream_key(prefix, user_id, thread_id),
                meta_key(prefix, user_id, thread_id),
                client_ids_key(prefix, user_id, thread_id),
                open_runs_key(prefix, user_id, thread_id),
                run_seqs_key(prefix, user_id, thread_id),
                owner_key(prefix, user_id, thread_id),
                threads_key(prefix, user_id),
            )
            args += (user_id, thread_id, thread_ident(user_id, thread_id), len(group))
            for e in group:
                args += (
                    e.thread_seq,
                    e.kind,
                    e.run_id or "",
                    e.client_id or "",
                    e.text,
                    repr(float(e.at)),
                )
        reply: Any = await self._append(keys=keys, args=args, client=client)
        self._check_reply(reply)

    def _check_order(self, group: list[Entry]) -> None:
        for previous, entry in itertools.pairwise(group):
            step = entry.thread_seq - previous.thread_seq
            if step <= 0 or (self.contiguous and step != 1):
                rule = "not above" if step <= 0 else "not next to"
                raise ValueError(
                    f"thread_seq {entry.thread_seq} of thread {entry.thread_id!r} is {rule} "
                    f"its last seq {previous.thread_seq}"
                )

    def _check_reply(self, reply: Any) -> None:
        status = reply[0]
        if status == "ok":
            return
        if status == "epoch":
            raise StoreLost(
                f"the thread store's epoch is now {reply[1]!r}, not {self._epoch!r}: "
                "Redis lost the data (open the store again)"
            )
        user_id, thread_id = reply[1], reply[2]
        if status == "owner":
            raise NotOwner(
                f"thread {thread_id!r} of user {user_id!r} is owned by worker {reply[3]!r}",
                user_id=user_id,
                thread_id=thread_id,
                owner=reply[3],
            )
        last, seq = int(reply[3]), int(reply[4])
        rule = "not above" if seq <= last else "not next to"
        raise SeqConflict(
            f"thread_seq {seq} of thread {thread_id!r} is {rule} its last seq {last} "
            f"in the store (user {user_id!r}): another process wrote it, or the store lost it",
            user_id=user_id,
            thread_id=thread_id,
        )

    async def page(
        self, user_id: str, thread_id: str, before: int | None, limit: int
    ) -> tuple[list[Entry], bool]:
        """The newest ``limit`` entries below ``before``, oldest first, and whether
        older ones remain (one ``XREVRANGE``).
        """
        check_limit(limit)
        client = self._open_client()
        if before is not None and before <= 1:
            await trio.lowlevel.checkpoint()
            return [], False
        end = "+" if before is None or before - 1 >= _MAX_ID else str(before - 1)
        count = min(limit, _MAX_COUNT) + 1
        got = await client.xrevrange(stream_key(self.prefix, user_id, thread_id), end, "-", count)
        entries = [_entry(user_id, thread_id, e) for e in got]
        entries.reverse()
        if len(entries) > limit:
            return entries[1:], True
        return entries, False

    async def after(self, user_id: str, thread_id: str, after: int, limit: int) -> list[Entry]:
        """The oldest ``limit`` entries above ``after`` (one ``XRANGE``)."""
        check_limit(limit)
        client = self._open_client()
        if after >= _MAX_ID:
            await trio.lowlevel.checkpoint()
            return []
        start = "-" if after < 0 else str(after + 1)
        key = stream_key(self.prefix, user_id, thread_id)
        got = await client.xrange(key, start, "+", min(limit, _MAX_COUNT))
        return [_entry(user_id, thread_id, e) for e in got]

    async def threads(self, user_id: str, limit: int) -> list[ThreadSummary]:
        """The user's threads holding entries, newest update first (ties by thread id)."""
        check_limit(limit)
        client = self._open_client()
        prefix = self.prefix
        raw: Any = await self._threads(
            keys=[threads_key(prefix, user_id)],
            args=[f"{prefix}:m:{user_ident(user_id)}:", min(limit, _MAX_COUNT) - 1],
            client=client,
        )
        rows = [
            ThreadSummary(thread_id=raw[i], last_seq=int(raw[i + 1]), updated_at=float(raw[i + 2]))
            for i in range(0, len(raw), 3)
        ]
        rows.sort(key=lambda s: (-s.updated_at, s.thread_id))
        return rows[:limit]

    async def prune(self, now: float) -> int:
        """Drop the entries with ``at < now - ttl_s`` (none when ``ttl_s`` is 0), in
        scripts of at most :data:`PRUNE_CHUNK` entries so other writers are not held up.

        Cancellation: the chunks already run stay dropped; the rest is dropped by the
        next prune.
        """
        client = self._open_client()
        if self.retention.ttl_s <= 0:
            await trio.lowlevel.checkpoint()
            return 0
        cutoff = repr(float(now - self.retention.ttl_s))
        dropped = 0
        while True:
            reply: Any = await self._prune(
                keys=[prune_index_key(self.prefix)],
                args=[self.prefix, cutoff, PRUNE_CHUNK, PRUNE_THREADS],
                client=client,
            )
            dropped += int(reply[0])
            if reply[1] == "0":
                return dropped

    # -- several processes on one Redis ---------------------------------------------

    async def heartbeat(self, ttl_s: float) -> None:
        """Say this worker is alive for ``ttl_s`` seconds (``SET … PX``): its claims
        hold while it keeps saying so. Cancellation: set or not.
        """
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        client = self._open_client()
        await client.set(
            worker_key(self.prefix, self.worker_id), "1", px=max(1, round(ttl_s * 1000))
        )

    async def claim(self, user_id: str, thread_id: str) -> ThreadHead | str:
        """Own the thread: the id of another worker that owns it and is alive (its
        heartbeat stands), or else this worker is the owner now and the thread's head.
        Cancellation: claimed whole or not at all.
        """
        client = self._open_client()
        prefix = self.prefix
        reply: Any = await self._claim(
            keys=[owner_key(prefix, user_id, thread_id), *_head_keys(prefix, user_id, thread_id)],
            args=[self.worker_id, worker_key(prefix, "")],
            client=client,
        )
        if reply[0] == "held":
            return str(reply[1])
        return _head(reply[1])

    async def release(self, user_id: str, thread_id: str) -> None:
        """Stop owning the thread (nothing if another worker owns it).
        Cancellation: released or not.
        """
        client = self._open_client()
        await self._release(
            keys=[owner_key(self.prefix, user_id, thread_id)], args=[self.worker_id], client=client
        )

    async def read_after(
        self, cursors: Mapping[tuple[str, str], int], block_ms: int, count: int
    ) -> list[Entry]:
        """The entries above each thread's cursor (``(user_id, thread_id) -> thread_seq``),
        at most ``count`` per thread, waiting up to ``block_ms`` for the first (one
        ``XREAD BLOCK``; ``block_ms <= 0`` does not wait). ``[]`` when none came in time
        or ``cursors`` is empty. The blocking read holds a connection of its own: the
        backend's other calls go on meanwhile.

        Cancellation: nothing read is lost (the cursors did not move); the connection
        of the read is dropped.
        """
        check_limit(count)
        client = self._open_client()
        if not cursors:
            await trio.lowlevel.checkpoint()
            return []
        threads = {stream_key(self.prefix, u, t): (u, t) for u, t in cursors}
        streams = {
            stream_key(self.prefix, u, t): f"{min(max(seq, 0), _MAX_ID)}-0"
            for (u, t), seq in cursors.items()
        }
        got = await client.xread(
            streams, count=min(count, _MAX_COUNT), block=block_ms if block_ms > 0 else None
        )
        if not got:
            return []
        out: list[Entry] = []
        for key, messages in got.items():
            user_id, thread_id = threads[key]
            out += (_entry(user_id, thread_id, m) for m in messages)
        return out

    async def mark_followed(self, threads: Sequence[tuple[str, str]], ttl_s: float) -> None:
        """A client here follows ``threads`` for ``ttl_s`` more (one pipeline).
        Cancellation: marked or not."""
        client = self._open_client()
        px = max(1, round(ttl_s * 1000))
        async with client.pipeline(transaction=False) as pipe:
            for user_id, thread_id in threads:
                pipe.set(followed_key(self.prefix, user_id, thread_id), "1", px=px)

    async def followed(self, threads: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of ``threads`` a client follows now (one ``MGET``). Cancellation: nothing."""
        client = self._open_client()
        if not threads:
            await trio.lowlevel.checkpoint()
            return set()
        values = await client.mget([followed_key(self.prefix, u, t) for u, t in threads])
        return {key for key, value in zip(threads, values, strict=True) if value is not None}

    async def request_cancel(self, user_id: str, thread_id: str, run_id: str) -> None:
        """Ask the owner of the thread to cancel ``run_id``. Cancellation: asked or not."""
        client = self._open_client()
        await client.xadd(
            cancels_key(self.prefix),
            {"u": user_id, "t": thread_id, "r": run_id},
            trim_strategy=coredis.PureToken.MAXLEN,
            threshold=CANCELS_MAXLEN,
            trim_operator=coredis.PureToken.APPROXIMATELY,
        )

    async def read_cancels(self, block_ms: int) -> list[tuple[str, str, str]]:
        """The cancels asked since the last call (the first call starts from now),
        waiting up to ``block_ms`` for one. May run beside the other calls.
        Cancellation: nothing read is lost (the cursor did not move)."""
        client = self._open_client()
        key = cancels_key(self.prefix)
        after = self._cancels_after
        if after is None:
            last = await client.xrevrange(key, count=1)
            after = self._cancels_after = str(last[0].identifier) if last else "0-0"
        got = await client.xread({key: after}, count=100, block=block_ms if block_ms > 0 else None)
        out: list[tuple[str, str, str]] = []
        for message in (got or {}).get(key, ()):
            self._cancels_after = str(message.identifier)
            fields = message.field_values
            out.append((str(fields["u"]), str(fields["t"]), str(fields["r"])))
        return out

    async def aclose(self) -> None:
        """Close the client if this backend made it. Idempotent; shielded from
        cancellation so the connections are always released.
        """
        self._closed = True
        host, self._host = self._host, None
        if host is not None:
            await host.aclose()
        else:
            with trio.CancelScope(shield=True):
                await trio.lowlevel.checkpoint()

    def _open_client(self) -> coredis.Redis[str]:
        if self._closed:
            raise trio.ClosedResourceError("the thread store is closed")
        return self._client


def _entry(user_id: str, thread_id: str, message: StreamEntry) -> Entry:
    # The client decodes responses: every field is a str.
    fields = cast("Mapping[str, str]", message.field_values)
    return Entry(
        user_id,
        thread_id,
        int(str(message.identifier).partition("-")[0]),
        fields["k"],
        fields["r"] or None,
        fields["c"] or None,
        fields["x"],
        float(fields["a"]),
    )


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _head(raw: Any) -> ThreadHead:
    last_seq = int(raw[0])
    first_id: str = raw[1]
    return ThreadHead(
        last_seq=last_seq,
        first_seq=int(first_id.partition("-")[0]) if first_id else last_seq + 1,
        client_ids=_pairs(raw[2]),
        open_runs=_pairs(raw[3]),
    )
