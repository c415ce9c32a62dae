"""trio-enclave: one nursery, one context, one emitter per WebSocket connection.

The tree is the architecture, lowest layer first; each layer imports only those above it
in this list:

- ``core/``: the chat.v1 protocol without I/O (messages, events, the state machine).
- ``auth/``: tokens (joserfc) and the verified ``UserContext``.
- ``agents/``: what a run does (the ``Agent`` interface, ``RunContext``, ``echo``).
- ``services/``: what the process shares, built once (settings, services, lifecycle,
  admission, the timer).
- ``session/``: one connection's nursery around the state machine, and the small
  ``Transport`` interface it needs.
- ``web/``: the chat page's files, and the dev-mode token minter.
- ``transports/``: ``lean/`` (Trio sockets, the default) and ``asgi/`` (Quart-Trio on
  Hypercorn), with the same file names in each.
- ``server/``: ``serve()``: the process, its signals and its drain.
- ``cli/``: the ``enclave`` command and its terminal chat client.
- ``testing/``: the in-memory transport and the schema, for tests; not loaded here.

``import app`` loads neither Quart nor Hypercorn (``create_app`` loads them when first
used) nor ``app.testing`` (its names here load it when first used).
"""

import types as _types
import typing as _typing

from .agents import Agent as Agent
from .agents import AgentOptions as AgentOptions
from .agents import EchoAgent as EchoAgent
from .agents import Emit as Emit
from .agents import RunContext as RunContext
from .agents import load_agent as load_agent
from .auth import AuthConfig as AuthConfig
from .auth import AuthError as AuthError
from .auth import TokenVerifier as TokenVerifier
from .auth import UserContext as UserContext
from .auth import VerifiedClaims as VerifiedClaims
from .auth import mint_token as mint_token
from .core import PROTOCOL as PROTOCOL
from .core import AgentThinking as AgentThinking
from .core import CloseCode as CloseCode
from .core import CloseReason as CloseReason
from .core import ErrorCode as ErrorCode
from .core import ToolCompleted as ToolCompleted
from .core import ToolExecuting as ToolExecuting
from .server import RunningServer as RunningServer
from .server import serve as serve
from .services import ConfigError as ConfigError
from .services import ServerLifecycle as ServerLifecycle
from .services import Services as Services
from .services import Settings as Settings
from .services import build_services as build_services
from .services import load_settings as load_settings
from .session import HandshakeInfo as HandshakeInfo
from .session import SendTimeout as SendTimeout
from .session import Transport as Transport
from .session import TransportClosed as TransportClosed
from .session import UnsupportedFrame as UnsupportedFrame
from .session import run_session as run_session
from .transports.lean import LeanTransport as LeanTransport

if _typing.TYPE_CHECKING:
    from .testing import MemoryClient as MemoryClient
    from .testing import MemoryTransport as MemoryTransport
    from .testing import PeerClosed as PeerClosed
    from .testing import memory_transport_pair as memory_transport_pair
    from .transports.asgi import create_app as create_app

_LAZY = _types.MappingProxyType(
    {
        "create_app": "app.transports.asgi",
        "MemoryClient": "app.testing",
        "MemoryTransport": "app.testing",
        "PeerClosed": "app.testing",
        "memory_transport_pair": "app.testing",
    }
)


def __getattr__(name: str) -> _typing.Any:
    # Names whose modules the server does not need: loaded on first use.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'app' has no attribute {name!r}")


__all__ = [
    "PROTOCOL",
    "Agent",
    "AgentOptions",
    "AgentThinking",
    "AuthConfig",
    "AuthError",
    "CloseCode",
    "CloseReason",
    "ConfigError",
    "EchoAgent",
    "Emit",
    "ErrorCode",
    "HandshakeInfo",
    "LeanTransport",
    "MemoryClient",
    "MemoryTransport",
    "PeerClosed",
    "RunContext",
    "RunningServer",
    "SendTimeout",
    "ServerLifecycle",
    "Services",
    "Settings",
    "TokenVerifier",
    "ToolCompleted",
    "ToolExecuting",
    "Transport",
    "TransportClosed",
    "UnsupportedFrame",
    "UserContext",
    "VerifiedClaims",
    "build_services",
    "create_app",
    "load_agent",
    "load_settings",
    "memory_transport_pair",
    "mint_token",
    "run_session",
    "serve",
]
