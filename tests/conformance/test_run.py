"""The runner's server handling and rounds: real servers, a fake ``wstest`` (no Python 2.7)."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import attrs
import pytest

from tests.conformance._run import (
    BASE_CASES,
    DEFLATE_CASES,
    ECHO_PATH,
    fuzzing_spec,
    offers_permessage_deflate,
    planned_cases,
    run_transport,
    start_server,
)

# wstest's stand-in: runs the spec's cases (explicit ids here) minus its exclusions,
# writes reports/index.json and says how many it will run, as wstest does. The cases
# listed in STOP_AFTER's file end the run early (the round in which "the server died").
FAKE_WSTEST = """#!{python}
import json, pathlib
spec = json.loads(pathlib.Path("spec.json").read_text())
agent = spec["servers"][0]["agent"]
cases = [c for c in spec["cases"] if c not in spec["exclude-cases"]]
print("Ok, will run %d test cases against 1 servers" % len(cases))
stop = pathlib.Path({stop!r})
if stop.exists():
    cases = cases[: int(stop.read_text())]
    stop.unlink()
index = {{agent: {{c: {{"behavior": "OK", "behaviorClose": "OK", "remoteCloseCode": 1000}}
                  for c in cases}}}}
pathlib.Path("reports").mkdir()
pathlib.Path("reports/index.json").write_text(json.dumps(index))
"""


def test_the_plan_and_the_spec() -> None:
    assert planned_cases(permessage_deflate=False) == BASE_CASES
    assert BASE_CASES[0] == "1.*"
    assert BASE_CASES[-1] == "10.*"
    assert "11.*" not in BASE_CASES
    assert planned_cases(permessage_deflate=True) == BASE_CASES + DEFLATE_CASES
    spec = fuzzing_spec("lean", 4321, ["1.*"], ["1.1.1"])
    assert spec["servers"] == [{"agent": "lean", "url": f"ws://127.0.0.1:4321{ECHO_PATH}"}]
    assert spec["cases"] == ["1.*"]
    assert spec["exclude-cases"] == ["1.1.1"]
    json.dumps(spec)  # it is written as JSON


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("transport", "deflate"), [("lean", False), ("asgi", True)])
def test_start_server_probe_and_stop(tmp_path: Path, transport: str, deflate: bool) -> None:
    log = tmp_path / "server.log"
    server = start_server(transport, log)
    try:
        assert server.alive()
        assert offers_permessage_deflate(server.port) is deflate
    finally:
        code = server.stop()
    assert code == 0  # SIGTERM is a graceful drain
    assert "CONFORMANCE ECHO IS ON" in log.read_text()


def test_a_server_that_cannot_start_is_reported(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="did not start listening"):
        start_server("nonsense", tmp_path / "server.log")


@attrs.define
class FakeServer:
    port: int
    dies: bool
    stopped: bool = False

    def alive(self) -> bool:
        return not self.dies

    def stop(self) -> int | None:
        self.stopped = True
        return 0


def fake_wstest(tmp_path: Path) -> tuple[Path, Path]:
    stop = tmp_path / "stop-after"
    wstest = tmp_path / "wstest"
    wstest.write_text(FAKE_WSTEST.format(python=sys.executable, stop=str(stop)))
    wstest.chmod(wstest.stat().st_mode | stat.S_IXUSR)
    return wstest, stop


def test_one_round_when_the_server_survives(tmp_path: Path) -> None:
    wstest, _ = fake_wstest(tmp_path)
    servers: list[FakeServer] = []

    def start(transport: str, log: Path) -> FakeServer:
        servers.append(FakeServer(1000 + len(servers), dies=False))
        return servers[-1]

    summary = run_transport(
        "lean",
        wstest,
        tmp_path / "out",
        cases=["1.1.1", "1.1.2"],
        say=lambda _: None,
        start=start,
        probe=lambda _: False,
    )
    assert [r.case for r in summary.results] == ["1.1.1", "1.1.2"]
    assert summary.passed
    assert summary.expected == 2
    assert not summary.crashes
    assert len(servers) == 1
    assert servers[0].stopped


def test_a_crash_starts_a_new_round_with_the_rest(tmp_path: Path) -> None:
    wstest, stop = fake_wstest(tmp_path)
    stop.write_text("2")  # round 1 records two cases, then "the server dies"
    servers: list[FakeServer] = []

    def start(transport: str, log: Path) -> FakeServer:
        servers.append(FakeServer(2000 + len(servers), dies=not servers))
        return servers[-1]

    probed: list[int] = []
    summary = run_transport(
        "asgi",
        wstest,
        tmp_path / "out",
        cases=["1.1.1", "2.1", "3.4", "3.5"],
        say=lambda _: None,
        start=start,
        probe=lambda port: probed.append(port) or True,  # type: ignore[func-returns-value]
    )
    assert probed == [2000]  # the first round's server only
    assert summary.permessage_deflate
    assert summary.crashes == ("2.1",)
    assert [r.case for r in summary.results] == ["1.1.1", "2.1", "3.4", "3.5"]
    assert summary.missing == 0
    assert not summary.passed
    second = json.loads((tmp_path / "out" / "round-2" / "spec.json").read_text())
    assert second["exclude-cases"] == ["1.1.1", "2.1"]
    assert all(s.stopped for s in servers)
