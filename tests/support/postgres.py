"""A real PostgreSQL server for the tests: initdb into a temporary folder and
``postgres`` on a free loopback port, run as the ``postgres`` system user when
the tests run as root (PostgreSQL refuses to run as root). Each test gets a
database of its own on the one server of the session."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.support.cli import free_port, wait_until


def _binary(name: str) -> str:
    """A PostgreSQL server program: on PATH, or in Debian's versioned folder."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                                                   reverse=True)), None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL's {name} is not installed (make test installs it)")
        pytest.skip(f"PostgreSQL's {name} is not installed; `make test` installs it")
    return found


class PostgresServer:
    """One server in a folder of its own; ``url(db)`` names a database on it."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="llmfn-pg-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._as_user: dict = {}
        if os.geteuid() == 0:  # run the server as postgres, which owns its folder
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def start(self) -> PostgresServer:
        data = self.dir / "data"
        subprocess.run([_binary("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "--no-sync", "-E", "UTF8", "--locale=C"], check=True, cwd=self.dir,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **self._as_user)
        self.proc = subprocess.Popen(
            [_binary("postgres"), "-D", str(data), "-p", str(self.port), "-k", str(self.dir),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=200"],
            cwd=self.dir, stdout=subprocess.DEVNULL, stderr=open(self.dir / "server.log", "wb"),
            **self._as_user)
        wait_until(self._accepts, 30, message=f"postgres did not start (see {self.dir}/server.log)")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _accepts(self) -> bool:
        import psycopg

        assert self.proc is not None and self.proc.poll() is None, "postgres exited"
        try:
            psycopg.connect(self.url(), connect_timeout=1).close()
            return True
        except psycopg.OperationalError:
            return False

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown: SIGTERM's waits for clients
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
