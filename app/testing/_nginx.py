"""nginx in front of several servers: the config, rendered, and a private nginx for tests.

:func:`render_nginx_site` renders what a deployment puts in ``/etc/nginx/conf.d/``: a
round-robin ``upstream`` of the backends that skips a dead one, WebSocket upgrade
proxying, ``X-Forwarded-For``, timeouts above the server's own, ``/metrics`` kept off the
proxy, and TLS when asked. ``docs/deploy.md`` shows its output, and a test checks that
the two are the same text.

:func:`nginx_proxy` runs that site in a private nginx (``nginx -p DIR``, everything it
writes in a temporary folder) on 127.0.0.1 and an ephemeral port, for tests::

    with nginx_proxy([("127.0.0.1", a.port), ("127.0.0.1", b.port)]) as proxy:
        ...  # clients connect to proxy.port; proxy.error_log() says what nginx saw
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

import attrs

from ._components import find_component
from ._redis import free_port

__all__ = [
    "NginxProxy",
    "NginxTLS",
    "nginx_binary",
    "nginx_proxy",
    "render_nginx_config",
    "render_nginx_site",
]

#: How long a started nginx may take to answer its probe.
START_TIMEOUT_S: Final = 10.0
#: How long a stopping nginx gets after QUIT (graceful), then after TERM (fast).
STOP_TIMEOUT_S: Final = 5.0
#: Above the server's ``--idle-timeout-s`` (300) plus its ``--pong-timeout-s`` (20): the
#: server, not the proxy, ends a silent connection, with a close code that says why.
DEFAULT_READ_TIMEOUT_S: Final = 330
#: nginx's own paths (Debian's build puts nginx in /usr/sbin, often not on a user's PATH).
NGINX_FALLBACKS: Final = ("/usr/sbin/nginx", "/usr/local/sbin/nginx")

Backend = tuple[str, int]


@attrs.frozen
class NginxTLS:
    """Where nginx finds the certificate chain and its key (TLS terminates at nginx)."""

    certificate: str
    certificate_key: str


def _backend(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def render_nginx_site(
    backends: Sequence[Backend],
    *,
    listen: str = "80",
    server_name: str = "_",
    tls: NginxTLS | None = None,
    upstream: str = "enclave",
    access_log: str | None = None,
    max_fails: int = 1,
    fail_timeout_s: int = 5,
    connect_timeout_s: int = 2,
    read_timeout_s: int = DEFAULT_READ_TIMEOUT_S,
) -> str:
    """The ``http``-level config of the proxy: ``map``, ``upstream``, ``server`` (pure).

    ``listen`` is what nginx's ``listen`` takes (``"443"``, ``"127.0.0.1:8080"``); with
    ``tls`` it gets ``ssl``. ``max_fails`` failed tries (a refused connect, a timeout, a
    502 or 503 from a draining or full backend) take a backend out of rotation for
    ``fail_timeout_s``; the request that failed goes on to the next backend at once.
    ``access_log`` is a path (logged without the query string, which may hold an
    ``access_token``) or None for none.
    """
    if not backends:
        raise ValueError("at least one backend")
    servers = "".join(
        f"    server {_backend(host, port)} max_fails={max_fails} fail_timeout={fail_timeout_s}s;\n"
        for host, port in backends
    )
    if access_log is None:
        log = "    access_log off;\n"
    else:
        log = f"    access_log {access_log} enclave;\n"
    if tls is None:
        listener = f"    listen {listen};\n    server_name {server_name};\n"
    else:
        listener = (
            f"    listen {listen} ssl;\n"
            f"    server_name {server_name};\n"
            f"    ssl_certificate {tls.certificate};\n"
            f"    ssl_certificate_key {tls.certificate_key};\n"
            "    ssl_protocols TLSv1.2 TLSv1.3;\n"
        )
    return (
        "# Upgrade a WebSocket handshake; any other request is plain HTTP/1.1.\n"
        "map $http_upgrade $enclave_connection {\n"
        "    default upgrade;\n"
        "    ''      close;\n"
        "}\n"
        "\n"
        "# $uri, not $request: a query string may carry an access_token.\n"
        "log_format enclave '$remote_addr [$time_local] \"$request_method $uri\" $status '\n"
        "                   '$upstream_addr $request_time';\n"
        "\n"
        "# Round-robin; a failed try (refused, timeout, 502, 503) takes a backend out for\n"
        "# fail_timeout.\n"
        f"upstream {upstream} {{\n"
        f"{servers}"
        "}\n"
        "\n"
        "server {\n"
        f"{listener}"
        f"{log}"
        "\n"
        "    # Prometheus metrics: scrape each backend directly, never through the proxy.\n"
        "    location = /metrics {\n"
        "        return 404;\n"
        "    }\n"
        "\n"
        "    location / {\n"
        f"        proxy_pass http://{upstream};\n"
        "        proxy_http_version 1.1;\n"
        "        proxy_set_header Host $host;\n"
        "        proxy_set_header Upgrade $http_upgrade;\n"
        "        proxy_set_header Connection $enclave_connection;\n"
        "        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        "        proxy_set_header X-Forwarded-Proto $scheme;\n"
        "        proxy_buffering off;\n"
        f"        proxy_connect_timeout {connect_timeout_s}s;\n"
        "        # Above the servers' --idle-timeout-s + --pong-timeout-s: they, not nginx,\n"
        "        # end a quiet connection, with a close code that says why.\n"
        f"        proxy_read_timeout {read_timeout_s}s;\n"
        f"        proxy_send_timeout {read_timeout_s}s;\n"
        "        # A dead, draining (503) or full (503) backend: the next one gets the request.\n"
        "        proxy_next_upstream error timeout http_502 http_503;\n"
        "    }\n"
        "}\n"
    )


def render_nginx_config(
    backends: Sequence[Backend],
    *,
    prefix: str,
    port: int,
    probe: str,
    host: str = "127.0.0.1",
    read_timeout_s: int = DEFAULT_READ_TIMEOUT_S,
    fail_timeout_s: int = 5,
) -> str:
    """The whole ``nginx.conf`` of :func:`nginx_proxy` (pure).

    The site of :func:`render_nginx_site` on ``host:port``, one worker, and every file
    nginx writes (pid, logs, temporary files) under ``prefix``. A second ``server`` on the
    same port answers the ``Host: nginx-probe.invalid`` with ``probe``, so the harness
    knows it reached this nginx without touching a backend.
    """
    temp = "".join(
        f"    {kind}_temp_path {prefix}/temp/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    site = render_nginx_site(
        backends,
        listen=f"{host}:{port}",
        access_log=f"{prefix}/access.log",
        fail_timeout_s=fail_timeout_s,
        read_timeout_s=read_timeout_s,
    )
    indented = "".join(f"    {line}" if line.strip() else line for line in site.splitlines(True))
    return (
        "worker_processes 1;\n"
        f"pid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log info;\n"
        # A graceful stop (QUIT) otherwise waits for every open WebSocket to end.
        "worker_shutdown_timeout 2s;\n"
        "\n"
        "events {\n"
        "    worker_connections 1024;\n"
        "}\n"
        "\n"
        "http {\n"
        f"{temp}"
        "\n"
        f"{indented}"
        "\n"
        "    server {\n"
        f"        listen {host}:{port};\n"
        "        server_name nginx-probe.invalid;\n"
        "        access_log off;\n"
        f'        return 200 "{probe}";\n'
        "    }\n"
        "}\n"
    )


@attrs.frozen
class NginxProxy:
    """A running nginx of ours in front of ``backends``."""

    host: str
    port: int
    backends: tuple[Backend, ...]
    prefix: Path
    process: subprocess.Popen[bytes] = attrs.field(repr=False, eq=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def pid(self) -> int:
        return self.process.pid

    def config(self) -> str:
        return (self.prefix / "nginx.conf").read_text(encoding="utf-8")

    def error_log(self) -> str:
        return _read(self.prefix / "error.log")

    def access_log(self) -> str:
        """One line per finished request (a WebSocket's once it closed), with its backend."""
        return _read(self.prefix / "access.log")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def nginx_binary() -> str:
    """nginx's path: ``$NGINX``, else PATH, else /usr/sbin; skips (fails under CI) if absent."""
    if not os.environ.get("NGINX") and shutil.which("nginx") is None:
        for candidate in NGINX_FALLBACKS:
            if os.access(candidate, os.X_OK):
                return candidate
    return find_component("nginx", "nginx", env_var="NGINX")


@contextlib.contextmanager
def nginx_proxy(
    backends: Sequence[Backend],
    *,
    binary: str | None = None,
    read_timeout_s: int = DEFAULT_READ_TIMEOUT_S,
    fail_timeout_s: int = 5,
    attempts: int = 5,
) -> Iterator[NginxProxy]:
    """Start nginx on 127.0.0.1 and an ephemeral port in front of ``backends``; stop it on exit.

    Retries on another port if the chosen one was taken meanwhile. A start that fails
    raises RuntimeError with the tail of nginx's error log. On exit: QUIT (finish what is
    in flight, at most 2 s for open WebSockets), then TERM, then KILL, each bounded.
    """
    path = binary or nginx_binary()
    with tempfile.TemporaryDirectory(prefix="enclave-nginx-") as workdir:
        prefix = Path(workdir)
        (prefix / "temp").mkdir()
        last_error = "not started"
        for _ in range(attempts):
            port = free_port()
            probe = secrets.token_hex(8)
            conf = prefix / "nginx.conf"
            conf.write_text(
                render_nginx_config(
                    backends,
                    prefix=str(prefix),
                    port=port,
                    probe=probe,
                    read_timeout_s=read_timeout_s,
                    fail_timeout_s=fail_timeout_s,
                ),
                encoding="utf-8",
            )
            error_log = prefix / "error.log"
            error_log.unlink(missing_ok=True)
            args = [path, "-p", str(prefix), "-c", str(conf), "-e", str(error_log)]
            process = subprocess.Popen(
                [*args, "-g", "daemon off;"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its workers too can be killed as a group
            )
            try:
                if _wait_ready(process, port, probe, error_log):
                    proxy = NginxProxy("127.0.0.1", port, tuple(backends), prefix, process)
                    try:
                        yield proxy
                    finally:
                        _stop(process)
                    return
                last_error = _read(error_log)
                if "Address already in use" not in last_error:
                    break  # a bad config or binary: another port would not help
            finally:
                if process.poll() is None:
                    # Not ready: it may not handle QUIT yet (whose default action dumps core).
                    _kill(process)
        raise RuntimeError(f"nginx did not start: {last_error.strip()[-1500:]}")


def _probe(port: int, probe: str) -> bool:
    request = b"GET / HTTP/1.0\r\nHost: nginx-probe.invalid\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
        conn.sendall(request)
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
    return data.startswith(b"HTTP/1.1 200") and data.endswith(probe.encode())


def _wait_ready(process: subprocess.Popen[bytes], port: int, probe: str, error_log: Path) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False  # e.g. a bad config
        try:
            if _probe(port, probe):
                return True
        except OSError:
            pass
        # Taken by someone else: nginx retries bind() for 2.5 s; another port is quicker.
        if "Address already in use" in _read(error_log):
            return False
        time.sleep(0.02)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    for signum in (signal.SIGQUIT, signal.SIGTERM):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_TIMEOUT_S)
    _kill(process)


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the master and its workers
        process.wait(timeout=STOP_TIMEOUT_S)
