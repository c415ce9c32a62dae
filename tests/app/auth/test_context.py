import pytest

from app import UserContext, VerifiedClaims
from app.auth._context import new_connection_id
from isolation import REQUEST_SCOPED_ATTR


def claims(sub: str = "alice", exp: float = 100.0) -> VerifiedClaims:
    return VerifiedClaims(subject=sub, expires_at=exp, issued_at=None, not_before=None)


def test_context_from_claims() -> None:
    ctx = UserContext.from_claims(claims(), carrier="query")
    assert (ctx.user_id, ctx.expires_at, ctx.token_carrier) == ("alice", 100.0, "query")
    assert ctx.connection_id.startswith("conn_")


def test_connection_ids_are_fresh_and_unguessable() -> None:
    ids = {new_connection_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) >= 5 + 22 for i in ids)  # 128 random bits


def test_renewal_keeps_identity() -> None:
    ctx = UserContext.from_claims(claims(), carrier="authorization")
    renewed = ctx.renewed(claims(exp=500.0))
    assert renewed.expires_at == 500.0
    assert (renewed.user_id, renewed.connection_id) == (ctx.user_id, ctx.connection_id)
    assert ctx.expires_at == 100.0


def test_renewal_refuses_other_subject() -> None:
    ctx = UserContext.from_claims(claims(), carrier="authorization")
    with pytest.raises(ValueError, match="subject mismatch"):
        ctx.renewed(claims(sub="mallory"))


def test_context_is_frozen_and_request_scoped() -> None:
    ctx = UserContext.from_claims(claims(), carrier="authorization")
    with pytest.raises(AttributeError):
        ctx.user_id = "mallory"  # type: ignore[misc]
    assert getattr(UserContext, REQUEST_SCOPED_ATTR) is True
