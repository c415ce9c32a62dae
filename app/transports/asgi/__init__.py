"""The ASGI transport: Quart-Trio on Hypercorn. Importing it loads Quart and Hypercorn.

- ``_server``: ``create_app``, the routes and the WebSocket endpoint.
- ``_connection``: ``QuartTransport``, the session's Transport over a Quart websocket.
- ``_hypercorn``: Hypercorn's config and ``serve_asgi``, and containing its bugs.
"""

from ._connection import QuartTransport as QuartTransport
from ._hypercorn import serve_asgi as serve_asgi
from ._server import create_app as create_app

__all__ = [
    "QuartTransport",
    "create_app",
    "serve_asgi",
]
