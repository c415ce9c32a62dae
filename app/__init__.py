"""trio-enclave: one nursery, one context, one emitter per WebSocket connection."""

from ._agent import Agent as Agent
from ._agent import AgentOptions as AgentOptions
from ._agent import EchoAgent as EchoAgent
from ._agent import Emit as Emit
from ._agent import RunContext as RunContext
from ._agent import load_agent as load_agent
from ._asgi import create_app as create_app
from ._auth import AuthConfig as AuthConfig
from ._auth import AuthError as AuthError
from ._auth import TokenVerifier as TokenVerifier
from ._auth import VerifiedClaims as VerifiedClaims
from ._auth import mint_token as mint_token
from ._build import build_services as build_services
from ._codes import PROTOCOL as PROTOCOL
from ._codes import CloseCode as CloseCode
from ._codes import CloseReason as CloseReason
from ._codes import ErrorCode as ErrorCode
from ._context import UserContext as UserContext
from ._events import AgentThinking as AgentThinking
from ._events import ToolCompleted as ToolCompleted
from ._events import ToolExecuting as ToolExecuting
from ._lean_ws import LeanTransport as LeanTransport
from ._memory import MemoryClient as MemoryClient
from ._memory import MemoryTransport as MemoryTransport
from ._memory import PeerClosed as PeerClosed
from ._memory import memory_transport_pair as memory_transport_pair
from ._server import RunningServer as RunningServer
from ._server import serve as serve
from ._services import ServerLifecycle as ServerLifecycle
from ._services import Services as Services
from ._session import run_session as run_session
from ._settings import ConfigError as ConfigError
from ._settings import Settings as Settings
from ._settings import load_settings as load_settings
from ._transport import HandshakeInfo as HandshakeInfo
from ._transport import SendTimeout as SendTimeout
from ._transport import Transport as Transport
from ._transport import TransportClosed as TransportClosed
from ._transport import UnsupportedFrame as UnsupportedFrame

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
