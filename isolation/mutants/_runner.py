"""Mutants: proof that both isolation checks can fail.

For each mutant of :mod:`isolation.mutants._catalogue` (and the unmodified control),
:func:`run_mutant`:

1. copies the importable ``app`` package into a temporary directory and applies the
   mutant's replacements (:func:`build_copy`; an anchor that no longer matches exactly
   once raises :class:`MutantError` naming the mutant and the file);
2. runs the static checker on the copy and keeps the findings the control does not have;
3. starts the copy as a server subprocess (``python -m app serve`` with the copy first
   on ``PYTHONPATH``, in its own process group, killed in a ``finally``) and runs the
   runtime audit in-process against it, with a load shape that provokes each leak:
   colliding ids, cancels right after ``agent_started``, IDOR probes, overlapping runs.

Time to detect: the static time is the checker's wall time on the copy. The audit does
not timestamp violations (and its files are not ours to change), so the runtime time is
measured with *budgets* (:func:`audit_copy`): the same audit (same seed, same plan) is
run against a freshly started server with ``timeout_s`` set to each budget in turn -- a
stopped audit still reports what it saw -- until one reports the mutant's leak or
completes. The time reported is the wall time of the first attempt that reported the
leak: an upper bound on the time from the audit's start to its first violation; the
budget before it is a lower bound (the same audit had not seen it by then).
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from ..audit._plan import AuditConfig, AuditError
from ..audit._report import AuditReport
from ..audit._run import run_audit
from ..static._checker import Finding, check_paths
from ._catalogue import CONTROL
from ._model import Mutant, MutantError, Replacement

__all__ = [
    "MutantOptions",
    "MutantResult",
    "RuntimeOutcome",
    "StaticOutcome",
    "app_source_dir",
    "apply_replacements",
    "audit_config",
    "audit_copy",
    "build_copy",
    "check_static",
    "run_mutant",
    "run_mutants",
    "serve_copy",
]

#: The log line of ``app`` that names the bound address.
_LISTENING: Final = re.compile(r"listening on (https?)://([^\s/]+):(\d+)")
#: Lines of the server's stderr kept for error messages.
_TAIL_LINES: Final = 40
_EVIDENCE_CHARS: Final = 300


@attrs.frozen(kw_only=True)
class MutantOptions:
    """How each mutant is run: the server's agent delay and the audit's load shape."""

    users: int = 24
    runs: int = 3
    agent_delay_ms: float = 50.0
    seed: int = 1
    #: Timeouts of the short audits run before the full one (see the module docstring).
    budgets_s: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    audit_timeout_s: float = 60.0
    frame_timeout_s: float = 4.0
    startup_timeout_s: float = 30.0
    overlap: int = 3
    think_ms: float = 10.0
    cancel_rate: float = 0.3
    drop_rate: float = 0.05
    idor_rate: float = 0.4
    collide_rate: float = 0.5
    python: str = attrs.field(factory=lambda: sys.executable)
    transport: str | None = None  # the servers' --transport; None: the app's default

    def describe(self) -> str:
        budgets = ", ".join(f"{b:g} s" for b in self.budgets_s)
        transport = f"{self.transport} transport" if self.transport else "default transport"
        return (
            f"{self.users} users x {self.runs} runs, agent delay {self.agent_delay_ms:g} ms, "
            f"{transport}, "
            f"seed {self.seed}; cancel {self.cancel_rate:g}, collide {self.collide_rate:g}, "
            f"IDOR {self.idor_rate:g}, drop {self.drop_rate:g}, overlap {self.overlap}; "
            f"audit budgets {budgets or 'none'}, then a full audit"
        )


@attrs.frozen
class StaticOutcome:
    """The checker on a copy: codes and findings the control does not have."""

    codes: frozenset[str]
    findings: tuple[Finding, ...]  # paths relative to the copy's parent (``app/...``)
    seconds: float

    def lines(self) -> tuple[str, ...]:
        return tuple(finding.format() for finding in self.findings)

    def baseline(self) -> tuple[tuple[str, str], ...]:
        """(path, code) of every finding: the baseline :func:`check_static` subtracts."""
        return tuple((finding.path, finding.code) for finding in self.findings)


@attrs.frozen(kw_only=True)
class Attempt:
    """One audit of a mutated server."""

    budget_s: float | None  # None: the full audit
    wall_time_s: float
    complete: bool
    violation_count: int
    kinds: tuple[tuple[str, int], ...]


@attrs.frozen(kw_only=True)
class RuntimeOutcome:
    """The runtime audits of one server."""

    caught: bool  # some audit reported a violation
    kinds: tuple[tuple[str, int], ...]  # violation kinds of the catching audit (kept ones)
    evidence: str | None  # one violation's evidence, a signature kind's when there is one
    detect_s: float | None  # audit wall time up to and including the catching attempt
    caught_budget_s: float | None  # the catching attempt's budget (None: the full audit)
    clean: bool  # the full audit ran, completed and reported nothing
    attempts: tuple[Attempt, ...]
    error: str | None = None

    @property
    def kind_names(self) -> frozenset[str]:
        return frozenset(kind for kind, _ in self.kinds)


@attrs.frozen(kw_only=True)
class MutantResult:
    mutant: Mutant
    static: StaticOutcome
    runtime: RuntimeOutcome

    @property
    def is_control(self) -> bool:
        return not self.mutant.replacements

    @property
    def static_as_expected(self) -> bool:
        if self.is_control:
            return not self.static.findings
        return self.static.codes == self.mutant.expected_static

    @property
    def runtime_as_expected(self) -> bool:
        runtime = self.runtime
        if runtime.error is not None:
            return False
        if not self.mutant.expected_runtime:
            # The control must be provably clean; a mutant expected to pass unseen must
            # at least not be reported.
            return runtime.clean if self.is_control else not runtime.caught
        signature = self.mutant.signature
        return runtime.caught and (not signature or bool(signature & runtime.kind_names))

    @property
    def as_expected(self) -> bool:
        return self.static_as_expected and self.runtime_as_expected

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.mutant.name,
            "story": self.mutant.story,
            "files": list(self.mutant.files),
            "expected_static": sorted(self.mutant.expected_static),
            "expected_runtime": self.mutant.expected_runtime,
            "signature": sorted(self.mutant.signature),
            "static": {
                "codes": sorted(self.static.codes),
                "findings": list(self.static.lines()),
                "seconds": self.static.seconds,
            },
            "runtime": {
                "caught": self.runtime.caught,
                "kinds": dict(self.runtime.kinds),
                "evidence": self.runtime.evidence,
                "detect_s": self.runtime.detect_s,
                "caught_budget_s": self.runtime.caught_budget_s,
                "clean": self.runtime.clean,
                "error": self.runtime.error,
                "attempts": [attrs.asdict(a) for a in self.runtime.attempts],
            },
            "static_as_expected": self.static_as_expected,
            "runtime_as_expected": self.runtime_as_expected,
            "as_expected": self.as_expected,
        }


# -- building the copy ---------------------------------------------------------------


def app_source_dir() -> Path:
    """The directory of the importable ``app`` package. Raises MutantError."""
    spec = importlib.util.find_spec("app")
    if spec is None or not spec.submodule_search_locations:
        raise MutantError("the 'app' package cannot be imported: is trio-enclave installed?")
    return Path(next(iter(spec.submodule_search_locations)))


def apply_replacements(
    name: str, files: dict[str, str], replacements: Iterable[Replacement]
) -> None:
    """Apply ``replacements`` to ``files`` (file name -> text) in place. Raises MutantError."""
    for replacement in replacements:
        text = files.get(replacement.file)
        count = 0 if text is None else text.count(replacement.old)
        if text is None or count != 1:
            first = replacement.old.strip().splitlines()[0] if replacement.old.strip() else ""
            found = "file missing" if text is None else f"anchor found {count} times"
            raise MutantError(
                f"mutant {name} no longer applies to app/{replacement.file} "
                f"({found}: {first!r}); update isolation/mutants/_catalogue.py"
            )
        files[replacement.file] = text.replace(replacement.old, replacement.new, 1)


def build_copy(mutant: Mutant, root: Path, source: Path | None = None) -> Path:
    """Copy ``app`` into ``root/app`` and apply ``mutant``; returns the copy's directory."""
    source = source or app_source_dir()
    dest = root / "app"
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    files = {
        name: (dest / name).read_text(encoding="utf-8")
        for name in mutant.files
        if (dest / name).is_file()
    }
    apply_replacements(mutant.name, files, mutant.replacements)
    for name, text in files.items():
        (dest / name).write_text(text, encoding="utf-8")
    return dest


