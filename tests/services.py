"""Real services for the multi-machine tests: a PostgreSQL server (Debian's `postgresql` package,
`initdb` + `pg_ctl` into a temporary folder on 127.0.0.1) and an `mlflow server`, each started by a
fixture and torn down after."""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path | None:
    """The folder of `initdb` and `pg_ctl`: Debian keeps them under /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def _as_server_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the `postgres` (or `nobody`) user then."""
    if os.geteuid() != 0:
        return command
    user = "postgres" if shutil.which("runuser") and _user_exists("postgres") else "nobody"
    return ["runuser", "-u", user, "--", *command]


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@contextmanager
def running_postgres() -> Iterator[str]:
    """A fresh PostgreSQL server on 127.0.0.1 in a temporary folder, stopped and removed after; yields
    its admin URL (`postgresql+psycopg://cxr@127.0.0.1:<port>/postgres`). Raises RuntimeError when
    PostgreSQL or psycopg is missing or the server does not start."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL's initdb/pg_ctl are not installed (apt-get install postgresql)")
    if importlib.util.find_spec("psycopg") is None:
        raise RuntimeError('the PostgreSQL driver is not installed (pip install -e ".[postgres]")')
    folder = Path(tempfile.mkdtemp(prefix="cxr-postgres-"))  # not under pytest's root-only tmp folder
    folder.chmod(0o777)
    port = free_port()
    data = folder / "data"
    run = {"check": True, "capture_output": True, "text": True}
    try:
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "cxr", "--auth=trust", "-E", "UTF8"]
        subprocess.run(_as_server_user(initdb), **run)
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=200"
        start = [
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(folder / "log"),
            "-w",
            "start",
        ]
        subprocess.run(_as_server_user(start), **run)
    except subprocess.CalledProcessError as err:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {err.stderr or err.stdout}") from None
    try:
        yield f"postgresql+psycopg://cxr@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]))
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A fresh PostgreSQL server for the module's tests; skips, saying why, where there is none."""
    if postgres_bin() is None or importlib.util.find_spec("psycopg") is None:
        pytest.skip(
            'needs PostgreSQL (apt-get install postgresql) and psycopg (pip install -e ".[postgres]")'
        )
    with running_postgres() as url:
        yield url


def new_database(admin_url: str, name: str) -> str:
    """A new empty database on the server behind `admin_url`; returns its URL."""
    import psycopg

    with psycopg.connect(admin_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def wait_for_http(url: str, process: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    """Until `url` answers 200; fails with the process's log if it exits first."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None:
            pytest.fail(
                f"{process.args[:4]} exited: {process.stdout.read()[-3000:] if process.stdout else ''}"
            )
        assert time.monotonic() < deadline, f"{url} did not answer within {seconds} s"
        time.sleep(1)


def mlflow_process(
    args: list[str], health: str, cwd: Path, env: dict | None = None
) -> tuple[subprocess.Popen, str]:
    """`mlflow <args> --host 127.0.0.1 --port <free>` (a tracking or a model server), once `health`
    answers; returns the process (in a session of its own) and its URL. Its output goes to cwd/mlflow.log."""
    port = free_port()
    log = Path(cwd) / "mlflow.log"
    bin_dir, path = Path(sys.executable).parent, os.environ.get("PATH", "")
    # a file, not a pipe: nobody reads a busy server's log, and a full pipe would block it
    with log.open("a") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", *args, "--host", "127.0.0.1", "--port", str(port)],
            # the server execs uvicorn/gunicorn by name: find it beside this interpreter, activated or not
            env={**os.environ, **(env or {}), "PATH": f"{bin_dir}{os.pathsep}{path}"},
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}{health}", server, log)
    return server, url


def mlflow_server(backend_store: str, artifacts: Path, cwd: Path) -> tuple[subprocess.Popen, str]:
    """A tracking server on `backend_store`, serving the artifacts it keeps in `artifacts`."""
    args = ["server", "--backend-store-uri", backend_store, "--artifacts-destination", str(artifacts)]
    return mlflow_process([*args, "--workers", "1"], "/health", cwd)
