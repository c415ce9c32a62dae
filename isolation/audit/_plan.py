"""What an audit does: its configuration, the seeded plan of every user, and tokens.

Everything random about an audit (who collides, which runs are cancelled or dropped,
who probes whom, think times) and every canary derive from one seed, so an audit
is reproducible: same seed, same plan, same canaries. Timing is not reproducible.
"""

from __future__ import annotations

import hashlib
import math
import random
import shlex
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Final
from urllib.parse import urlsplit

import attrs
import trio

from ._ledger import CanaryIndex, CanaryOwner, derive_canary

__all__ = [
    "CLIENT_ID_POOL",
    "HS_ALGORITHMS",
    "THREAD_ID_POOL",
    "AuditConfig",
    "AuditError",
    "RunPlan",
    "UserPlan",
    "canary_index",
    "fetch_tokens",
    "make_plans",
]

#: Ids that colliding users draw from: a server keying state by them leaks.
CLIENT_ID_POOL: Final = ("c1", "c2", "c3", "1", "default")
THREAD_ID_POOL: Final = ("main", "default", "general", "t1", "1")
HS_ALGORITHMS: Final = ("HS256", "HS384", "HS512")
#: Share of a non-colliding user's runs that leave the thread to the server.
_SERVER_THREAD_SHARE: Final = 0.25


class AuditError(Exception):
    """The audit cannot run: a usage error, a bad token source or an unreachable server."""


def _rate(name: str, value: float) -> str | None:
    return None if 0.0 <= value <= 1.0 else f"--{name} must be between 0 and 1"


