"""Who gets in: when keys are required, what the admin key alone opens, which
key names are allowed, and keys shared by gateways on one database. The key
store is real: a SQLite file, and a PostgreSQL database (``db_target``)."""
from __future__ import annotations

import pytest

from runtime.accounting.keys import REFRESH_S, KeyStore, check_key_name
from runtime.errors import AuthenticationFailed, PermissionDenied
from runtime.gateway.auth import ANONYMOUS, Authenticator, InvocationTokens, StaticKeys

ADMIN = "sk-unit-admin"


def _auth(target, *, static=(), require_keys=None) -> tuple[Authenticator, KeyStore]:
    store = KeyStore(target)
    return Authenticator(StaticKeys(frozenset(static)), InvocationTokens(), store=store, admin_key=ADMIN,
                         require_keys=require_keys), store


def test_without_any_key_the_data_plane_is_open_and_the_control_plane_is_not(db_target):
    auth, _ = _auth(db_target("keys.sqlite3"))
    assert auth.authenticate_token("") is ANONYMOUS and auth.authenticate_token("anything") is ANONYMOUS
    with pytest.raises(AuthenticationFailed):
        auth.authenticate_admin("")
    with pytest.raises(AuthenticationFailed):
        auth.authenticate_admin("anything")
    assert auth.authenticate_admin(ADMIN).kind == "admin"


def test_keys_stay_required_after_the_last_key_is_revoked(db_target):
    auth, store = _auth(db_target("keys.sqlite3"))
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
    assert _auth(db_target("keys.sqlite3"))[0].keys_required


def test_require_keys_decides_explicitly(tmp_path):
    closed, _ = _auth(tmp_path / "a" / "keys.sqlite3", require_keys=True)
    with pytest.raises(AuthenticationFailed):
        closed.authenticate_token("")
    opened, store = _auth(tmp_path / "b" / "keys.sqlite3", static={"sk-static"}, require_keys=False)
    store.create("ci")
    assert opened.authenticate_token("") is ANONYMOUS
    assert opened.authenticate_token("sk-static").name == "key-0"  # a key given is still recognised
    with pytest.raises(AuthenticationFailed):
        opened.authenticate_admin("")


@pytest.mark.parametrize("token", ["é", "sk-\udcff", "\u2028"])
def test_a_non_ascii_token_is_refused_never_hashed(tmp_path, token):
    auth, store = _auth(tmp_path / "keys.sqlite3")
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
        keys_at=tmp_path / "keys.sqlite3")))
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


# ---- gateways sharing one key store --------------------------------------------

def test_a_key_created_through_one_store_is_found_by_another_and_a_revoke_follows_a_reload(db_target):
    one, two = KeyStore(db_target("keys.sqlite3")), KeyStore(db_target("keys.sqlite3"))
    auth = Authenticator(StaticKeys(frozenset()), InvocationTokens(), store=two)
    secret = one.create("shared", models=["m1"])
    assert two.lookup(secret) is None  # its copy was read before the key existed
    assert two.find(secret).models == ("m1",)
    assert auth.authenticate_token(secret).name == "shared"  # no database read from here on
    one.revoke("shared")
    two.reload()  # what every gateway does each REFRESH_S
    with pytest.raises(AuthenticationFailed, match="revoked"):
        auth.authenticate_token(secret)
    assert two.find(secret) is None


def test_unknown_keys_are_looked_up_a_bounded_number_of_times_a_second(tmp_path, monkeypatch):
    store = KeyStore(tmp_path / "keys.sqlite3")
    looked = []
    monkeypatch.setattr(store, "_db", lambda real=store._db: looked.append(1) or real())
    for _ in range(50):
        assert store.find("sk-llmfn-made-up") is None
    assert len(looked) == 10  # FINDS_PER_S: a flood of made-up keys costs the database little


async def test_a_key_made_on_one_gateway_works_on_another_at_once_and_its_revoke_spreads(
        db_target, tmp_path, aiohttp_client):
    from runtime.gateway import GatewayConfig, build_app
    from runtime.gateway.state import AUTH
    from runtime.pool import ModelStore
    from tests.support.cli import wait_until_async

    def replica():
        return aiohttp_client(build_app(GatewayConfig(
            models=[], store=ModelStore(tmp_path), admin_key=ADMIN, keys_at=db_target("keys.sqlite3"))))

    one, two = await replica(), await replica()
    admin = {"Authorization": f"Bearer {ADMIN}"}
    made = await one.post("/admin/keys", json={"name": "everywhere"}, headers=admin)
    secret = (await made.json())["key"]
    key = {"Authorization": f"Bearer {secret}"}
    assert (await two.get("/v1/models", headers=key)).status == 200
    assert (await one.delete("/admin/keys/everywhere", headers=admin)).status == 200
    store = two.app[AUTH].store
    await wait_until_async(lambda: store.is_revoked(secret), REFRESH_S + 3,
                           message="the revoke did not reach the other gateway")
    refused = await two.get("/v1/models", headers=key)
    assert refused.status == 401 and (await refused.json())["error"]["code"] == "revoked_api_key"
