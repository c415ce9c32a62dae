"""The runtimes that carry a session's frames, one folder each, with the same file names:
``_server.py`` (HTTP, the upgrade, admission) and ``_connection.py`` (the session's
``Transport`` over one WebSocket).

- ``lean/``: Trio sockets and websockets' sans-I/O protocol (the default).
- ``asgi/``: Quart-Trio on Hypercorn (imported only when chosen).
- shared: ``_handshake`` (the handshake decision), ``_routes`` (HTTP answers and
  admission), ``_frames`` (one outbound queue for message-per-call transports),
  ``_conformance`` (the Autobahn echo route, only with ``--conformance-echo``),
  ``_accept_log`` (rate-limited accept-error logging).
"""

__all__: list[str] = []
