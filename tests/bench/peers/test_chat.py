"""The peers speak the server's chat.v1 subset: same frames, same handshake check."""

from __future__ import annotations

import json
import time

import pytest

from app.auth._tokens import mint_token
from app.testing._schema import validate_server_event
from bench.peers._chat import (
    Accepted,
    PeerAuth,
    Rejected,
    connection_ready,
    handle_text,
    run_steps,
)

SECRET = b"s" * 40


def test_connection_ready_conforms_to_the_schema() -> None:
    frame = json.loads(connection_ready("alice"))
    validate_server_event(frame)
    assert frame["user_id"] == "alice"


def test_a_turn_is_five_conforming_events_of_one_run() -> None:
    reply = handle_text(
        json.dumps({"type": "user_message", "text": "hello big world", "client_id": "c1"})
    )
    assert reply.frame is None
    assert reply.run is not None
    frames = [json.loads(f) for f in run_steps(reply.run)]
    for frame in frames:
        validate_server_event(frame)
    assert [f["type"] for f in frames] == [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_completed",
    ]
    assert [f["seq"] for f in frames] == [1, 2, 3, 4, 5]
    assert len({f["run_id"] for f in frames}) == 1
    assert len({f["thread_id"] for f in frames}) == 1
    assert frames[0]["client_id"] == "c1"
    assert frames[-1]["result"] == {"text": "hello big world", "words": 3}


def test_the_thread_id_is_kept() -> None:
    reply = handle_text(json.dumps({"type": "user_message", "text": "x", "thread_id": "t-1"}))
    assert reply.run is not None
    assert all(json.loads(f)["thread_id"] == "t-1" for f in run_steps(reply.run))
    assert "client_id" not in json.loads(run_steps(reply.run)[0])


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ('{"type": "ping"}', None),
        ("{oops", "invalid_json"),
        ("[1]", "invalid_message"),
        ('{"type": "hello"}', "unknown_type"),
        ('{"type": "user_message"}', "invalid_message"),
    ],
)
def test_other_frames_get_pong_or_an_error(text: str, code: str | None) -> None:
    reply = handle_text(text)
    assert reply.run is None
    assert reply.frame is not None
    frame = json.loads(reply.frame)
    validate_server_event(frame)
    assert frame.get("code") == code


def test_handshake_accepts_a_valid_token_in_any_carrier() -> None:
    auth = PeerAuth.from_secret(SECRET)
    token = mint_token(secret=SECRET, algorithm="HS256", subject="bob", ttl_s=60, now=time.time())
    header = auth.check([("Authorization", f"Bearer {token}")], ["chat.v1"], "")
    assert header == Accepted("bob", "chat.v1")
    assert auth.check([], ["chat.v1", f"bearer.{token}"], "") == Accepted("bob", "chat.v1")
    assert auth.check([], [], f"access_token={token}") == Accepted("bob", None)


def test_handshake_refuses_bad_tokens_with_401_and_bad_requests_with_400() -> None:
    auth = PeerAuth.from_secret(SECRET)
    other = mint_token(
        secret=b"o" * 40, algorithm="HS256", subject="eve", ttl_s=60, now=time.time()
    )
    refused = auth.check([("authorization", f"Bearer {other}")], [], "")
    assert isinstance(refused, Rejected)
    assert refused.status == 401
    assert json.loads(refused.body)["error"] == "invalid_token"
    assert ("www-authenticate", 'Bearer error="invalid_token"') in refused.headers
    missing = auth.check([], [], "")
    assert isinstance(missing, Rejected)
    assert missing.status == 401
    wrong_protocol = auth.check([], ["chat.v2"], "")
    assert isinstance(wrong_protocol, Rejected)
    assert wrong_protocol.status == 400
