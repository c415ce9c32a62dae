"""The bench's Redis side: RESP, ``INFO commandstats``, ``MONITOR`` lines, the split of a
window's calls into round trips and script calls; and one short look at a real redis-server."""

from __future__ import annotations

import socket

import pytest

from app.testing import RedisServer
from bench.harness._redis import (
    BenchRedis,
    MonitorSample,
    RedisError,
    encode_command,
    monitor_sample,
    parse_commandstats,
    parse_monitor_line,
    read_reply,
    redis_window,
)

STATS = """# Commandstats\r
cmdstat_evalsha:calls=10,usec=900,usec_per_call=90.00,rejected_calls=0,failed_calls=0\r
cmdstat_xadd:calls=40,usec=200,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r
cmdstat_set:calls=4,usec=8,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r
cmdstat_config|resetstat:calls=1,usec=51,usec_per_call=51.00,rejected_calls=0,failed_calls=0\r
cmdstat_info:calls=2,usec=60,usec_per_call=30.00,rejected_calls=0,failed_calls=0\r
cmdstat_broken:calls=x\r
"""


def test_encode_command_is_a_resp_array() -> None:
    assert encode_command("SET", "k", 7) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n7\r\n"


def test_read_reply_of_each_kind() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"+OK\r\n:42\r\n$5\r\nhe\r\nl\r\n$-1\r\n*2\r\n$1\r\nx\r\n:1\r\n-ERR no\r\n")
        buf = bytearray()
        assert read_reply(buf, b) == "OK"
        assert read_reply(buf, b) == 42
        assert read_reply(buf, b) == b"he\r\nl"  # a bulk string may hold CRLF
        assert read_reply(buf, b) is None
        assert read_reply(buf, b) == [b"x", 1]
        with pytest.raises(RedisError, match="ERR no"):
            read_reply(buf, b)
        a.close()
        with pytest.raises(RedisError, match="closed"):
            read_reply(buf, b)


def test_parse_commandstats() -> None:
    stats = parse_commandstats(STATS)
    assert stats["evalsha"] == (10, 900)
    assert stats["config|resetstat"] == (1, 51)
    assert "broken" not in stats
    assert parse_commandstats("") == {}


def test_parse_monitor_line() -> None:
    assert parse_monitor_line('1700000000.1 [0 lua] "XADD" "s" "*"') == ("xadd", True)
    assert parse_monitor_line('1700000000.1 [0 127.0.0.1:5555] "evalsha" "ab" "1"') == (
        "evalsha",
        False,
    )
    assert parse_monitor_line("OK") is None
    assert parse_monitor_line("1.0 [0 lua] nothing quoted") is None


def test_a_window_split_by_the_monitor_sample() -> None:
    sample = MonitorSample.from_lines(
        [
            "OK",
            '1.0 [0 127.0.0.1:1] "evalsha" "x"',
            '1.0 [0 lua] "xadd" "s"',
            '1.0 [0 lua] "xadd" "s"',
            '1.0 [0 lua] "xadd" "s"',
            '1.0 [0 127.0.0.1:1] "xadd" "cancels"',  # one XADD in four is the client's
            '1.0 [0 127.0.0.1:9] "info" "commandstats"',  # the harness's: left out
        ]
    )
    assert sample.client == {"evalsha": 1, "xadd": 1}
    assert sample.script_share("xadd") == 0.75
    assert sample.script_share("set") == 0.0  # never seen: a round trip
    window = redis_window(parse_commandstats(STATS), sample, cpu_s=0.5)
    assert window.calls == {"evalsha": 10, "set": 4, "xadd": 40}
    assert window.commands == 54
    assert window.script_calls == 30  # 3/4 of the XADDs
    assert window.round_trips == 24  # 10 EVALSHA + 10 XADD + 4 SET
    assert window.as_dict()["commands"] == 54
    assert redis_window({}, MonitorSample(), None).round_trips == 0


def test_against_a_real_redis_server(redis: RedisServer) -> None:
    """RESETSTAT, a script of two calls and one plain call, commandstats, MONITOR."""
    bench = BenchRedis(redis.host, redis.port, redis.pid())
    assert bench.next_url() == f"redis://{redis.host}:{redis.port}/0?prefix=b1"
    assert bench.next_url().endswith("?prefix=b2")
    bench.reset_stats()
    script = "redis.call('SET', KEYS[1], '1'); return redis.call('GET', KEYS[1])"
    assert bench.command("EVAL", script, 1, "bench-test:k") == b"1"
    bench.command("SET", "bench-test:j", "2")
    stats = bench.commandstats()
    assert stats["eval"][0] == 1
    assert stats["set"][0] == 2
    assert stats["get"][0] == 1
    assert monitor_sample(redis.host, redis.port, 0.05) == MonitorSample()  # nothing sent
    bench.command("DEL", "bench-test:k", "bench-test:j")
