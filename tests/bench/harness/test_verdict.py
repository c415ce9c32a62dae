"""When a measurement is trusted."""

from __future__ import annotations

from bench.harness._verdict import CLIENT_SATURATION, OK, client_saturated, verdict


def test_client_saturation_threshold() -> None:
    assert not client_saturated(0.89)
    assert client_saturated(CLIENT_SATURATION)
    assert client_saturated(1.2)


def test_a_clean_measurement_is_ok() -> None:
    assert verdict(client_cpu=0.5, users=100, connected=100, turns=10) == OK


def test_saturated_client_makes_it_invalid() -> None:
    text = verdict(client_cpu=0.95, users=100, connected=100, turns=10)
    assert text.startswith("INVALID: client saturated (95%")


def test_every_reason_is_listed() -> None:
    text = verdict(client_cpu=0.93, users=100, connected=90, turns=0, server_core_other=0.4)
    assert text.startswith("INVALID: ")
    for part in ("client saturated", "server core shared (40%", "only 90/100", "no turn"):
        assert part in text


def test_hold_runs_need_no_turns() -> None:
    assert verdict(client_cpu=0.1, users=5, connected=5, turns=0, run_turns=False) == OK


def test_a_handful_of_turns_for_many_users_is_overloaded() -> None:
    # One turn per ten users is the floor; below it the window measures nothing but latency.
    assert verdict(client_cpu=0.1, users=5000, connected=5000, turns=500) == OK
    text = verdict(client_cpu=0.1, users=5000, connected=5000, turns=3)
    assert text == "INVALID: only 3 turns for 5000 users in the window (overloaded)"
