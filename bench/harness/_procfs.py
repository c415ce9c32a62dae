"""Reading /proc: CPU time, RSS, open fds, CPU affinity, open-file limits and the machine.

The parsers take the file's text, so they are tested on fake files; the readers
are thin wrappers around them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import attrs

__all__ = [
    "CoreTimes",
    "ProcSample",
    "core_load",
    "machine_info",
    "parse_cpuinfo_model",
    "parse_environ_value",
    "parse_limits_nofile",
    "parse_meminfo_total_kib",
    "parse_proc_stat",
    "parse_stat_cpu_ticks",
    "parse_stat_ppid",
    "parse_status_cpus_allowed",
    "parse_status_kib",
    "read_affinity",
    "read_cores",
    "read_fds",
    "read_nofile",
    "read_rss_kib",
    "read_sample",
    "read_tree",
    "read_worker_index",
    "sum_samples",
    "tree_pids",
]

PROC = Path("/proc")


def parse_stat_cpu_ticks(text: str) -> int:
    """utime + stime (clock ticks) from the text of /proc/PID/stat.

    The command name (field 2) is in parentheses and may itself contain spaces or
    parentheses, so the fields are counted from the last ``)``.
    """
    end = text.rfind(")")
    if end < 0:
        raise ValueError("not a /proc/PID/stat line")
    rest = text[end + 1 :].split()
    # rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    if len(rest) < 13:
        raise ValueError("/proc/PID/stat line is too short")
    return int(rest[11]) + int(rest[12])


def parse_stat_ppid(text: str) -> int:
    """The parent's pid (field 4) from the text of /proc/PID/stat."""
    end = text.rfind(")")
    rest = text[end + 1 :].split() if end >= 0 else []
    if len(rest) < 2:
        raise ValueError("not a /proc/PID/stat line")
    return int(rest[1])