def check_static(copy: Path, baseline: Sequence[tuple[str, str]] = ()) -> StaticOutcome:
    """Run the static checker on ``copy``; keep the findings not in ``baseline``.

    ``baseline`` holds (relative path, code) pairs of the control's findings, compared
    as a multiset (line numbers move when a mutant inserts code).
    """
    started = time.perf_counter()
    findings = check_paths([copy])
    seconds = time.perf_counter() - started
    remaining = Counter(baseline)
    kept: list[Finding] = []
    for finding in findings:
        relative = Path(os.path.relpath(finding.path, copy.parent)).as_posix()
        key = (relative, finding.code)
        if remaining[key] > 0:
            remaining[key] -= 1
            continue
        kept.append(attrs.evolve(finding, path=relative))
    return StaticOutcome(frozenset(f.code for f in kept), tuple(kept), seconds)


# -- serving the copy ------------------------------------------------------------------


def _server_env(root: Path, secret: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ENCLAVE_")}
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(root) + (os.pathsep + path if path else "")
    env["ENCLAVE_JWT_SECRET"] = secret  # not on the command line: ps shows argv
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _new_log(root: Path) -> tuple[Path, int]:
    """A fresh file for one server's stderr, and a descriptor to hand the server."""
    fd, name = tempfile.mkstemp(prefix="server-", suffix=".log", dir=root)
    return Path(name), fd


def _tail(text: str) -> str:
    return "\n".join(text.splitlines()[-_TAIL_LINES:])


async def _wait_for_port(log: Path, process: trio.Process, timeout_s: float) -> int:
    """The port the server logs once it listens. Raises MutantError."""
    text = ""
    with trio.move_on_after(timeout_s):
        while True:
            text = await trio.Path(log).read_text(encoding="utf-8", errors="replace")
            match = _LISTENING.search(text)
            if match:
                return int(match.group(3))
            if process.poll() is not None:
                text = await trio.Path(log).read_text(encoding="utf-8", errors="replace")
                raise MutantError(
                    f"the server exited with status {process.returncode} before listening; "
                    f"its stderr ends with:\n{_tail(text)}"
                )
            await trio.sleep(0.02)
    raise MutantError(
        f"the server did not log its address within {timeout_s:g} s; "
        f"its stderr ends with:\n{_tail(text)}"
    )


@asynccontextmanager
async def serve_copy(root: Path, options: MutantOptions, secret: str) -> AsyncIterator[str]:
    """Run ``python -m app serve`` on the copy under ``root``; yields its WebSocket URL.

    The server runs in its own process group, killed (SIGKILL) on the way out; its
    stderr goes to a file under ``root``. Raises MutantError when it does not log its
    address within ``startup_timeout_s``.
    """
    argv = [
        options.python,
        "-m",
        "app",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--agent-delay-ms",
        f"{options.agent_delay_ms:g}",
        "--log-level",
        "info",
        *(("--transport", options.transport) if options.transport else ()),
    ]
    log, fd = _new_log(root)
    try:
        process = await trio.lowlevel.open_process(
            argv,
            cwd=str(root),  # ``-m`` puts the working directory first on sys.path: the copy
            env=_server_env(root, secret),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=fd,
            start_new_session=True,
        )
    finally:
        os.close(fd)
    try:
        port = await _wait_for_port(log, process, options.startup_timeout_s)
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await process.wait()


# -- auditing ----------------------------------------------------------------------------


def audit_config(
    url: str, options: MutantOptions, secret: str, *, seed: int, timeout_s: float
) -> AuditConfig:
    """The audit of one attempt: the options' load shape against ``url``."""
    return AuditConfig(
        url=url,
        users=options.users,
        runs=options.runs,
        jwt_secret=secret.encode(),
        seed=seed,
        overlap=options.overlap,
        think_ms=options.think_ms,
        cancel_rate=options.cancel_rate,
        drop_rate=options.drop_rate,
        idor_rate=options.idor_rate,
        collide_rate=options.collide_rate,
        timeout_s=timeout_s,
        frame_timeout_s=options.frame_timeout_s,
        raise_fd_limit=False,
    )


def _evidence(report: AuditReport, signature: frozenset[str]) -> str | None:
    # Another user's data in a frame is the most telling evidence; then the signature.
    named = [v for v in report.violations if v.kind in signature]
    chosen = min(named, key=lambda v: v.kind != "foreign-canary", default=None)
    chosen = chosen or (report.violations[0] if report.violations else None)
    if chosen is None:
        return None
    text = " ".join(chosen.evidence.split())
    return text if len(text) <= _EVIDENCE_CHARS else text[: _EVIDENCE_CHARS - 3] + "..."


async def audit_copy(root: Path, options: MutantOptions, mutant: Mutant) -> RuntimeOutcome:
    """The budgeted audits of the copy under ``root``, up to the first reporting a violation.

    Every attempt is the same audit (same seed, same plan) against a freshly started
    server, stopped after its budget: no attempt inherits state an earlier one left in
    the server. The ladder ends at the first attempt that reports one of the mutant's
    signature kinds (any violation for a mutant without a signature), or at the first
    that completes within its budget: that one was a full audit. Raises MutantError
    when a server does not start.
    """
    attempts: list[Attempt] = []
    plan: list[float | None] = [*options.budgets_s, None]
    for budget in plan:
        timeout = options.audit_timeout_s if budget is None else budget
        secret = secrets.token_urlsafe(32)
        try:
            async with serve_copy(root, options, secret) as url:
                config = audit_config(url, options, secret, seed=options.seed, timeout_s=timeout)
                report = await run_audit(config)
        except AuditError as exc:
            if budget is not None and "within --timeout" in str(exc):
                continue  # the budget ran out before the first handshake: try a longer one
            return _outcome(attempts, error=f"the audit could not run: {exc}")
        kinds = tuple(sorted(report.violation_kinds().items(), key=lambda kv: (-kv[1], kv[0])))
        attempts.append(
            Attempt(
                budget_s=budget,
                wall_time_s=report.wall_time_s,
                complete=report.complete,
                violation_count=report.violation_count,
                kinds=kinds,
            )
        )
        named = not mutant.signature or bool(mutant.signature & set(report.violation_kinds()))
        if report.violation_count and (named or report.complete):
            return _outcome(attempts, report=report, signature=mutant.signature)
        if report.complete and report.runs_completed == 0:
            # A server that ends every run (a crash on each) leaks nothing and proves nothing.
            return _outcome(attempts, error="the audit saw no run complete: is the server broken?")
        if report.complete:
            return _outcome(attempts, clean=report.clean)
    return _outcome(
        attempts, error=f"the full audit did not finish in {options.audit_timeout_s:g} s"
    )


def _outcome(
    attempts: list[Attempt],
    *,
    report: AuditReport | None = None,
    signature: frozenset[str] = frozenset(),
    clean: bool = False,
    error: str | None = None,
) -> RuntimeOutcome:
    last = attempts[-1] if attempts else None
    caught = report is not None and last is not None
    return RuntimeOutcome(
        caught=caught,
        kinds=last.kinds if caught and last is not None else (),
        evidence=_evidence(report, signature) if report is not None else None,
        detect_s=last.wall_time_s if caught and last is not None else None,
        caught_budget_s=last.budget_s if caught and last is not None else None,
        clean=clean,
        attempts=tuple(attempts),
        error=error,
    )


# -- one mutant, all mutants ---------------------------------------------------------------


async def run_mutant(
    mutant: Mutant,
    options: MutantOptions,
    baseline: Sequence[tuple[str, str]] = (),
    *,
    runtime: bool = True,
) -> MutantResult:
    """Build, check and audit one mutant (``CONTROL`` for the unmodified app).

    Raises MutantError when the mutant no longer applies or its server does not start.
    """
    with tempfile.TemporaryDirectory(prefix=f"isolation-mutant-{mutant.name}-") as tmp:
        root = Path(tmp)
        copy = build_copy(mutant, root)
        static = check_static(copy, baseline)
        if not runtime:
            return MutantResult(mutant=mutant, static=static, runtime=_outcome([], error="not run"))
        outcome = await audit_copy(root, options, mutant)
    return MutantResult(mutant=mutant, static=static, runtime=outcome)


async def run_mutants(
    mutants: Sequence[Mutant],
    options: MutantOptions,
    progress: Callable[[MutantResult], None] | None = None,
) -> tuple[MutantResult, ...]:
    """The control first, then each mutant in turn (never in parallel: timing matters)."""
    control = await run_mutant(CONTROL, options)
    if progress is not None:
        progress(control)
    baseline = control.static.baseline()
    results = [control]
    for mutant in mutants:
        result = await run_mutant(mutant, options, baseline)
        results.append(result)
        if progress is not None:
            progress(result)
    return tuple(results)
