import app
import isolation


def test_app_public_api_is_exactly_all() -> None:
    public = {name for name in dir(app) if not name.startswith("_")}
    # Submodules show up as attributes once imported; they are private (_name).
    assert public == set(app.__all__)
    for name in app.__all__:
        assert getattr(app, name) is not None


def test_isolation_public_api() -> None:
    for name in isolation.__all__:
        assert hasattr(isolation, name)
    assert "request_scoped" in isolation.__all__


def test_request_scoped_classes_are_marked() -> None:
    from app._emitter import EventEmitter
    from app._session import _Session
    from app._state import ConnectionState

    for cls in (app.UserContext, EventEmitter, ConnectionState, _Session):
        assert getattr(cls, isolation.REQUEST_SCOPED_ATTR) is True