def tree_pids(root_pid: int, parents: dict[int, int]) -> list[int]:
    """``root_pid`` and every descendant of it, given ``{pid: ppid}`` of the machine's
    processes; the root first, then by pid."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    out: list[int] = []
    todo = [root_pid]
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return [root_pid, *sorted(p for p in out if p != root_pid)]


def _parents(root: Path) -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in os.listdir(root):
        if not entry.isdigit():
            continue
        try:
            parents[int(entry)] = parse_stat_ppid((root / entry / "stat").read_text())
        except (OSError, ValueError):
            continue  # gone meanwhile
    return parents


def parse_environ_value(data: bytes, name: str) -> str | None:
    """The value of ``name`` in the NUL-separated text of /proc/PID/environ."""
    prefix = name.encode() + b"="
    for item in data.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode(errors="replace")
    return None


def read_worker_index(pid: int, root: Path = PROC) -> int | None:
    """``ENCLAVE_WORKER_INDEX`` of a worker of ``enclave serve --workers N`` (None for
    any other process, or one whose environment cannot be read)."""
    try:
        value = parse_environ_value(
            (root / str(pid) / "environ").read_bytes(), "ENCLAVE_WORKER_INDEX"
        )
    except OSError:
        return None
    return int(value) if value is not None and value.isdigit() else None


def parse_status_kib(text: str, field: str) -> int:
    """A ``kB`` field (``VmRSS``, ``VmHWM``, ...) of /proc/PID/status, in KiB."""
    match = re.search(rf"^{re.escape(field)}:\s+(\d+)\s+kB\s*$", text, re.MULTILINE)
    if match is None:
        raise ValueError(f"no {field} in /proc/PID/status")
    return int(match.group(1))


def parse_status_cpus_allowed(text: str) -> str | None:
    """``Cpus_allowed_list`` of /proc/PID/status (e.g. ``0`` or ``0-1``)."""
    match = re.search(r"^Cpus_allowed_list:\s*(\S+)\s*$", text, re.MULTILINE)
    return match.group(1) if match else None


def parse_limits_nofile(text: str) -> tuple[str, str] | None:
    """(soft, hard) of ``Max open files`` in /proc/PID/limits."""
    match = re.search(r"^Max open files\s+(\S+)\s+(\S+)", text, re.MULTILINE)
    return (match.group(1), match.group(2)) if match else None


def parse_cpuinfo_model(text: str) -> str:
    """The first ``model name`` of /proc/cpuinfo (``unknown`` when absent)."""
    match = re.search(r"^model name\s*:\s*(.+?)\s*$", text, re.MULTILINE)
    return match.group(1) if match else "unknown"


def parse_meminfo_total_kib(text: str) -> int | None:
    match = re.search(r"^MemTotal:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


@attrs.frozen
class CoreTimes:
    """Clock ticks of one CPU from /proc/stat: in use (user, nice, system, irq, softirq),
    stolen by the hypervisor, and in total."""

    used: int
    steal: int
    total: int


def parse_proc_stat(text: str) -> dict[int, CoreTimes]:
    """The ``cpuN`` lines of /proc/stat."""
    out: dict[int, CoreTimes] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        fields = [int(v) for v in rest.split()[:8]]
        fields += [0] * (8 - len(fields))
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        out[int(name[3:])] = CoreTimes(
            used=user + nice + system + irq + softirq, steal=steal, total=sum(fields)
        )
    return out


def read_cores(root: Path = PROC) -> dict[int, CoreTimes]:
    try:
        return parse_proc_stat((root / "stat").read_text())
    except OSError:
        return {}


def core_load(
    before: dict[int, CoreTimes], after: dict[int, CoreTimes], core: int
) -> tuple[float, float] | None:
    """(used, stolen) fractions of ``core`` between two readings."""
    if core not in before or core not in after:
        return None
    total = after[core].total - before[core].total
    if total <= 0:
        return None
    used = (after[core].used - before[core].used) / total
    return used, (after[core].steal - before[core].steal) / total


@attrs.frozen
class ProcSample:
    """One look at a process: CPU seconds (user + system) and resident memory."""

    cpu_s: float
    rss_bytes: int


def read_sample(pid: int, root: Path = PROC) -> ProcSample:
    """Raises OSError (e.g. ProcessLookupError/FileNotFoundError) when the process is gone."""
    ticks = parse_stat_cpu_ticks((root / str(pid) / "stat").read_text())
    rss_kib = parse_status_kib((root / str(pid) / "status").read_text(), "VmRSS")
    return ProcSample(cpu_s=ticks / os.sysconf("SC_CLK_TCK"), rss_bytes=rss_kib * 1024)


def read_tree(pid: int, root: Path = PROC) -> dict[int, ProcSample]:
    """A sample of ``pid`` and of each of its descendants (a supervisor and its workers),
    by pid; empty when ``pid`` is gone. Processes that exit meanwhile are left out."""
    out: dict[int, ProcSample] = {}
    for member in tree_pids(pid, _parents(root)):
        try:
            out[member] = read_sample(member, root)
        except (OSError, ValueError):  # gone, or a zombie without VmRSS
            continue
    return out


def sum_samples(samples: dict[int, ProcSample]) -> ProcSample | None:
    """The CPU time and RSS of a process tree, added up (None for no process)."""
    if not samples:
        return None
    return ProcSample(
        cpu_s=sum(s.cpu_s for s in samples.values()),
        rss_bytes=sum(s.rss_bytes for s in samples.values()),
    )


def read_affinity(pid: int, root: Path = PROC) -> str | None:
    try:
        return parse_status_cpus_allowed((root / str(pid) / "status").read_text())
    except OSError:
        return None


def read_nofile(pid: int, root: Path = PROC) -> tuple[str, str] | None:
    try:
        return parse_limits_nofile((root / str(pid) / "limits").read_text())
    except OSError:
        return None


def read_rss_kib(pid: int, root: Path = PROC) -> int:
    """Resident memory (``VmRSS``) in KiB; raises OSError when the process is gone."""
    return parse_status_kib((root / str(pid) / "status").read_text(), "VmRSS")


def read_fds(pid: int, root: Path = PROC) -> int:
    """How many files the process has open (the entries of /proc/PID/fd)."""
    return len(os.listdir(root / str(pid) / "fd"))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def machine_info(root: Path = PROC) -> dict[str, Any]:
    """CPU model, logical CPUs, memory and kernel of this machine."""
    mem_kib = parse_meminfo_total_kib(_read(root / "meminfo"))
    uname = os.uname()
    return {
        "cpu_model": parse_cpuinfo_model(_read(root / "cpuinfo")),
        "nproc": os.cpu_count() or len(os.sched_getaffinity(0)),  # the machine's, not our pinning's
        "cpu_count": os.cpu_count(),
        "mem_total_gib": round(mem_kib / 1024 / 1024, 1) if mem_kib else None,
        "kernel": f"{uname.sysname} {uname.release}",
        "machine": uname.machine,
    }
