"""The servers under test: names, thread stores, and enclave's command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.harness._servers import (
    SERVERS,
    ServerOptions,
    parse_servers,
    server_argv,
    store_path,
    with_stores,
)


def test_with_stores_puts_each_enclave_once_per_store_and_each_peer_once() -> None:
    specs = with_stores([SERVERS["aiohttp"], SERVERS["enclave-lean"]], ("memory", "sqlite"))
    assert [(s.name, s.store) for s in specs] == [
        ("aiohttp", "memory"),
        ("enclave-lean", "memory"),
        ("enclave-lean+sqlite", "sqlite"),
    ]
    assert specs[2].label == "enclave (lean, sqlite)"
    with pytest.raises(ValueError, match="unknown store 'redis'"):
        with_stores([SERVERS["enclave-lean"]], ("redis",))


def test_parse_servers_takes_a_store_suffix_on_enclave_only() -> None:
    assert [s.name for s in parse_servers("enclave-asgi+sqlite,enclave-lean+memory")] == [
        "enclave-asgi+sqlite",
        "enclave-lean",
    ]
    for bad in ("aiohttp+sqlite", "enclave-lean+redis", "nope"):
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
