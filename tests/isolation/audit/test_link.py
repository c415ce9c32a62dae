"""One audited connection: the limits it paces itself by and the URLs it accepts."""

from __future__ import annotations

import pytest

from isolation.audit._link import Endpoint, Limits


def test_client_limits_follow_what_the_server_advertises() -> None:
    ready = {"limits": {"max_runs": 4, "rate_per_s": 20.0, "rate_burst": 40}}
    assert Limits.from_ready(ready, None) == Limits(max_runs=4, rate_per_s=10.0, burst=10)
    assert Limits.from_ready({}, None) == Limits(max_runs=None, rate_per_s=10.0, burst=1)
    assert Limits.from_ready(ready, 3.0).rate_per_s == 3.0
    assert Limits.from_ready({"limits": {"rate_per_s": "x"}}, None).rate_per_s == 10.0


def test_endpoints_parse_ws_and_wss_urls() -> None:
    plain = Endpoint.parse("ws://127.0.0.1:8000/ws?x=1")
    assert (plain.host, plain.port, plain.resource, plain.tls) == (
        "127.0.0.1",
        8000,
        "/ws?x=1",
        False,
    )
    secure = Endpoint.parse("wss://chat.example")
    assert (secure.port, secure.resource, secure.host_header, secure.tls) == (
        443,
        "/",
        "chat.example",
        True,
    )
    with pytest.raises(ValueError, match="not a ws"):
        Endpoint.parse("http://x/ws")
