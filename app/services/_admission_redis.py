"""Per-user admission shared by every server process through one Redis.

With several worker processes and machines behind a balancer, a limit kept in one
process's memory is N times too generous, and a cooling-down user just reconnects to
another process. :class:`RedisAdmission` keeps the same three limits as
:class:`~app.services._admission.MemoryAdmission` in Redis, with the same order of
checks, in **one Lua script, one round trip per handshake** (atomic: two processes
admitting the same user at once cannot both take its last slot).

Time is Redis's own (``TIME`` inside the scripts): every process shares one clock,
whatever the machines' clocks or their monotonic clocks say.

Keys (``prefix`` default ``enclave``, the thread store's; ``a`` is admission's kind
letter; the user id is length-prefixed, so a ``:`` in it cannot make two users share a key):

- ``{prefix}:a:{len(user)}:{user}:rate`` — hash ``t`` (tokens), ``u`` (updated, ms): the
  connect budget's token bucket. Expires once it would be full again (a full bucket and
  no key are the same).
- ``{prefix}:a:{len(user)}:{user}:ban`` — the abuse cool-down: a key with ``PX`` expiry.
- ``{prefix}:a:{len(user)}:{user}:conns`` — the user's open connections: a sorted set of
  connection ids scored by their lease's expiry (ms). Each process refreshes the leases
  of its own open connections every ``lease_s / 3`` in one batched script; a crashed
  process stops refreshing, so its connections stop counting after ``lease_s`` at most
  (the admit script drops expired members before it counts). The key itself expires
  ``lease_s`` after its last write.

If Redis cannot be reached within ``timeout_s`` a handshake is refused **503**
(:attr:`~app.services._admission.Refusal.UNAVAILABLE`): admitting blindly would switch
every limit off exactly when something is wrong. Upkeep that fails (a lease refresh, a
release, a cool-down) is logged once per outage and left to the leases.
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import attrs
import trio

from ..threads._redis import DEFAULT_PREFIX  # one prefix for the store and the admission
from ._admission import Admission, AdmissionLimits, MemoryAdmission, Refusal, Refused, Ticket
from ._settings import Settings

if TYPE_CHECKING:  # coredis takes a third of a second to import: only a Redis server pays it
    import coredis
    from coredis.commands.script import Script

__all__ = [
    "DEFAULT_PREFIX",
    "LEASE_S",
    "TIMEOUT_S",
    "RedisAdmission",
    "admission_keys",
    "build_admission",
]

#: How long an open connection counts without its process refreshing it (a crash's cost).
LEASE_S: Final = 15.0
#: The longest a handshake waits for Redis before its 503; also each upkeep call's bound.
TIMEOUT_S: Final = 1.0
#: Connections whose leases one refresh script renews (bounds how long Redis is busy).
REFRESH_BATCH: Final = 500
#: Cool-downs waiting to be written; more are dropped (logged): errs towards admitting.
MAX_PENDING_PENALTIES: Final = 1024

_T = TypeVar("_T")
_Arg = str | int | float


# KEYS: rate, ban, conns. ARGV: rate per s, burst, max open, connection id, lease ms.
# Returns {verdict, ms}: 0 admitted; 1 cooling down (ms left); 2 too fast (ms until a
# token); 3 too many open. Mirrors SubjectGuard / TokenBucket (a clock going backwards
# refills nothing).
_ADMIT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ban = redis.call('PTTL', KEYS[2])
if ban > 0 then return {1, ban} end
local max_open = tonumber(ARGV[3])
if max_open > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= max_open then return {3, 0} end
end
local rate = tonumber(ARGV[1])
if rate > 0 then
  local burst = tonumber(ARGV[2])
  local state = redis.call('HMGET', KEYS[1], 't', 'u')
  local tokens = tonumber(state[1]) or burst
  local updated = tonumber(state[2]) or now
  if now > updated then
    tokens = math.min(burst, tokens + (now - updated) * rate / 1000)
    updated = now
  end
  if tokens < 1 then return {2, math.ceil((1 - tokens) * 1000 / rate)} end
  tokens = tokens - 1
  redis.call('HSET', KEYS[1], 't', tokens, 'u', updated)
  redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1000)
end
if max_open > 0 then
  local lease = tonumber(ARGV[5])
  redis.call('ZADD', KEYS[3], now + lease, ARGV[4])
  redis.call('PEXPIRE', KEYS[3], lease)
end
return {0, 0}
"""

# KEYS: one conns key per connection. ARGV: lease ms, then the connection ids in order.
_REFRESH: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], lease)
end
return #KEYS
"""


def admission_keys(prefix: str, subject: str) -> tuple[str, str, str]:
    """``subject``'s keys: (connect budget, cool-down, open connections)."""
    base = f"{prefix}:a:{len(subject)}:{subject}"
    return f"{base}:rate", f"{base}:ban", f"{base}:conns"


