"""The control plane and the secrets, attacked as a local user would attack a
``llmfn serve`` left with its defaults: each test replays one way in and
asserts the safe outcome (the status and error shape, the file modes, the
command lines, the service still alive). Every secret a test uses is kept, and
the last test greps every log these tests collected for all of them."""
from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from runtime.gateway.auth import TOKEN_PREFIX
from runtime.pool.protocol import HEADER, Kind, frame, json_frame
from tests.support.cli import Server, llmfn, write_project
from tests.support.gateway import call

# every test here starts an llmfn command that serves the embedded model (its pool's workers)
pytestmark = pytest.mark.llama

MODEL = "gemma3-270m"
TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Resources:
  EchoFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: src/
      Handler: app.handler
      Runtime: python3.11
      Timeout: 60
      Events:
        Echo:
          Type: HttpApi
          Properties: {Path: /echo, Method: GET}
"""
HANDLER = """
def handler(event, context):
    print("event headers", (event or {}).get("headers"))
    return {"ok": True, "headers": (event or {}).get("headers")}
"""
LOGS: list[str] = []  # every log these tests saw: serve's stderr (function logs included), CLI output
SECRETS: set[str] = set()  # every key these tests used


def _keep(secret: str) -> str:
    SECRETS.add(secret)
    return secret


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    cp = llmfn(*args, env=env)
    LOGS.append(cp.stderr)
    LOGS.append(cp.stdout if args[:2] != ("keys", "create") else "")  # the one place a secret is printed
    return cp


@dataclass
class Service:
    """A running ``llmfn serve``: its process and log, its data dir, where each part listens."""
    server: Server
    data: Path
    urls: dict[str, str]

    @property
    def stderr(self) -> str:
        return self.server.stderr

    @property
    def pid(self) -> int:
        return self.server.proc.pid

    @property
    def alive(self) -> bool:
        return self.server.proc.poll() is None

    @property
    def admin(self) -> str:
        return _keep((self.data / "admin.key").read_text().strip())

    def stop(self) -> None:
        self.server.stop()
        LOGS.append(self.stderr)


def _serve(project: Path, data: Path, env: dict, *extra: str) -> Service:
    server = Server("serve", "--template", str(project / "template.yaml"), "--gateway-port", "0", "--api-port", "0",
                    "--lambda-port", "0", "--data-dir", str(data), "--n-ctx", "512", *extra,
                    ready="lambda api", env=env)
    return Service(server, data, {name: server.wait_for(rf"llmfn {name} on (http://\S+)").group(1)
                                  for name in ("gateway", "lambda api", "http api")})


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return write_project(tmp_path_factory.mktemp("security"), TEMPLATE, HANDLER)


@pytest.fixture(scope="module")
def env(model_cache):
    return {"LLMFN_CACHE_DIR": str(model_cache)}


@pytest.fixture(scope="module")
def service(project, env):
    """One service with its defaults (no admin key configured), shared by the tests that do not depend
    on whether keys are required."""
    running = _serve(project, project / "data", env)
    yield running
    running.stop()


def _bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def _openai_error(reply, status: int, error_type: str) -> dict:
    assert reply.status == status, (reply.status, reply.body[:300])
    err = reply.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == error_type
    assert isinstance(err["code"], str)
    return err


def _aws_error(reply, status: int, error_type: str) -> dict:
    assert reply.status == status, (reply.status, reply.body[:300])
    body = reply.json()
    assert body["__type"] == error_type == reply.headers["x-amzn-ErrorType"] and body["Message"]
    return body


def _lambda(url: str, access_key: str = "x"):
    return boto3.client("lambda", endpoint_url=url, region_name="us-east-1", aws_access_key_id=access_key,
                        aws_secret_access_key="x", config=Config(retries={"max_attempts": 0}, read_timeout=60))


def _invoke(url: str, access_key: str = "x") -> dict:
    resp = _lambda(url, access_key).invoke(FunctionName="EchoFunction", Payload=b"{}")
    return json.loads(resp["Payload"].read()) | {"_error": resp.get("FunctionError")}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---- the admin key -------------------------------------------------------------

def test_serve_creates_a_private_admin_key_and_names_only_its_path(service):
    key_file = service.data / "admin.key"
    assert _mode(key_file) == 0o600 and _mode(service.data) == 0o700
    assert f"admin key created in {key_file}" in service.stderr
    assert service.admin not in service.stderr


def test_control_plane_refuses_every_caller_without_the_admin_key(service):
    gw, lam = service.urls["gateway"], service.urls["lambda api"]
    for method, path in (("GET", "/admin/pools"), ("GET", "/admin/keys"), ("POST", "/admin/keys"),
                         ("DELETE", "/admin/keys/ci")):
        for headers in ({}, _bearer("sk-llmfn-guess"), _bearer("llmfn-inv-guess")):
            reply = call(f"{gw}{path}", {"name": "x"} if method == "POST" else None, method=method,
                         headers=headers)
            _openai_error(reply, 401, "authentication_error")
    for spelling in ("//admin/pools", "/%61dmin/pools", "/admin/pools/", "/admin//pools", "/v1/../admin/pools"):
        reply = call(f"{gw}{spelling}", method="GET")
        assert reply.status in (401, 404), (spelling, reply.status)  # no spelling reaches the handler
    assert call(f"{gw}/admin/pools", method="GET", headers=_bearer(service.admin)).json()[MODEL]["state"]

    rollback = f"{lam}/2015-03-31/functions/EchoFunction/aliases/live"
    for url, method, body in ((f"{lam}/llmfn/deployments", "POST", {"bucket": "b", "functions": {}}),
                              (rollback, "PUT", {})):
        for headers in ({}, _bearer("sk-llmfn-guess"), {"Authorization": "AWS4-HMAC-SHA256 Credential=x/1/"}):
            _aws_error(call(url, body, method=method, headers=headers), 401, "UnrecognizedClientException")
    # With the admin key the request gets through to the deployments themselves.
    refused = _aws_error(call(rollback, {}, method="PUT", headers=_bearer(service.admin)), 400,
                         "InvalidParameterValueException")
    assert "first version" in refused["Message"]
    assert service.alive


def test_cli_reads_the_admin_key_from_the_data_dir_on_the_same_machine(service, env, tmp_path):
    cp = _cli("rollback", "EchoFunction", "--endpoint", service.urls["lambda api"],
              "--data-dir", str(service.data), env=env)
    assert cp.returncode == 2 and "first version" in cp.stderr  # authorized: the service answered
    elsewhere = _cli("rollback", "EchoFunction", "--endpoint", service.urls["lambda api"],
                     "--data-dir", str(tmp_path / "empty"), env=env)
    assert elsewhere.returncode == 2 and "no admin key" in elsewhere.stderr
    remote = ("--endpoint", service.urls["gateway"], "--data-dir", str(service.data))
    made = _cli("keys", "create", "from-cli", "--rpm", "5", *remote, env=env)
    assert made.returncode == 0, made.stderr
    _keep(made.stdout.strip())
    listing = _cli("keys", "list", *remote, env=env)
    assert listing.returncode == 0 and "from-cli" in listing.stdout and made.stdout.strip() not in listing.stdout
    assert _cli("keys", "revoke", "from-cli", *remote, env=env).returncode == 0
    assert "revoked" in _cli("keys", "list", *remote, env=env).stdout


# ---- keys stay required ----------------------------------------------------------

def test_revoking_the_last_key_never_opens_the_gateway_or_the_lambda_api(project, env, tmp_path):
    data = tmp_path / "data"
    server = _serve(project, data, env)
    try:
        gw, lam = server.urls["gateway"], server.urls["lambda api"]
        admin = server.admin
        # No key yet: local development works as SAM users expect, with any credentials.
        first = _invoke(lam)
        assert first.get("ok") is True, (first, server.stderr[-3000:])
        assert call(f"{gw}/v1/models", method="GET").status == 200
        # ... but everyone's usage is the admin's.
        _openai_error(call(f"{gw}/v1/usage?resource=ci", method="GET"), 403, "permission_error")
        assert call(f"{gw}/v1/usage?by=resource", method="GET", headers=_bearer(admin)).status == 200

        made = call(f"{gw}/admin/keys", {"name": "ci"}, headers=_bearer(admin))
        assert made.status == 201
        secret = _keep(made.json()["key"])
        _openai_error(call(f"{gw}/v1/models", method="GET"), 401, "authentication_error")
        with pytest.raises(ClientError) as refused:
            _invoke(lam)
        assert refused.value.response["Error"]["Code"] == "UnrecognizedClientException"
        assert _invoke(lam, access_key=secret)["ok"] is True  # boto3 carries the key as its access key id
        assert call(f"{lam}/2015-03-31/functions/EchoFunction/invocations", {}, headers=_bearer(secret)).status == 200
        _openai_error(call(f"{gw}/v1/usage?resource=someone", method="GET", headers=_bearer(secret)), 403,
                      "permission_error")
        # A key is no admin: deploys and rollbacks stay refused.
        _aws_error(call(f"{lam}/2015-03-31/functions/EchoFunction/aliases/live", {}, method="PUT",
                        headers=_bearer(secret)), 403, "AccessDeniedException")
        _openai_error(call(f"{gw}/admin/pools", method="GET", headers=_bearer(secret)), 403, "permission_error")

        assert call(f"{gw}/admin/keys/ci", method="DELETE", headers=_bearer(admin)).status == 200
        for url in (f"{gw}/v1/models", f"{gw}/v1/usage?by=resource"):
            _openai_error(call(url, method="GET"), 401, "authentication_error")
        _aws_error(call(f"{lam}/2015-03-31/functions/EchoFunction/invocations", {}), 401,
                   "UnrecognizedClientException")
        assert server.alive
    finally:
        server.stop()
    # Restarted on the same data dir: the same admin key, and keys still required.
    server = _serve(project, data, env)
    try:
        assert "admin key read from" in server.stderr
        _openai_error(call(f"{server.urls['gateway']}/v1/models", method="GET"), 401, "authentication_error")
        _aws_error(call(f"{server.urls['lambda api']}/2015-03-31/functions/EchoFunction/invocations", {}), 401,
                   "UnrecognizedClientException")
        assert call(f"{server.urls['gateway']}/v1/models", method="GET", headers=_bearer(admin)).status == 200
    finally:
        server.stop()
    for log in (server.stderr, *LOGS):
        assert not any(s in log for s in SECRETS)


# ---- requests that used to fail with a 500 -----------------------------------------

def test_admin_keys_refuses_bad_bodies_and_reserved_or_unsafe_names(service, env):
    url, admin = f"{service.urls['gateway']}/admin/keys", _bearer(service.admin)
    for raw in (b"[]", b'"ci"', b"null", b"{", b"{}"):
        _openai_error(call(url, raw=raw, headers=admin), 400, "invalid_request_error")
    for name in ("anonymous", "Admin", "key-0", "key-12", "", "a" * 65, "bad name", "../x", "ci\n", "é", 7):
        err = _openai_error(call(url, {"name": name}, headers=admin), 400, "invalid_request_error")
        assert err["param"] == "name"
    too_big = b'{"name": "big", "rpm": ' + b"9" * 30 + b"}"
    _openai_error(call(url, raw=too_big, headers=admin), 400, "invalid_request_error")
    cp = _cli("keys", "create", "anonymous", "--data-dir", str(service.data), env=env)
    assert cp.returncode == 2 and "reserved" in cp.stderr and not cp.stdout
    assert not any(k["name"] in ("anonymous", "big") for k in call(url, method="GET", headers=admin).json()["data"])
    assert service.alive


def _raw_request(url: str, head: bytes, body: bytes = b"") -> int:
    """One request with a header urllib would refuse to send; its status."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(head + b"Authorization: Bearer \xc3\xa9\xff\r\nHost: x\r\nConnection: close\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return int(reply.split(b" ", 2)[1])


