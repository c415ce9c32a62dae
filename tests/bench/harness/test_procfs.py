"""/proc parsing on fake files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.harness._procfs import (
    CoreTimes,
    core_load,
    machine_info,
    parse_cpuinfo_model,
    parse_environ_value,
    parse_limits_nofile,
    parse_meminfo_total_kib,
    parse_proc_stat,
    parse_stat_cpu_ticks,
    parse_stat_ppid,
    parse_status_cpus_allowed,
    parse_status_kib,
    read_sample,
    read_tree,
    read_worker_index,
    sum_samples,
    tree_pids,
)

# Field 2 holds a command name with spaces and parentheses: fields count from the last ")".
STAT = (
    "4242 (python (worker) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 "
    "150 25 0 0 20 0 1 0 123456 1000000 2500 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0"
)
STATUS = """Name:\tpython
State:\tS (sleeping)
VmPeak:\t  200000 kB
VmRSS:\t   51200 kB
VmHWM:\t   60000 kB
Cpus_allowed:\t1
Cpus_allowed_list:\t0
"""
LIMITS = """Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            11024                20000                files
"""
CPUINFO = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n"
MEMINFO = "MemTotal:       24683520 kB\nMemFree:        1000 kB\n"
PROC_STAT = """cpu  300 0 100 1000 5 0 10 20 0 0
cpu0 200 0 50 500 1 0 10 20 0 0
cpu1 100 0 50 500 4 0 0 0 0 0
intr 1 2 3
"""


def test_stat_cpu_ticks_is_utime_plus_stime() -> None:
    assert parse_stat_cpu_ticks(STAT) == 175


def test_stat_that_is_not_a_stat_line() -> None:
    with pytest.raises(ValueError, match="not a /proc"):
        parse_stat_cpu_ticks("garbage")
    with pytest.raises(ValueError, match="too short"):
        parse_stat_cpu_ticks("1 (x) S 1 2")


def test_status_fields() -> None:
    assert parse_status_kib(STATUS, "VmRSS") == 51200
    assert parse_status_kib(STATUS, "VmHWM") == 60000
    assert parse_status_cpus_allowed(STATUS) == "0"
    with pytest.raises(ValueError, match="no VmSwap"):
        parse_status_kib(STATUS, "VmSwap")


def test_limits_cpuinfo_meminfo() -> None:
    assert parse_limits_nofile(LIMITS) == ("11024", "20000")
    assert parse_limits_nofile("nothing") is None
    assert parse_cpuinfo_model(CPUINFO) == "AMD EPYC 7B13"
    assert parse_cpuinfo_model("") == "unknown"
    assert parse_meminfo_total_kib(MEMINFO) == 24683520


def test_proc_stat_cores_and_load() -> None:
    before = parse_proc_stat(PROC_STAT)
    assert before[0] == CoreTimes(used=260, steal=20, total=781)
    assert set(before) == {0, 1}
    after = {
        0: CoreTimes(used=260 + 50, steal=20 + 10, total=781 + 100),
        1: CoreTimes(used=150, steal=0, total=654),
    }
    assert core_load(before, after, 0) == pytest.approx((0.5, 0.1))
    assert core_load(before, after, 1) is None  # no time passed
    assert core_load(before, after, 7) is None


def test_read_sample_from_a_fake_proc(tmp_path: Path) -> None:
    pid_dir = tmp_path / "4242"
    pid_dir.mkdir()
    (pid_dir / "stat").write_text(STAT)
    (pid_dir / "status").write_text(STATUS)
    sample = read_sample(4242, root=tmp_path)
    assert sample.rss_bytes == 51200 * 1024
    assert sample.cpu_s > 0
    with pytest.raises(FileNotFoundError):
        read_sample(1, root=tmp_path)


def test_machine_info_from_a_fake_proc(tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text(CPUINFO)
    (tmp_path / "meminfo").write_text(MEMINFO)
    info = machine_info(tmp_path)
    assert info["cpu_model"] == "AMD EPYC 7B13"
    assert info["mem_total_gib"] == 23.5
    assert info["nproc"] >= 1


def test_ppid_and_the_process_tree() -> None:
    assert parse_stat_ppid("77 (a (b) c) S 12 77 77 0") == 12
    with pytest.raises(ValueError, match="not a /proc/PID/stat line"):
        parse_stat_ppid("no parens")
    parents = {1: 0, 10: 1, 11: 10, 12: 10, 13: 11, 20: 1}
    assert tree_pids(10, parents) == [10, 11, 12, 13]
    assert tree_pids(99, parents) == [99]  # gone: the root alone (its read then fails)


def test_worker_index_from_the_environment(tmp_path: Path) -> None:
    assert parse_environ_value(b"A=1\0ENCLAVE_WORKER_INDEX=3\0B=", "ENCLAVE_WORKER_INDEX") == "3"
    assert parse_environ_value(b"A=1\0", "ENCLAVE_WORKER_INDEX") is None
    (tmp_path / "5").mkdir()
    (tmp_path / "5" / "environ").write_bytes(b"ENCLAVE_WORKER_INDEX=1\0")
    assert read_worker_index(5, root=tmp_path) == 1
    assert read_worker_index(6, root=tmp_path) is None


def test_read_tree_adds_up_a_supervisor_and_its_workers(tmp_path: Path) -> None:
    def proc(pid: int, ppid: int, ticks: int, kib: int) -> None:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(
            f"{pid} (python) S {ppid} 1 1 0 -1 0 0 0 0 0 {ticks} 0 0 0 20 0 1 0\n"
        )
        (tmp_path / str(pid) / "status").write_text(f"VmRSS:\t{kib} kB\n")

    proc(100, 1, 100, 1000)  # the supervisor
    proc(101, 100, 200, 2000)  # its workers
    proc(102, 100, 300, 3000)
    proc(200, 1, 999, 9999)  # someone else
    (tmp_path / "self").mkdir()
    tree = read_tree(100, root=tmp_path)
    assert sorted(tree) == [100, 101, 102]
    total = sum_samples(tree)
    assert total is not None
    assert total.rss_bytes == 6000 * 1024
    assert total.cpu_s == pytest.approx(600 / os.sysconf("SC_CLK_TCK"))
    assert sum_samples({}) is None
    assert read_tree(4242, root=tmp_path) == {}
