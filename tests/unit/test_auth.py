"""Who gets in: when keys are required, what the admin key alone opens, and
which key names are allowed. The key store is a real SQLite file."""
from __future__ import annotations

import pytest

from runtime.accounting.keys import KeyStore, check_key_name
from runtime.errors import AuthenticationFailed, PermissionDenied
from runtime.gateway.auth import ANONYMOUS, Authenticator, InvocationTokens, StaticKeys

ADMIN = "sk-unit-admin"


def _auth(tmp_path, *, static=(), require_keys=None) -> tuple[Authenticator, KeyStore]:
    store = KeyStore(tmp_path / "keys.sqlite3")
    return Authenticator(StaticKeys(frozenset(static)), InvocationTokens(), store=store, admin_key=ADMIN,
                         require_keys=require_keys), store


def test_without_any_key_the_data_plane_is_open_and_the_control_plane_is_not(tmp_path):
    auth, _ = _auth(tmp_path)
    assert auth.authenticate_token("") is ANONYMOUS and auth.authenticate_token("anything") is ANONYMOUS
    with pytest.raises(AuthenticationFailed):
        auth.authenticate_admin("")
    with pytest.raises(AuthenticationFailed):
        auth.authenticate_admin("anything")
    assert auth.authenticate_admin(ADMIN).kind == "admin"


def test_keys_stay_required_after_the_last_key_is_revoked(tmp_path):
    auth, store = _auth(tmp_path)
    secret = store.create("ci")
    assert auth.authenticate_token(secret).name == "ci"
    with pytest.raises(PermissionDenied):
        auth.authenticate_admin(secret)
    store.revoke("ci")
    for token in ("", "anything"):
        with pytest.raises(AuthenticationFailed):
            auth.authenticate_token(token)
    with pytest.raises(AuthenticationFailed, match="revoked"):
        auth.authenticate_token(secret)
    # A fresh gateway on the same store decides the same.
    assert _auth(tmp_path)[0].keys_required


def test_require_keys_decides_explicitly(tmp_path):
    closed, _ = _auth(tmp_path / "a", require_keys=True)
    with pytest.raises(AuthenticationFailed):
        closed.authenticate_token("")
    opened, store = _auth(tmp_path / "b", static={"sk-static"}, require_keys=False)
    store.create("ci")
    assert opened.authenticate_token("") is ANONYMOUS
    assert opened.authenticate_token("sk-static").name == "key-0"  # a key given is still recognised
    with pytest.raises(AuthenticationFailed):
        opened.authenticate_admin("")


@pytest.mark.parametrize("token", ["é", "sk-\udcff", "\u2028"])
def test_a_non_ascii_token_is_refused_never_hashed(tmp_path, token):
    auth, store = _auth(tmp_path)
    assert auth.authenticate_token(token) is ANONYMOUS  # no key required yet: ignored
    store.create("ci")
    with pytest.raises(AuthenticationFailed):
        auth.authenticate_token(token)
    with pytest.raises(AuthenticationFailed):
        auth.authenticate_admin(token)


@pytest.mark.parametrize("name", ["ci", "ci-bot_2.prod", "A" * 64, "0day"])
def test_key_names_of_a_safe_charset_are_accepted(name):
    assert check_key_name(name) == name


@pytest.mark.parametrize("name", ["anonymous", "Anonymous", "admin", "key-0", "KEY-17", "", "a" * 65,
                                  "bad name", "../x", "-x", "ci\n", "é", None, 7])
def test_reserved_and_unsafe_key_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError):
        check_key_name(name)
    if isinstance(name, str):
        with pytest.raises(ValueError):
            KeyStore(tmp_path / "keys.sqlite3").create(name)


async def test_every_admin_route_of_the_table_answers_the_admin_key_alone(tmp_path, aiohttp_client):
    from runtime.gateway import GatewayConfig, build_app
    from runtime.gateway.routes import ROUTES
    from runtime.pool import ModelStore
    from tests.support.gateway import model

    client = await aiohttp_client(build_app(GatewayConfig(
        models=[model()], store=ModelStore(tmp_path), api_keys=frozenset({"sk-user"}), admin_key=ADMIN,
        keys_path=tmp_path / "keys.sqlite3")))
    admin_routes = [r for r in ROUTES if r.path.startswith("/admin/")]
    assert admin_routes
    for route in admin_routes:
        path = route.path.replace("{name}", "nobody")
        refused = await client.request(route.method, path, headers={"Authorization": "Bearer sk-user"})
        assert refused.status == 403, route.path
        assert (await refused.json())["error"]["code"] == "admin_key_required"
        assert (await client.request(route.method, path)).status == 401, route.path
        allowed = await client.request(route.method, path, json={"name": "k1"},
                                       headers={"Authorization": f"Bearer {ADMIN}"})
        assert allowed.status in (200, 201, 404), route.path  # 404: the key to revoke does not exist