def test_a_non_ascii_authorization_is_never_a_server_error(service):
    statuses = {
        "admin": _raw_request(service.urls["gateway"], b"GET /admin/pools HTTP/1.1\r\n"),
        "invoke": _raw_request(service.urls["lambda api"],
                               b"POST /2015-03-31/functions/EchoFunction/invocations HTTP/1.1\r\n", b"{}"),
        "rollback": _raw_request(service.urls["lambda api"],
                                 b"PUT /2015-03-31/functions/EchoFunction/aliases/live HTTP/1.1\r\n", b"{}"),
        "http api": _raw_request(service.urls["http api"], b"GET /echo HTTP/1.1\r\n"),
    }
    assert statuses["admin"] == statuses["rollback"] == 401
    assert statuses["invoke"] in (200, 401) and statuses["http api"] < 500, statuses
    assert service.alive


# ---- workers accept only their pool -------------------------------------------------

def _children(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if ppid == parent:
                    found.append(int(entry.name))
                    frontier.append(int(entry.name))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _listening_socket(pid: int) -> Path:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 8 and parts[6] in inodes and parts[7].startswith("/"):
            return Path(parts[7])
    raise AssertionError(f"worker {pid} listens on no Unix socket")


def _answer(path: Path, first: bytes) -> bytes:
    """What a worker says to a connection that opens with ``first`` and then asks for stats."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(first + json_frame(Kind.STATS, 1, {}))
        try:
            return s.recv(HEADER.size)  # b"": hung up
        except ConnectionResetError:
            return b""  # hung up with our stats request unread
        except TimeoutError:
            return b"no answer, still connected"


def test_workers_accept_only_their_pool(service):
    gw, admin = service.urls["gateway"], _bearer(service.admin)
    assert call(f"{gw}/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 2}, headers=admin).status == 200
    pid = call(f"{gw}/admin/pools", method="GET", headers=admin).json()[MODEL]["pids"][0]
    path = _listening_socket(pid)
    assert _mode(path.parent) == 0o700 and _mode(path) & 0o077 == 0, oct(_mode(path))
    assert _answer(path, b"") == b""  # no secret first: the worker hangs up without a word
    assert _answer(path, frame(Kind.AUTH, 0, b"not-the-secret")) == b""
    assert _answer(path, json_frame(Kind.GENERATE, 2, {"prompt": [1], "max_tokens": 2})) == b""
    # The secret came over stdin: it is on no command line.
    assert "secret" not in _cmdline(pid) and "socket" not in _cmdline(pid)
    # Still the same worker, still serving its pool.
    assert call(f"{gw}/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 2}, headers=admin).status == 200
    assert call(f"{gw}/admin/pools", method="GET", headers=admin).json()[MODEL]["pids"] == [pid]
    assert service.alive


# ---- secrets and files ----------------------------------------------------------------

def test_data_dir_and_its_files_are_the_service_users_alone(service):
    assert call(f"{service.urls['lambda api']}/2015-03-31/functions/EchoFunction/invocations", {},
                headers=_bearer(service.admin)).status == 200  # the ledger and its journal are written
    seen = set()
    for root, dirs, files in os.walk(service.data):
        for d in dirs:
            assert _mode(Path(root, d)) == 0o700, Path(root, d)
        for f in files:
            assert _mode(Path(root, f)) == 0o600, Path(root, f)
            seen.add(f)
    assert {"admin.key", "keys.sqlite3", "ledger.sqlite3"} <= seen


def _environ(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_secrets_come_from_files_or_env_and_reach_no_command_line(project, env, tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    (data / "ledger.sqlite3").touch(mode=0o644)  # an older install's world-readable files
    (data / "deployments").mkdir(mode=0o755)
    os.chmod(data, 0o755)
    admin_file, keys_file = tmp_path / "admin.key", tmp_path / "api-keys"
    admin, static = _keep("sk-admin-from-a-file-1234"), _keep("sk-static-from-a-file-5678")
    from_env = _keep("sk-static-from-the-env-9012")
    admin_file.write_text(admin + "\n")
    admin_file.chmod(0o600)
    keys_file.write_text(f"{static}\n")
    keys_file.chmod(0o644)  # said, not refused
    server = _serve(project, data, {**env, "LLMFN_API_KEYS": from_env},
                    "--admin-key-file", str(admin_file), "--api-keys-file", str(keys_file))
    try:
        gw = server.urls["gateway"]
        assert _mode(data) == _mode(data / "deployments") == 0o700 and _mode(data / "ledger.sqlite3") == 0o600
        assert not (data / "admin.key").exists()  # the configured key, not a new one
        assert f"API keys file {keys_file} can be read by other users" in server.stderr
        assert f"admin key file {admin_file}" not in server.stderr
        _openai_error(call(f"{gw}/v1/models", method="GET"), 401, "authentication_error")
        for key in (static, from_env):
            assert call(f"{gw}/v1/models", method="GET", headers=_bearer(key)).status == 200
        assert call(f"{gw}/admin/pools", method="GET", headers=_bearer(admin)).status == 200
        assert call(f"{gw}/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 2},
                    headers=_bearer(static)).status == 200  # a worker is running
        assert call(f"{server.urls['lambda api']}/2015-03-31/functions/EchoFunction/invocations", {},
                    headers=_bearer(static)).status == 200  # and a function instance
        children = _children(server.pid)
        assert any("runtime.pool.worker" in _cmdline(pid) for pid in children)
        for pid in [server.pid, *children]:
            line = _cmdline(pid)
            assert admin not in line and static not in line and TOKEN_PREFIX not in line, (pid, line)
        for pid in children:  # the environment the service was given is not handed down
            assert from_env not in _environ(pid), (pid, _cmdline(pid))
        assert server.alive
    finally:
        server.stop()


def test_a_secret_given_as_a_flag_is_warned_about_without_being_echoed(env):
    admin, static = _keep("sk-admin-on-argv-0001"), _keep("sk-static-on-argv-0002")
    cp = _cli("rollback", "EchoFunction", "--admin-key", admin, "--endpoint", "http://127.0.0.1:9", env=env)
    assert "--admin-key puts a secret on the command line" in cp.stderr and admin not in cp.stderr
    cp = _cli("invoke", "NoSuchFunction", "--template", "tests/e2e/app/template.yaml", "--api-keys", static,
              env=env)
    assert "--api-keys puts a secret on the command line" in cp.stderr and static not in cp.stderr


def test_no_secret_appears_in_any_log_these_tests_wrote(service):
    LOGS.append(service.stderr)
    assert SECRETS and LOGS
    for log in LOGS:
        leaked = [s[:12] + "…" for s in SECRETS if s in log]
        assert not leaked, f"secrets in a log: {leaked}"
