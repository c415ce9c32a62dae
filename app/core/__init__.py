"""The chat.v1 protocol without I/O: codes, client messages, server events, and the
per-connection state machine.

Plain Python: no Trio, no sockets, no clock of its own, no JOSE. The session feeds the
state machine client frames with the current time and carries out the actions it
returns. Layout:

- ``_codes``: protocol name, close codes and reasons, error and cancel codes.
- ``_messages``: parse and validate one client frame into a frozen message or an error.
- ``_events``: the server's events as frozen values, and their one JSON form.
- ``_state``: ``ConnectionState``, which owns the run table, sequence numbers, cancel
  reasons, the rate budget and the drain flag (everything that decides what happens).
"""

from ._codes import PROTOCOL as PROTOCOL
from ._codes import CancelReason as CancelReason
from ._codes import CloseCode as CloseCode
from ._codes import CloseReason as CloseReason
from ._codes import ErrorCode as ErrorCode
from ._codes import ResumeFailure as ResumeFailure
from ._codes import RunErrorCode as RunErrorCode
from ._events import AgentCompleted as AgentCompleted
from ._events import AgentDelta as AgentDelta
from ._events import AgentError as AgentError
from ._events import AgentStarted as AgentStarted
from ._events import AgentThinking as AgentThinking
from ._events import AuthOk as AuthOk
from ._events import ConnectionReady as ConnectionReady
from ._events import DuplicateMessage as DuplicateMessage
from ._events import ErrorEvent as ErrorEvent
from ._events import HistoryPage as HistoryPage
from ._events import MessageAccepted as MessageAccepted
from ._events import Pong as Pong
from ._events import Resumed as Resumed
from ._events import RunCancelled as RunCancelled
from ._events import RunEvent as RunEvent
from ._events import ServerEvent as ServerEvent
from ._events import ThreadList as ThreadList
from ._events import ToolCompleted as ToolCompleted
from ._events import ToolExecuting as ToolExecuting
from ._events import serialize as serialize
from ._events import to_wire as to_wire
from ._messages import Authenticate as Authenticate
from ._messages import CancelRun as CancelRun
from ._messages import HistoryRequest as HistoryRequest
from ._messages import Ping as Ping
from ._messages import ProtocolError as ProtocolError
from ._messages import ResumeRequest as ResumeRequest
from ._messages import ThreadsRequest as ThreadsRequest
from ._messages import UserMessage as UserMessage
from ._messages import parse_client_message as parse_client_message
from ._state import Action as Action
from ._state import CancelElsewhere as CancelElsewhere
from ._state import Close as Close
from ._state import ConnectionState as ConnectionState
from ._state import EventRefused as EventRefused
from ._state import Lookup as Lookup
from ._state import Reauthenticate as Reauthenticate
from ._state import Reply as Reply
from ._state import RunLimits as RunLimits
from ._state import StartRun as StartRun
from ._state import StopRun as StopRun
from ._state import TokenBucket as TokenBucket

__all__ = [
    "PROTOCOL",
    "Action",
    "AgentCompleted",
    "AgentDelta",
    "AgentError",
    "AgentStarted",
    "AgentThinking",
    "AuthOk",
    "Authenticate",
    "CancelElsewhere",
    "CancelReason",
    "CancelRun",
    "Close",
    "CloseCode",
    "CloseReason",
    "ConnectionReady",
    "ConnectionState",
    "DuplicateMessage",
    "ErrorCode",
    "ErrorEvent",
    "EventRefused",
    "HistoryPage",
    "HistoryRequest",
    "Lookup",
    "MessageAccepted",
    "Ping",
    "Pong",
    "ProtocolError",
    "Reauthenticate",
    "Reply",
    "ResumeFailure",
    "ResumeRequest",
    "Resumed",
    "RunCancelled",
    "RunErrorCode",
    "RunEvent",
    "RunLimits",
    "ServerEvent",
    "StartRun",
    "StopRun",
    "ThreadList",
    "ThreadsRequest",
    "TokenBucket",
    "ToolCompleted",
    "ToolExecuting",
    "UserMessage",
    "parse_client_message",
    "serialize",
    "to_wire",
]
