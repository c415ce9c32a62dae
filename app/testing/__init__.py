"""For tests of sessions, agents and clients; never loaded by the server.

- ``_memory``: an in-memory transport and client (a session with no sockets).
- ``_schema``: the chat.v1 JSON schema, to check frames against.
"""

from ._memory import MemoryClient as MemoryClient
from ._memory import MemoryTransport as MemoryTransport
from ._memory import PeerClosed as PeerClosed
from ._memory import memory_transport_pair as memory_transport_pair

__all__ = [
    "MemoryClient",
    "MemoryTransport",
    "PeerClosed",
    "memory_transport_pair",
]
