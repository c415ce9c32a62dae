"""One connection's session: its nursery owns its context, state, emitter and runs.

- ``_transport``: the small interface the session needs from whatever carries frames.
- ``_session``: ``run_session``, the thin Trio layer around the core's state machine.
- ``_emitter``: stamps, numbers and encodes a connection's events, once each.
"""

from ._session import run_session as run_session
from ._transport import HandshakeInfo as HandshakeInfo
from ._transport import SendTimeout as SendTimeout
from ._transport import Transport as Transport
from ._transport import TransportClosed as TransportClosed
from ._transport import UnsupportedFrame as UnsupportedFrame

__all__ = [
    "HandshakeInfo",
    "SendTimeout",
    "Transport",
    "TransportClosed",
    "UnsupportedFrame",
    "run_session",
]
