"""Peer servers speaking the same chat.v1 subset, for side-by-side comparison.

Each module runs as ``python -m bench.peers.NAME --port P --jwt-secret S [--agent-delay-ms D]``.
They share :mod:`bench.peers._chat`: the handshake check (the server's own HS256
verifier, so every peer spends the same on crypto), the frames and the echo agent.
"""
