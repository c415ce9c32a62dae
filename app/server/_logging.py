"""The process's log output: one line of text a record, or one JSON object a line.

``--log-format json`` writes each record as ``{"ts", "level", "logger", "message"}``
plus ``connection_id`` and ``run_id`` when the call passed them (``extra=``), and
``exc_info`` for a traceback. Both formats redact anything shaped like a JWT (three
base64url parts, the first starting ``eyJ``): the server never logs a token on
purpose, and a library that logs a request line (``?access_token=...``) does not
get one out either.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
from typing import IO, Any, Final

__all__ = [
    "CONTEXT_FIELDS",
    "REDACTED",
    "TEXT_FORMAT",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "redact_tokens",
]

#: The text format: time, level, logger, message.
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Record attributes (``extra=``) a JSON line carries when a call passed them.
CONTEXT_FIELDS: Final = ("connection_id", "run_id")
#: What a token is replaced with.
REDACTED: Final = "<redacted>"
# A JWS or JWE in compact form: its header is base64url JSON, so it starts with "eyJ".
_JWT: Final = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_.-]*")


def redact_tokens(text: str) -> str:
    """``text`` with every JWT-shaped string replaced by :data:`REDACTED`."""
    return _JWT.sub(REDACTED, text) if "eyJ" in text else text


class TextFormatter(logging.Formatter):
    """The stdlib's formatter (:data:`TEXT_FORMAT`), tokens redacted."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        return redact_tokens(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line; tokens redacted."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = str(value)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        # A token is base64url and dots: JSON escapes nothing in it, so redacting the
        # encoded line finds what redacting each field would.
        return redact_tokens(json.dumps(out, ensure_ascii=False, default=str))


def configure_logging(level: str, log_format: str, stream: IO[str] | None = None) -> None:
    """Log ``level`` and above to ``stream`` (stderr) as ``log_format`` (text or json).

    As :func:`logging.basicConfig`: does nothing if the root logger has handlers.
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # coredis logs each script it loads into Redis (an expected retry) at INFO.
    logging.getLogger("coredis").setLevel(max(logging.WARNING, logging.getLogger().level))
