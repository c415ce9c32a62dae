"""For tests of sessions, agents and clients; never loaded by the server.

- ``_components``: find redis-server, nginx, ...; skip when missing (fail under CI).
- ``_memory``: an in-memory transport and client (a session with no sockets).
- ``_redis``: a private redis-server on an ephemeral port.
- ``_nginx``: nginx in front of several servers: its config rendered, and a private nginx.
- ``_mock_llm``: a local OpenAI-compatible streaming server with scripted replies.
- ``_schema``: the chat.v1 JSON schema, to check frames against.
"""

from ._components import find_component as find_component
from ._components import missing_component as missing_component
from ._memory import MemoryClient as MemoryClient
from ._memory import MemoryTransport as MemoryTransport
from ._memory import PeerClosed as PeerClosed
from ._memory import memory_transport_pair as memory_transport_pair
from ._mock_llm import MockLLM as MockLLM
from ._mock_llm import RecordedRequest as RecordedRequest
from ._mock_llm import Reply as Reply
from ._mock_llm import answer_responder as answer_responder
from ._mock_llm import error_reply as error_reply
from ._mock_llm import malformed_reply as malformed_reply
from ._mock_llm import open_mock_llm as open_mock_llm
from ._mock_llm import scripted as scripted
from ._mock_llm import text_reply as text_reply
from ._mock_llm import tool_reply as tool_reply
from ._nginx import NginxProxy as NginxProxy
from ._nginx import NginxTLS as NginxTLS
from ._nginx import nginx_binary as nginx_binary
from ._nginx import nginx_proxy as nginx_proxy
from ._nginx import render_nginx_config as render_nginx_config
from ._nginx import render_nginx_site as render_nginx_site
from ._redis import RedisServer as RedisServer
from ._redis import free_port as free_port
from ._redis import redis_server as redis_server

__all__ = [
    "MemoryClient",
    "MemoryTransport",
    "MockLLM",
    "NginxProxy",
    "NginxTLS",
    "PeerClosed",
    "RecordedRequest",
    "RedisServer",
    "Reply",
    "answer_responder",
    "error_reply",
    "find_component",
    "free_port",
    "malformed_reply",
    "memory_transport_pair",
    "missing_component",
    "nginx_binary",
    "nginx_proxy",
    "open_mock_llm",
    "redis_server",
    "render_nginx_config",
    "render_nginx_site",
    "scripted",
    "text_reply",
    "tool_reply",
]
