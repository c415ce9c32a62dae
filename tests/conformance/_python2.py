"""Find a Python 2.7 interpreter and build the suite's isolated virtualenv from pinned requirements.

Autobahn|Testsuite runs on Python 2.7 only. The interpreter is looked for in this order
(the first that really is 2.7 wins; pyenv shims of a version that is not selected fail
the check and are skipped): ``--python2`` / ``AUTOBAHN_PYTHON2``, ``python2.7`` and
``python2`` on ``PATH``, then ``$PYENV_ROOT/versions/2.7*`` (``PYENV_ROOT`` defaulting to
``pyenv root``, then ``~/.pyenv``).

The virtualenv is made by a pinned ``virtualenv`` that 2.7's own pip installs into a
bootstrap folder (2.7 has no ``venv`` module), then gets ``requirements-py27.txt`` with
``--no-deps``. A stamp holding the hash of the requirements and of the bootstrap pin
makes the next run skip all of it; a changed file rebuilds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

__all__ = [
    "REQUIREMENTS",
    "VIRTUALENV",
    "Python2NotFound",
    "candidates",
    "ensure_venv",
    "find_python2",
    "is_python27",
    "venv_python",
]

HERE: Final = Path(__file__).resolve().parent
REQUIREMENTS: Final = HERE / "requirements-py27.txt"
#: The last virtualenv line that runs on, and creates environments for, Python 2.7.
VIRTUALENV: Final = "virtualenv==20.15.1"
STAMP: Final = ".installed"
#: Bound of each build step (a cold install compiles wsaccel), seconds.
STEP_TIMEOUT_S: Final = 900.0


class Python2NotFound(RuntimeError):
    """No Python 2.7 interpreter was found; the message says where it looked."""


def _pyenv_root(environ: Mapping[str, str]) -> Path | None:
    if environ.get("PYENV_ROOT"):
        return Path(environ["PYENV_ROOT"])
    pyenv = shutil.which("pyenv", path=environ.get("PATH"))
    if pyenv is not None:
        try:
            out = subprocess.run(
                [pyenv, "root"], capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            pass
        else:
            if out.stdout.strip():
                return Path(out.stdout.strip())
    home = environ.get("HOME")
    return Path(home) / ".pyenv" if home else None


def candidates(explicit: str | None, environ: Mapping[str, str]) -> list[str]:
    """Interpreters to try, best first, without duplicates (not yet checked)."""
    found: list[str] = []
    if explicit:
        found.append(explicit)
    if environ.get("AUTOBAHN_PYTHON2"):
        found.append(environ["AUTOBAHN_PYTHON2"])
    for name in ("python2.7", "python2"):
        path = shutil.which(name, path=environ.get("PATH"))
        if path is not None:
            found.append(path)
    root = _pyenv_root(environ)
    if root is not None:
        versions = sorted((root / "versions").glob("2.7*"), reverse=True)
        found += [str(v / "bin" / "python") for v in versions if (v / "bin" / "python").exists()]
    return list(dict.fromkeys(found))


def is_python27(path: str) -> bool:
    """Whether ``path`` runs and is a CPython 2.7 (a pyenv shim may exist and fail)."""
    try:
        out = subprocess.run(
            [path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and out.stdout.strip() == "2.7"


def find_python2(
    explicit: str | None = None,
    environ: Mapping[str, str] | None = None,
    check: Callable[[str], bool] = is_python27,
) -> str:
    """The first of :func:`candidates` that ``check`` accepts. Raises Python2NotFound."""
    tried = candidates(explicit, os.environ if environ is None else environ)
    for path in tried:
        if check(path):
            return path
    where = ", ".join(tried) or "nothing found on PATH or under pyenv"
    raise Python2NotFound(
        "Autobahn|Testsuite needs Python 2.7; tried: "
        f"{where}. Install one (e.g. `pyenv install 2.7.18`) or pass --python2 PATH."
    )


def _fingerprint(requirements: Path) -> str:
    digest = hashlib.sha256(VIRTUALENV.encode())
    digest.update(requirements.read_bytes())
    return digest.hexdigest()


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _step(argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> None:
    """Run one build step, its output appended to ``log``; raise with the log's tail."""
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        result = subprocess.run(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            timeout=STEP_TIMEOUT_S,
            check=False,
        )
    if result.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8").splitlines()[-25:])
        raise RuntimeError(f"`{' '.join(argv)}` exited {result.returncode}; log {log}:\n{tail}")


def ensure_venv(
    venv: Path,
    python2: str,
    *,
    requirements: Path = REQUIREMENTS,
    say: Callable[[str], object] = print,
    run: Callable[[Sequence[str], Path, Mapping[str, str] | None], None] = _step,
) -> Path:
    """The venv's ``wstest``, building the venv first unless its stamp is current."""
    wstest = venv / "bin" / "wstest"
    stamp = venv / STAMP
    fingerprint = _fingerprint(requirements)
    if wstest.exists() and stamp.exists() and stamp.read_text().strip() == fingerprint:
        return wstest
    say(f"building {venv} (Python 2.7: {python2}); log in {venv}/build.log")
    if venv.exists():
        shutil.rmtree(venv)
    venv.mkdir(parents=True)
    log = venv / "build.log"
    bootstrap = venv / ".bootstrap"
    quiet = ("--disable-pip-version-check", "--no-cache-dir", "--quiet")
    run(
        [python2, "-m", "pip", "install", *quiet, "--target", str(bootstrap), VIRTUALENV], log, None
    )
    env = {**os.environ, "PYTHONPATH": str(bootstrap)}
    run(
        [python2, "-m", "virtualenv", "--no-download", "--no-periodic-update", str(venv)],
        log,
        env,
    )
    pip = [str(venv_python(venv)), "-m", "pip", "install", *quiet, "--no-deps"]
    run([*pip, "-r", str(requirements)], log, None)
    stamp.write_text(fingerprint + "\n")
    return wstest
