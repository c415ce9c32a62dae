"""The lean transport: Trio sockets, one task per connection, HTTP/1.1 answered here.

- ``_server``: ``serve_lean``: accept, HTTP routes, the upgrade, then the session.
- ``_connection``: ``LeanTransport``, websockets' sans-I/O protocol on one stream.
- ``_poller``: ``ReadPoller``, one epoll for every connection's reads (registered once).
- ``_accept``: the accept loop (one connection per scheduler pass).
"""

from ._connection import LeanTransport as LeanTransport
from ._poller import ReadPoller as ReadPoller
from ._server import serve_lean as serve_lean

__all__ = [
    "LeanTransport",
    "ReadPoller",
    "serve_lean",
]