@attrs.define
class RedisAdmission:
    """:class:`~app.services._admission.Admission` shared through Redis (see the module).

    ``client`` is used, not owned, unless ``owns_client``: then :meth:`run` opens it and
    closes it when it ends. Either way :meth:`run` must be running for the leases of this
    process's connections and for :meth:`penalize`.
    """

    client: coredis.Redis[Any]
    limits: AdmissionLimits
    prefix: str = DEFAULT_PREFIX
    lease_s: float = LEASE_S
    timeout_s: float = TIMEOUT_S
    log: logging.Logger = attrs.field(factory=lambda: logging.getLogger("enclave.admission"))
    owns_client: bool = False
    #: This process's open connections: connection id -> user, refreshed by :meth:`run`.
    _open: dict[str, str] = attrs.field(factory=dict, init=False)
    #: Users whose cool-down is queued but not yet written (refused here meanwhile).
    _pending: set[str] = attrs.field(factory=set, init=False)
    _penalties: trio.MemorySendChannel[str] = attrs.field(init=False)
    _penalties_out: trio.MemoryReceiveChannel[str] = attrs.field(init=False)
    _admit_script: Script[Any] = attrs.field(init=False)
    _refresh_script: Script[Any] = attrs.field(init=False)
    _errors: tuple[type[Exception], ...] = attrs.field(init=False)
    _reachable: bool = attrs.field(default=True, init=False)

    def __attrs_post_init__(self) -> None:
        self._penalties, self._penalties_out = trio.open_memory_channel[str](MAX_PENDING_PENALTIES)
        self._admit_script = self.client.register_script(_ADMIT)
        self._refresh_script = self.client.register_script(_REFRESH)
        from coredis.exceptions import RedisError  # loaded with the client already

        # A client closed under a stopping server raises RuntimeError; OSError: timeouts.
        self._errors = (RedisError, OSError, RuntimeError)

    @property
    def _lease_ms(self) -> int:
        return max(1, math.ceil(self.lease_s * 1000))

    def open_here(self) -> int:
        """How many connections this process holds open (and refreshes)."""
        return len(self._open)

    async def admit(self, subject: str) -> Ticket | Refused:
        """See :meth:`~app.services._admission.Admission.admit`: one script, at most
        ``timeout_s``; 503 (``UNAVAILABLE``) when Redis does not answer in time.

        Cancellation: a connection Redis counted before the cancel holds its place
        until its lease ends (it is never refreshed).
        """
        limits = self.limits
        if limits.connect_rate_per_s <= 0 and limits.max_open <= 0 and limits.abuse_cooldown_s <= 0:
            return Ticket(subject)  # every limit off: nothing to ask Redis
        if subject in self._pending:
            return Refused(limits.abuse_cooldown_s, Refusal.COOLING_DOWN)
        connection_id = secrets.token_hex(8)
        args: tuple[_Arg, ...] = (
            limits.connect_rate_per_s,
            limits.connect_burst,
            limits.max_open,
            connection_id,
            self._lease_ms,
        )
        keys = admission_keys(self.prefix, subject)
        admit = functools.partial(self._eval, self._admit_script, keys, args)
        reply = await self._call("a handshake", admit)
        if reply is None:
            return Refused(limits.retry_after_s, Refusal.UNAVAILABLE)
        verdict, ms = int(reply[0]), int(reply[1])
        if verdict == 1:
            return Refused(ms / 1000, Refusal.COOLING_DOWN)
        if verdict == 2:
            return Refused(ms / 1000, Refusal.TOO_FAST)
        if verdict == 3:
            return Refused(limits.retry_after_s, Refusal.TOO_MANY_OPEN)
        if limits.max_open <= 0:
            return Ticket(subject)  # nothing counted, nothing to release
        self._open[connection_id] = subject
        return Ticket(subject, connection_id)

    async def release(self, ticket: Ticket) -> None:
        """See :meth:`~app.services._admission.Admission.release`: no longer refreshed
        from here at once, removed from Redis within ``timeout_s`` (shielded); if Redis
        cannot be reached, its lease ends it."""
        if self._open.pop(ticket.connection_id, None) is None:
            return
        with trio.CancelScope(shield=True):
            await self._remove([(ticket.connection_id, ticket.subject)])

    def penalize(self, subject: str) -> None:
        """See :meth:`~app.services._admission.Admission.penalize`: refused in this process
        at once, in every process once :meth:`run` has written it (one round trip)."""
        if self.limits.abuse_cooldown_s <= 0:
            return
        try:
            self._penalties.send_nowait(subject)
        except trio.WouldBlock:
            self.log.warning("admission: too many cool-downs waiting; one is dropped")
            return
        self._pending.add(subject)

    async def cool_down(self, subject: str) -> bool:
        """Write ``subject``'s cool-down to Redis now; False if Redis could not be reached.

        Cancellation: the cool-down may or may not be written.
        """
        ms = max(1, math.ceil(self.limits.abuse_cooldown_s * 1000))
        key = admission_keys(self.prefix, subject)[1]
        written = await self._call("a cool-down", lambda: self.client.set(key, "1", px=ms))
        return written is not None

    async def refresh(self) -> int:
        """Renew the lease of every connection open here; the number renewed.

        One script per :data:`REFRESH_BATCH` connections. Connections released while it
        ran are removed again after it, so a refresh never outlives a release.
        Cancellation: the leases not yet renewed stay as they were.
        """
        snapshot = list(self._open.items())
        renewed = 0
        for start in range(0, len(snapshot), REFRESH_BATCH):
            batch = snapshot[start : start + REFRESH_BATCH]
            keys = [admission_keys(self.prefix, subject)[2] for _, subject in batch]
            args: list[_Arg] = [self._lease_ms, *(connection_id for connection_id, _ in batch)]
            refresh = functools.partial(self._eval, self._refresh_script, keys, args)
            reply = await self._call("a lease refresh", refresh)
            if reply is None:
                return renewed
            renewed += int(reply)
            await self._remove((c, s) for c, s in batch if c not in self._open)
        return renewed

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Refresh this process's leases every ``lease_s / 3`` and write cool-downs as they
        come; with ``owns_client``, hold the client open meanwhile and close it after.
        Runs until cancelled, which is how it stops (the leases then end by themselves)."""
        if self.owns_client:
            async with self.client:
                await self._upkeep(task_status)
        else:
            await self._upkeep(task_status)

    async def _upkeep(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_penalties)
            nursery.start_soon(self._refresh_forever)
            task_status.started()

    async def _refresh_forever(self) -> None:
        while True:
            await trio.sleep(self.lease_s / 3)
            await self.refresh()

    async def _write_penalties(self) -> None:
        async for subject in self._penalties_out:
            try:
                await self.cool_down(subject)
            finally:
                self._pending.discard(subject)

    async def _remove(self, connections: Iterable[tuple[str, str]]) -> None:
        for connection_id, subject in connections:
            key = admission_keys(self.prefix, subject)[2]
            zrem = functools.partial(self.client.zrem, key, [connection_id])
            if await self._call("a release", zrem) is None:
                return

    @staticmethod
    async def _eval(script: Script[Any], keys: Sequence[str], args: Sequence[_Arg]) -> Any:
        # coredis types a script's reply as None; it is the Lua return value.
        return await cast("Awaitable[Any]", script(keys=keys, args=args))

    async def _call(self, what: str, request: Callable[[], Awaitable[_T]]) -> _T | None:
        """``request()``'s reply, or None (logged) if Redis fails or takes over ``timeout_s``."""
        with trio.move_on_after(self.timeout_s):
            try:
                reply = await request()
            except self._errors as exc:
                self._unreachable(what, exc)
                return None
            self._reached()
            return reply
        self._unreachable(what, TimeoutError(f"no answer in {self.timeout_s:g} s"))
        return None

    def _unreachable(self, what: str, exc: BaseException) -> None:
        if self._reachable:  # once per outage, not once per handshake
            self._reachable = False
            self.log.warning(
                "admission: Redis unreachable during %s (%s: %s); handshakes get 503 until it"
                " answers",
                what,
                type(exc).__name__,
                str(exc),  # not the exception: a record must not keep its traceback alive
            )

    def _reached(self) -> None:
        if not self._reachable:
            self._reachable = True
            self.log.info("admission: Redis answers again")


def build_admission(
    settings: Settings,
    log: logging.Logger,
    redis: coredis.Redis[Any] | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> Admission:
    """The admission ``serve()`` runs: shared through Redis when ``--store`` is a
    ``redis://`` or ``rediss://`` URL, on ``redis`` (the process's client, kept open by the
    caller) or else a client of its own (opened and closed by its ``run()``); otherwise in
    this process's memory. ``prefix`` starts its keys (the store's)."""
    limits = AdmissionLimits.from_settings(settings)
    if not settings.store.startswith(("redis://", "rediss://")):
        return MemoryAdmission(limits)
    if redis is not None:
        return RedisAdmission(redis, limits, prefix=prefix, log=log)
    import coredis

    client: coredis.Redis[Any] = coredis.Redis.from_url(
        settings.store, connect_timeout=TIMEOUT_S, stream_timeout=TIMEOUT_S
    )
    return RedisAdmission(client, limits, prefix=prefix, log=log, owns_client=True)
