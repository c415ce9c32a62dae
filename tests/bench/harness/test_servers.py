"""The servers under test: names, thread stores, and enclave's command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.harness._servers import (
    SERVERS,
    ServerOptions,
    parse_servers,
    server_argv,
    store_arg,
    store_path,
    with_stores,
    with_workers,
)


def test_with_stores_puts_each_enclave_once_per_store_and_each_peer_once() -> None:
    specs = with_stores([SERVERS["aiohttp"], SERVERS["enclave-lean"]], ("memory", "sqlite"))
    assert [(s.name, s.store) for s in specs] == [
        ("aiohttp", "memory"),
        ("enclave-lean", "memory"),
        ("enclave-lean+sqlite", "sqlite"),
    ]
    assert specs[2].label == "enclave (lean, sqlite)"
    (redis,) = with_stores([SERVERS["enclave-lean"]], ("redis",))
    assert (redis.name, redis.store, redis.label) == (
        "enclave-lean+redis",
        "redis",
        "enclave (lean, redis)",
    )
    with pytest.raises(ValueError, match="unknown store 'mongo'"):
        with_stores([SERVERS["enclave-lean"]], ("mongo",))


def test_parse_servers_takes_a_store_suffix_on_enclave_only() -> None:
    assert [s.name for s in parse_servers("enclave-asgi+sqlite,enclave-lean+memory")] == [
        "enclave-asgi+sqlite",
        "enclave-lean",
    ]
    for bad in ("aiohttp+sqlite", "enclave-lean+mongo", "aiohttp+w2", "enclave-lean+w0", "nope"):
        with pytest.raises(ValueError, match="unknown server"):
            parse_servers(bad)


def test_server_argv_names_the_store(tmp_path: Path) -> None:
    opts = ServerOptions(secret="s" * 32)
    log = tmp_path / "server.log"
    memory, sqlite = with_stores([SERVERS["enclave-lean"]], ("memory", "sqlite"))
    assert store_path(memory, log) is None
    assert store_path(SERVERS["aiohttp"], log) is None
    db = store_path(sqlite, log)
    assert db == tmp_path / "threads.db"
    argv = server_argv(sqlite, 9999, opts, db)
    assert argv[argv.index("--store") + 1] == f"sqlite:{db}"
    argv = server_argv(memory, 9999, opts)
    assert argv[argv.index("--store") + 1] == "memory"
    assert "--store" not in server_argv(SERVERS["aiohttp"], 9999, opts)


def test_parse_servers_takes_redis_and_a_worker_count() -> None:
    (spec,) = parse_servers("enclave-lean+redis+w2")
    assert (spec.name, spec.store, spec.workers) == ("enclave-lean+redis+w2", "redis", 2)
    assert spec.label == "enclave (lean, redis, 2 workers)"
    (one,) = parse_servers("enclave-asgi+w1")
    assert (one.name, one.workers) == ("enclave-asgi", 1)
    with pytest.raises(ValueError, match="unknown server"):
        parse_servers("enclave-lean+sqlite+w2")  # one SQLite file, several workers: refused


def test_with_workers_leaves_sqlite_with_several_workers_out() -> None:
    specs = with_stores(
        [SERVERS["aiohttp"], SERVERS["enclave-lean"]], ("memory", "sqlite", "redis")
    )
    out, skipped = with_workers(specs, (1, 2))
    assert [(s.name, s.workers) for s in out] == [
        ("aiohttp", 1),
        ("enclave-lean", 1),
        ("enclave-lean+w2", 2),
        ("enclave-lean+sqlite", 1),
        ("enclave-lean+redis", 1),
        ("enclave-lean+redis+w2", 2),
    ]
    assert skipped == ["enclave-lean+sqlite+w2"]
    with pytest.raises(ValueError, match="workers must be >= 1"):
        with_workers(specs, (0,))


def test_server_argv_of_redis_and_workers(tmp_path: Path) -> None:
    url = "redis://127.0.0.1:7000/0?prefix=b3"
    opts = ServerOptions(secret="s" * 32, redis_url=url)
    (spec,) = parse_servers("enclave-lean+redis+w2")
    argv = server_argv(spec, 9999, opts)
    assert argv[argv.index("--store") + 1] == url
    assert argv[argv.index("--workers") + 1] == "2"
    (single,) = parse_servers("enclave-lean+redis")
    assert "--workers" not in server_argv(single, 9999, opts)
    assert store_path(spec, tmp_path / "server.log") is None
    with pytest.raises(ValueError, match="redis_url"):
        store_arg(spec, ServerOptions(secret="s" * 32))
