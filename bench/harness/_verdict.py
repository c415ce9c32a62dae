"""Whether a measurement can be trusted: pure functions."""

from __future__ import annotations

__all__ = [
    "CLIENT_SATURATION",
    "NOISE",
    "OK",
    "OVERLOAD_USERS_PER_TURN",
    "client_saturated",
    "verdict",
]

#: Client CPU, as a fraction of the cores the clients are pinned to, from which the
#: load generator itself may be what limits the numbers.
CLIENT_SATURATION = 0.9
OK = "ok"
#: Busy time on the server's core that is not the server's (other processes, steal),
#: as a fraction of the core, from which its numbers are not the server's alone.
NOISE = 0.15
#: Fewer turns in the window than one per this many users: the server is overloaded.
OVERLOAD_USERS_PER_TURN = 10


def client_saturated(client_cpu: float, threshold: float = CLIENT_SATURATION) -> bool:
    """``client_cpu``: CPU seconds per wall second of all client processes / their cores."""
    return client_cpu >= threshold


def verdict(
    *,
    client_cpu: float,
    users: int,
    connected: int,
    turns: int,
    run_turns: bool = True,
    threshold: float = CLIENT_SATURATION,
    server_core_other: float | None = None,
    client_core_other: float | None = None,
) -> str:
    """``ok``, or ``INVALID: <reasons>`` when the numbers do not measure the server at N users."""
    reasons: list[str] = []
    if client_saturated(client_cpu, threshold):
        reasons.append(f"client saturated ({client_cpu:.0%} of its core(s))")
    if server_core_other is not None and server_core_other >= NOISE:
        reasons.append(f"server core shared ({server_core_other:.0%} used by others)")
    if client_core_other is not None and client_core_other >= NOISE:
        reasons.append(f"client core shared ({client_core_other:.0%} used by others)")
    if connected < users:
        reasons.append(f"only {connected}/{users} users connected")
    if run_turns and turns == 0:
        reasons.append("no turn completed in the window (overloaded)")
    elif run_turns and turns * OVERLOAD_USERS_PER_TURN < users:
        # A turn takes longer than the window: the few that finish say nothing of the rate.
        reasons.append(f"only {turns} turns for {users} users in the window (overloaded)")
    return OK if not reasons else "INVALID: " + "; ".join(reasons)
