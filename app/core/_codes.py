"""Wire-level codes of chat.v1: error-event codes and WebSocket close codes/reasons."""

from __future__ import annotations

import enum

__all__ = [
    "PROTOCOL",
    "CancelReason",
    "CloseCode",
    "CloseReason",
    "ErrorCode",
    "ResumeFailure",
    "RunErrorCode",
]

PROTOCOL = "chat.v1"


class ErrorCode(enum.StrEnum):
    """``code`` of an ``error`` event: a client mistake; the connection stays open."""

    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    RUN_NOT_FOUND = "run_not_found"
    TOO_MANY_RUNS = "too_many_runs"
    RATE_LIMITED = "rate_limited"
    INVALID_TOKEN = "invalid_token"
    SHUTTING_DOWN = "shutting_down"
    #: The run of the thread is still live in another server process sharing the store.
    THREAD_BUSY = "thread_busy"


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server sends (RFC 6455 section 7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011


class CloseReason(enum.StrEnum):
    """The reason string sent with a close code."""

    IDLE_TIMEOUT = "idle_timeout"
    PONG_TIMEOUT = "pong_timeout"
    SERVER_SHUTDOWN = "server_shutdown"
    BINARY_NOT_SUPPORTED = "binary_not_supported"
    TOKEN_EXPIRED = "token_expired"
    SUBJECT_MISMATCH = "subject_mismatch"
    RATE_LIMITED = "rate_limited"
    SLOW_CONSUMER = "slow_consumer"
    MESSAGE_TOO_BIG = "message_too_big"
    INTERNAL_ERROR = "internal_error"


class RunErrorCode(enum.StrEnum):
    """``error.code`` of an ``agent_error`` event: why a run failed."""

    AGENT_FAILED = "agent_failed"
    RUN_TIMEOUT = "run_timeout"
    INVALID_EVENT = "invalid_event"
    INVALID_RESULT = "invalid_result"
    # The agent's model server (``--agent openai``) failed the run:
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_UNREACHABLE = "upstream_unreachable"
    UPSTREAM_STATUS = "upstream_status"
    UPSTREAM_INVALID = "upstream_invalid"
    TOO_MANY_TOOL_ROUNDS = "too_many_tool_rounds"


class CancelReason(enum.StrEnum):
    """``reason`` of a ``run_cancelled`` event."""

    CANCELLED_BY_CLIENT = "cancelled_by_client"
    SERVER_SHUTDOWN = "server_shutdown"
    #: The connection that started the run left and no connection of the user
    #: followed its thread again within ``resume_grace_s``.
    CLIENT_GONE = "client_gone"
    #: The server stopped without ending the run (a crash: SIGKILL, power loss); written
    #: to its thread's log when a later server process first opens the thread.
    INTERRUPTED = "interrupted"


class ResumeFailure(enum.StrEnum):
    """``reason`` of a ``resumed`` event with ``recovered: false``."""

    #: No such thread for this user: identical for another user's thread.
    UNKNOWN_THREAD = "unknown_thread"
    #: The store lost data since the client's ``epoch``: its ``after`` means nothing now.
    EPOCH_CHANGED = "epoch_changed"
    #: Events after ``after`` are gone (``history_max_events`` / ``history_ttl_s``).
    RETENTION = "retention"
