"""/proc parsing on fake files."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.harness._procfs import (
    CoreTimes,
    core_load,
    machine_info,
    parse_cpuinfo_model,
    parse_limits_nofile,
    parse_meminfo_total_kib,
    parse_proc_stat,
    parse_stat_cpu_ticks,
    parse_status_cpus_allowed,
    parse_status_kib,
    read_sample,
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
