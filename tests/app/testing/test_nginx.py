"""nginx in front of servers: the rendered config (pure, then checked by ``nginx -t``),
and a private nginx that starts on a free port, answers, and is gone after."""

from __future__ import annotations

import datetime
import re
import socket
import subprocess
from pathlib import Path

import pytest

from app import Settings
from app.testing import (
    NginxTLS,
    free_port,
    nginx_binary,
    nginx_proxy,
    render_nginx_config,
    render_nginx_site,
)
from app.testing import _nginx as nginx_module

BACKENDS = [("10.0.0.11", 8000), ("10.0.0.12", 8000)]


def _directives(text: str, name: str) -> list[str]:
    """The arguments of every ``name ...;`` directive in ``text``."""
    return re.findall(rf"^\s*{re.escape(name)}\s+(.*?);\s*$", text, re.MULTILINE)


def _get(port: int, target: str, host: str = "localhost") -> bytes:
    """One HTTP/1.0 GET; the whole response."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(f"GET {target} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65_536):
            data += chunk
    return data


# -- rendering (pure) ---------------------------------------------------------------


def test_site_balances_over_every_backend_and_skips_a_dead_one() -> None:
    site = render_nginx_site(BACKENDS, max_fails=1, fail_timeout_s=5)
    assert _directives(site, "server") == [
        "10.0.0.11:8000 max_fails=1 fail_timeout=5s",
        "10.0.0.12:8000 max_fails=1 fail_timeout=5s",
    ]
    assert _directives(site, "proxy_pass") == ["http://enclave"]
    # A refused connect, a timeout, or a draining/full backend's 503: try the next one.
    assert _directives(site, "proxy_next_upstream") == ["error timeout http_502 http_503"]
    assert _directives(site, "proxy_connect_timeout") == ["2s"]


def test_site_proxies_websocket_upgrades() -> None:
    site = render_nginx_site(BACKENDS)
    assert _directives(site, "proxy_http_version") == ["1.1"]
    headers = _directives(site, "proxy_set_header")
    assert "Upgrade $http_upgrade" in headers
    assert "Connection $enclave_connection" in headers
    assert "X-Forwarded-For $proxy_add_x_forwarded_for" in headers
    assert "Host $host" in headers
    assert _directives(site, "proxy_buffering") == ["off"]
    assert "map $http_upgrade $enclave_connection {" in site


def test_site_read_timeout_outlasts_the_servers_idle_timeout() -> None:
    defaults = Settings()
    site = render_nginx_site(BACKENDS)
    (read,) = _directives(site, "proxy_read_timeout")
    (send,) = _directives(site, "proxy_send_timeout")
    assert int(read.removesuffix("s")) > defaults.idle_timeout_s + defaults.pong_timeout_s
    assert send == read
    assert _directives(render_nginx_site(BACKENDS, read_timeout_s=900), "proxy_read_timeout") == [
        "900s"
    ]


def test_site_keeps_metrics_and_tokens_off_the_proxy() -> None:
    site = render_nginx_site(BACKENDS, access_log="/var/log/nginx/enclave.log")
    assert "location = /metrics {\n        return 404;\n    }" in site
    assert _directives(site, "access_log") == ["/var/log/nginx/enclave.log enclave"]
    (log_format,) = re.findall(r"log_format enclave (.*?);", site, re.DOTALL)
    assert "$uri" in log_format
    assert "$request " not in log_format  # the request line holds ?access_token=
    assert "$args" not in log_format
    assert _directives(render_nginx_site(BACKENDS), "access_log") == ["off"]


def test_site_listen_tls_and_names() -> None:
    plain = render_nginx_site(BACKENDS, listen="8080", server_name="chat.example.com")
    assert _directives(plain, "listen") == ["8080"]
    assert _directives(plain, "server_name") == ["chat.example.com"]
    assert "ssl" not in plain
    tls = NginxTLS("/etc/ssl/chat.pem", "/etc/ssl/private/chat.key")
    secure = render_nginx_site(BACKENDS, listen="443", tls=tls)
    assert _directives(secure, "listen") == ["443 ssl"]
    assert _directives(secure, "ssl_certificate") == ["/etc/ssl/chat.pem"]
    assert _directives(secure, "ssl_certificate_key") == ["/etc/ssl/private/chat.key"]
    assert _directives(secure, "ssl_protocols") == ["TLSv1.2 TLSv1.3"]


def test_site_brackets_ipv6_backends_and_needs_one() -> None:
    site = render_nginx_site([("::1", 8001)], upstream="chat")
    assert _directives(site, "server")[0].startswith("[::1]:8001 ")
    assert _directives(site, "proxy_pass") == ["http://chat"]
    with pytest.raises(ValueError, match="at least one backend"):
        render_nginx_site([])


def test_config_keeps_everything_under_its_prefix() -> None:
    conf = render_nginx_config(BACKENDS, prefix="/tmp/px", port=18080, probe="abc")
    assert _directives(conf, "worker_processes") == ["1"]
    assert _directives(conf, "pid") == ["/tmp/px/nginx.pid"]
    assert _directives(conf, "error_log") == ["/tmp/px/error.log info"]
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        assert _directives(conf, f"{kind}_temp_path") == [f"/tmp/px/temp/{kind}"]
    assert _directives(conf, "listen") == ["127.0.0.1:18080", "127.0.0.1:18080"]
    assert 'return 200 "abc"' in conf
    # The site inside is the site rendered alone, indented into ``http {}``.
    site = render_nginx_site(BACKENDS, listen="127.0.0.1:18080", access_log="/tmp/px/access.log")
    for line in site.splitlines():
        assert (f"    {line}" if line.strip() else "") in conf.splitlines()


def _self_signed(directory: Path) -> NginxTLS:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chat.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "chat.pem", directory / "chat.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return NginxTLS(str(cert_path), str(key_path))


def test_nginx_accepts_the_rendered_configs(tmp_path: Path) -> None:
    """``nginx -t``: the harness's config and a TLS site as ``docs/deploy.md`` shows it."""
    binary = nginx_binary()
    (tmp_path / "temp").mkdir()
    harness = render_nginx_config(BACKENDS, prefix=str(tmp_path), port=18080, probe="x")
    tls_site = render_nginx_site(
        BACKENDS,
        listen="127.0.0.1:18443",
        tls=_self_signed(tmp_path),
        access_log=str(tmp_path / "access.log"),
    )
    wrapped = (
        f"pid {tmp_path}/tls.pid;\nevents {{}}\nhttp {{\n"
        + "".join(
            f"    {kind}_temp_path {tmp_path}/temp/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + f"{tls_site}}}\n"
    )
    for name, text in (("harness.conf", harness), ("tls.conf", wrapped)):
        conf = tmp_path / name
        conf.write_text(text, encoding="utf-8")
        command = [binary, "-t", "-p", str(tmp_path), "-c", str(conf)]
        result = subprocess.run(
            [*command, "-e", str(tmp_path / "error.log")],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, (name, result.stderr, text)


# -- a running nginx ----------------------------------------------------------------


def test_proxy_answers_then_is_gone() -> None:
    dead = [("127.0.0.1", 1), ("127.0.0.1", 2)]  # nothing listens: every backend refuses
    with nginx_proxy(dead) as proxy:
        port = proxy.port
        assert proxy.url == f"http://127.0.0.1:{port}"
        assert proxy.backends == tuple(dead)
        assert f"listen 127.0.0.1:{port};" in proxy.config()
        assert _get(port, "/metrics").startswith(b"HTTP/1.1 404")
        assert _get(port, "/health").startswith(b"HTTP/1.1 502")
        # Both tried (the first refused, then the next), both taken out of rotation.
        log = proxy.error_log()
        assert "127.0.0.1:1/health" in log
        assert "127.0.0.1:2/health" in log
        assert "upstream server temporarily disabled" in log
    assert proxy.process.poll() == 0  # QUIT: a graceful exit
    with pytest.raises(ConnectionRefusedError):
        _get(port, "/health")
    assert not proxy.prefix.exists()


def test_a_taken_port_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real_free_port = free_port
        monkeypatch.setattr(
            nginx_module, "free_port", lambda: next(ports, None) or real_free_port()
        )
        with nginx_proxy([("127.0.0.1", 1)]) as proxy:
            assert proxy.port != taken
            assert _get(proxy.port, "/metrics").startswith(b"HTTP/1.1 404")


def test_a_bad_config_fails_with_the_error_log() -> None:
    with (
        pytest.raises(RuntimeError, match=r"nginx did not start: .*invalid port in upstream"),
        nginx_proxy([("127.0.0.1", 0)]),
    ):
        pass  # pragma: no cover - never reached


def test_nginx_found_off_path_in_sbin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    binary = nginx_binary()  # skips here when this machine has none at all
    monkeypatch.delenv("NGINX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # a user's PATH without /usr/sbin
    if binary in nginx_module.NGINX_FALLBACKS:
        assert nginx_binary() == binary


def test_a_missing_nginx_skips(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NGINX", str(tmp_path / "no-nginx"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y nginx"):
        nginx_binary()