@attrs.frozen(kw_only=True)
class AuditConfig:
    """Everything :func:`isolation.audit._run.run_audit` needs; see ``audit --help``."""

    url: str
    users: int = 10
    runs: int = 3
    jwt_secret: bytes | None = attrs.field(default=None, repr=False)
    token_command: str | None = None
    algorithm: str = "HS256"
    audience: str | None = None
    issuer: str | None = None
    token_ttl_s: float = 3600.0
    connect_concurrency: int = 200
    overlap: int = 3
    think_ms: float = 50.0
    cancel_rate: float = 0.15
    drop_rate: float = 0.05
    idor_rate: float = 0.1
    collide_rate: float = 0.2
    seed: int | None = None
    timeout_s: float = 120.0
    frame_timeout_s: float = 15.0
    rate_per_s: float | None = None  # client messages/s per connection; None: half the server's
    subprotocol: str | None = "chat.v1"
    user_prefix: str = "audit"
    raise_fd_limit: bool = True

    def problems(self) -> list[str]:
        out: list[str] = []
        parts = urlsplit(self.url)
        try:
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            port_ok = False
        if parts.scheme not in ("ws", "wss") or not parts.hostname or not port_ok:
            out.append(f"--url must be ws://HOST:PORT/PATH or wss://..., not {self.url!r}")
        sources = [self.jwt_secret is not None, self.token_command is not None]
        if sum(sources) != 1:
            out.append("give exactly one of --jwt-secret, --jwt-secret-file, --token-command")
        if self.jwt_secret is not None and not self.jwt_secret:
            out.append("the JWT secret is empty")
        if self.token_command is not None and "{sub}" not in self.token_command:
            out.append("--token-command must contain {sub} (replaced by each user id)")
        if self.algorithm not in HS_ALGORITHMS:
            out.append(f"--algorithm must be one of {', '.join(HS_ALGORITHMS)}")
        for name in ("users", "runs", "connect_concurrency", "overlap"):
            if getattr(self, name) < 1:
                out.append(f"--{name.replace('_', '-')} must be >= 1")
        for name in ("cancel_rate", "drop_rate", "idor_rate", "collide_rate"):
            problem = _rate(name.replace("_", "-"), getattr(self, name))
            if problem:
                out.append(problem)
        for name in ("timeout_s", "frame_timeout_s", "token_ttl_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                out.append(f"--{name.removesuffix('_s').replace('_', '-')} must be > 0")
        if not (math.isfinite(self.think_ms) and self.think_ms >= 0):
            out.append("--think-ms must be >= 0")
        if self.rate_per_s is not None and not (
            math.isfinite(self.rate_per_s) and self.rate_per_s > 0
        ):
            out.append("--rate must be > 0")
        if not self.user_prefix or not all(c.isalnum() or c in "-_." for c in self.user_prefix):
            out.append("--user-prefix must be letters, digits, '-', '_' or '.'")
        return out

    def validate(self) -> None:
        """Raise :class:`AuditError` naming the first problem."""
        for problem in self.problems():
            raise AuditError(problem)


@attrs.frozen
class RunPlan:
    """One ``user_message`` of a user and what happens to its run."""

    number: int  # 1-based within the user
    tag: str  # the run's canary; names the message
    text: str
    client_id: str
    thread_id: str | None  # None: the server chooses
    think_s: float
    cancel: bool = False  # cancel right after agent_started
    drop: bool = False  # drop the connection right after agent_started
    target: bool = False  # published so that other users probe it
    victim_thread: bool = False  # sent on the probed victim run's thread


@attrs.frozen
class UserPlan:
    index: int
    user: str
    canary: str
    thread_canary: str
    colliding: bool
    runs: tuple[RunPlan, ...]
    victim: int | None = None  # the user whose target run this user probes
    probe_run: RunPlan | None = None  # this user's message on the victim's thread
    bogus_seed: str = ""

    @property
    def drops(self) -> int:
        return sum(run.drop for run in self.runs)

    @property
    def target(self) -> RunPlan | None:
        return next((run for run in self.runs if run.target), None)


def user_id(config: AuditConfig, seed: int, index: int) -> str:
    tag = hashlib.blake2b(str(seed).encode(), digest_size=3).hexdigest()
    return f"{config.user_prefix}-{tag}-{index:04d}"


def _run_plan(
    rng: random.Random, config: AuditConfig, seed: int, user: str, number: int, colliding: bool
) -> RunPlan:
    canary = derive_canary(seed, "run", user, number)
    thread_canary = derive_canary(seed, "thread", user)
    user_canary = derive_canary(seed, "user", user)
    if colliding:
        client_id = rng.choice(CLIENT_ID_POOL)
        thread_id: str | None = rng.choice((*THREAD_ID_POOL, None))
    else:
        client_id = f"c-{canary}"
        thread_id = f"t-{thread_canary}-{rng.randrange(2)}"
        if rng.random() < _SERVER_THREAD_SHARE:
            thread_id = None
    text = f"audit {user_canary} run {number} {canary} please count these words"
    think_s = rng.uniform(0.0, config.think_ms) / 1000.0
    return RunPlan(number, canary, text, client_id, thread_id, think_s)


def make_plans(config: AuditConfig, seed: int) -> tuple[UserPlan, ...]:
    """Every user's plan; a pure function of ``config`` and ``seed``."""
    rng = random.Random(f"{seed}:plan")
    plans: list[UserPlan] = []
    attackers: list[int] = []
    for index in range(config.users):
        user = user_id(config, seed, index)
        colliding = rng.random() < config.collide_rate
        attacker = config.users > 1 and rng.random() < config.idor_rate
        runs: list[RunPlan] = []
        dropped = attacker  # attackers keep their connection; at most one drop per user
        used: set[tuple[str, str | None]] = set()
        for number in range(1, config.runs + 1):
            run = _run_plan(rng, config, seed, user, number, colliding)
            if (run.client_id, run.thread_id) in used:
                # A client_id the thread already accepted is answered duplicate_message:
                # the message goes to a new thread instead, so every planned run runs.
                run = attrs.evolve(run, thread_id=None)
            used.add((run.client_id, run.thread_id))
            if not dropped and rng.random() < config.drop_rate:
                run = attrs.evolve(run, drop=True)
                dropped = True
            elif rng.random() < config.cancel_rate:
                run = attrs.evolve(run, cancel=True)
            runs.append(run)
        if attacker:
            attackers.append(index)
        plans.append(
            UserPlan(
                index,
                user,
                derive_canary(seed, "user", user),
                derive_canary(seed, "thread", user),
                colliding,
                tuple(runs),
                bogus_seed=f"{seed}:bogus:{index}",
            )
        )
    for index in attackers:
        candidates = [
            p.index
            for p in plans
            if p.index != index and p.drops == 0 and any(not r.cancel for r in p.runs)
        ]
        if not candidates:
            continue
        victim = plans[rng.choice(candidates)]
        if victim.target is None:
            first = next(i for i, r in enumerate(victim.runs) if not r.cancel)
            runs = list(victim.runs)
            runs[first] = attrs.evolve(runs[first], target=True)
            plans[victim.index] = attrs.evolve(victim, runs=tuple(runs))
        prober = plans[index]
        probe = _run_plan(rng, config, seed, prober.user, config.runs + 1, prober.colliding)
        probe = attrs.evolve(probe, thread_id=None, victim_thread=True)
        plans[index] = attrs.evolve(prober, victim=victim.index, probe_run=probe)
    return tuple(plans)


def canary_index(plans: Sequence[UserPlan]) -> CanaryIndex:
    """Every canary of the audit mapped to its owner."""

    def entries() -> list[tuple[str, CanaryOwner]]:
        out = []
        for plan in plans:
            out.append((plan.canary, CanaryOwner(plan.user, "user")))
            out.append((plan.thread_canary, CanaryOwner(plan.user, "thread")))
            runs = (*plan.runs, plan.probe_run) if plan.probe_run else plan.runs
            out.extend((run.tag, CanaryOwner(plan.user, f"run {run.number}")) for run in runs)
        return out

    return CanaryIndex.build(entries())


# -- tokens ------------------------------------------------------------------------


def secret_minter(config: AuditConfig) -> Callable[[str], str]:
    """A function minting an HS token for a subject with ``config.jwt_secret``.

    Uses joserfc directly: auditing a foreign server must not need this project's app.
    """
    from joserfc import jwt
    from joserfc.errors import SecurityWarning
    from joserfc.jwk import OctKey

    assert config.jwt_secret is not None
    with warnings.catch_warnings():
        # A short secret is the audited server's business; it accepts the token or not.
        warnings.simplefilter("ignore", SecurityWarning)
        key = OctKey.import_key(config.jwt_secret)
    header = {"alg": config.algorithm}

    def mint(subject: str) -> str:
        now = int(time.time())
        claims: dict[str, object] = {
            "sub": subject,
            "iat": now,
            "exp": now + math.ceil(max(config.token_ttl_s, config.timeout_s + 60)),
        }
        if config.audience is not None:
            claims["aud"] = config.audience
        if config.issuer is not None:
            claims["iss"] = config.issuer
        return jwt.encode(header, claims, key, algorithms=[config.algorithm])

    return mint


async def command_token(command: str, subject: str) -> str:
    """The token ``command`` prints (its last non-empty stdout line) for ``subject``."""
    argv = [part.replace("{sub}", subject) for part in shlex.split(command)]
    try:
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    except OSError as exc:
        raise AuditError(f"--token-command: cannot run {argv[0]!r}: {exc.strerror}") from None
    stderr = done.stderr.decode(errors="replace").strip()
    if done.returncode != 0:
        raise AuditError(
            f"--token-command failed for {subject} (exit {done.returncode}): {stderr[-300:]}"
        )
    lines = [line.strip() for line in done.stdout.decode(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise AuditError(f"--token-command printed no token for {subject}")
    return lines[-1]


async def fetch_tokens(config: AuditConfig, users: Sequence[str], *, parallel: int) -> list[str]:
    """One token per user, in order. Raises AuditError."""
    if config.jwt_secret is not None:
        mint = secret_minter(config)
        return [mint(user) for user in users]
    assert config.token_command is not None
    command = config.token_command
    tokens = [""] * len(users)
    limit = trio.Semaphore(max(1, parallel))
    failures: list[AuditError] = []

    async def one(index: int) -> None:
        async with limit:
            if failures:
                return
            try:
                tokens[index] = await command_token(command, users[index])
            except AuditError as exc:
                failures.append(exc)

    async with trio.open_nursery() as nursery:
        for index in range(len(users)):
            nursery.start_soon(one, index)
    if failures:
        raise failures[0]
    return tokens
