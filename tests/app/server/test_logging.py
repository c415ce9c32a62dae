"""Log output: text or one JSON object a line, with connection and run ids, never a token."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest

from app.server import configure_logging
from app.server._logging import REDACTED, JsonFormatter, TextFormatter, redact_tokens

if TYPE_CHECKING:
    from tests.app.conftest import E2E

TOKEN_LIKE = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"


def record(message: str, *args: object, **extra: Any) -> logging.LogRecord:
    made = logging.LogRecord("trio_enclave", logging.WARNING, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_json_lines_carry_time_level_logger_message_and_ids() -> None:
    line = JsonFormatter().format(record("run %s ended", "r1", connection_id="c1", run_id="r1"))
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "WARNING"
    assert out["logger"] == "trio_enclave"
    assert out["message"] == "run r1 ended"
    assert (out["connection_id"], out["run_id"]) == ("c1", "r1")
    assert out["ts"].endswith("+00:00")


def test_json_lines_leave_out_ids_they_do_not_have() -> None:
    out = json.loads(JsonFormatter().format(record("plain")))
    assert set(out) == {"ts", "level", "logger", "message"}


def test_a_traceback_stays_on_the_json_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        made = record("failed")
        made.exc_info = sys.exc_info()
        made.stack_info = "Stack (most recent call last):\n  here"
    line = JsonFormatter().format(made)
    assert line.count("\n") == 0
    out = json.loads(line)
    assert "RuntimeError: boom" in out["exc_info"]
    assert "here" in out["stack_info"]


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()])
def test_tokens_are_redacted_in_both_formats(formatter: logging.Formatter) -> None:
    line = formatter.format(record("GET /ws?access_token=%s HTTP/1.1", TOKEN_LIKE))
    assert TOKEN_LIKE not in line
    assert REDACTED in line


def test_redaction_leaves_other_text_alone() -> None:
    text = "eyJ alone, conn_abc, run_x.y and a.b.c"
    assert redact_tokens(text) == text


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_configure_logging_in_a_fresh_process(log_format: str) -> None:
    code = (
        "import logging; from app.server import configure_logging\n"
        f"configure_logging('info', {log_format!r})\n"
        "logging.getLogger('trio_enclave').info('hello', extra={'connection_id': 'c1'})\n"
        "logging.getLogger('trio_enclave').debug('not shown')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    [line] = done.stderr.splitlines()
    if log_format == "json":
        assert json.loads(line)["connection_id"] == "c1"
    else:
        assert line.endswith(" INFO trio_enclave: hello")


def test_configure_logging_writes_to_the_given_stream() -> None:
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()
    stream = io.StringIO()
    try:
        configure_logging("warning", "json", stream)
        logging.getLogger("trio_enclave.t").warning("w")
    finally:
        for handler in root.handlers:
            root.removeHandler(handler)
        root.handlers.extend(saved)
    assert json.loads(stream.getvalue())["message"] == "w"


@contextmanager
def json_log() -> Iterator[io.StringIO]:
    """Every record of the process at DEBUG, as JSON lines, into the yielded buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture(params=["asgi", "lean"])
def transport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


async def test_a_failing_auth_never_logs_its_token(e2e: E2E) -> None:
    wrong = e2e.token("mallory", secret=b"another-secret-0123456789abcdefghijkl")
    expired = e2e.token("alice", ttl_s=1.0, now=0.0)
    with json_log() as stream:
        async with e2e.server(log_level="debug") as live:
            assert (await live.reject(wrong)).status == 401
            assert (await live.reject(query=f"access_token={expired}")).status == 401
            async with live.chat() as chat:
                await chat.send({"type": "auth", "token": wrong})
                assert (await chat.expect("error"))["code"] == "invalid_token"
            # What a library might log: the request line with its query.
            logging.getLogger("hypercorn.error").warning("bad request: /ws?access_token=%s", wrong)
    output = stream.getvalue()
    assert output, "nothing was logged"
    for line in output.splitlines():
        json.loads(line)
    assert wrong not in output
    assert expired not in output
    assert wrong.split(".")[2] not in output  # not even the signature
    assert REDACTED in output
