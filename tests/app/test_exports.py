import subprocess
import sys

import app
import isolation

#: The layers, each a public package of the tree (see ``app/__init__.py``).
LAYERS = frozenset(
    {
        "agents",
        "auth",
        "cli",
        "core",
        "server",
        "services",
        "session",
        "testing",
        "threads",
        "transports",
        "web",
    }
)


def test_app_public_api_is_exactly_all() -> None:
    public = {name for name in dir(app) if not name.startswith("_")}
    # The layers show up as attributes once imported; everything else is in __all__.
    assert public - LAYERS == set(app.__all__) - {"create_app"} - _lazy_testing_names()
    for name in app.__all__:
        assert getattr(app, name) is not None


def _lazy_testing_names() -> set[str]:
    return {"MemoryClient", "MemoryTransport", "PeerClosed", "memory_transport_pair"}


def test_every_layer_exports_what_it_names() -> None:
    import importlib

    for layer in sorted(LAYERS):
        package = importlib.import_module(f"app.{layer}")
        for name in package.__all__:
            assert getattr(package, name) is not None, (layer, name)


def test_import_app_loads_neither_quart_nor_hypercorn_nor_testing() -> None:
    code = (
        "import sys, app\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('quart', 'quart_trio', 'httpx', "
        "'hypercorn') or m.startswith('app.testing') or m.startswith('app.transports.asgi')]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=60)
    assert out.stdout.decode().strip() == "[]"


def test_lazy_names_load_on_first_use() -> None:
    from app.testing import memory_transport_pair
    from app.transports.asgi import create_app

    assert app.memory_transport_pair is memory_transport_pair
    assert app.create_app is create_app


def test_isolation_public_api() -> None:
    for name in isolation.__all__:
        assert hasattr(isolation, name)
    assert "request_scoped" in isolation.__all__


def test_request_scoped_classes_are_marked() -> None:
    from app.core._state import ConnectionState
    from app.session._emitter import EventEmitter
    from app.session._session import _Session

    for cls in (app.UserContext, EventEmitter, ConnectionState, _Session):
        assert getattr(cls, isolation.REQUEST_SCOPED_ATTR) is True
