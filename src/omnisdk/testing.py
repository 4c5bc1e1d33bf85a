"""The real reference server for your tests: no mocks, a temporary SQLite file, a free port.

    from omnisdk.testing import ReferenceServer

    def test_checkout_flow():
        with ReferenceServer() as server:
            shop = server.create_tenant("test shop")
            with shop.client("web") as client:
                assert client.system.whoami().tenant_id == shop.id

And with asyncio (pytest-asyncio), the same server and an `AsyncClient`:

    async def test_checkout_flow_async():
        with ReferenceServer() as server:
            shop = server.create_tenant("test shop")
            async with shop.async_client("web") as client:
                assert (await client.system.whoami()).tenant_id == shop.id

`ReferenceServer` runs the server in a thread of this process; `ServerProcess` runs
`omnisdk-server serve` as a separate process, exactly as an operator would. Both take
`port=` (a free port when None) and need the server extra: `pip install "omnisdk[server]"`.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from omnisdk._async import AsyncClient
from omnisdk._sync import Client
from omnisdk.core.channels import Channel, Scope

T = TypeVar("T")
ASGIApp = Any
STARTUP_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    # Its own thread and loop, so this works from sync code and from inside a running loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@dataclass
class TestTenant:
    """A tenant on the test server, with a helper to mint keys and clients for it."""

    __test__ = False  # not a pytest test class

    id: str
    name: str
    server: _ServerBase = field(repr=False)
    _keys: dict[tuple[Channel, frozenset[Scope] | None], str] = field(
        default_factory=dict, repr=False
    )

    def key(self, channel: Channel | str, scopes: list[Scope] | None = None) -> str:
        """An API key of this tenant for `channel` (one per channel and scope set, reused)."""
        wanted = (Channel(channel), frozenset(scopes) if scopes is not None else None)
        if wanted not in self._keys:
            self._keys[wanted] = self.server.create_key(self.id, *wanted)
        return self._keys[wanted]

    def client(self, channel: Channel | str = Channel.WEB, **options: Any) -> Client:
        """A `Client` of this tenant on `channel`; `options` are those of `omnisdk.Client`."""
        return Client(self.server.url, self.key(channel), channel=Channel(channel), **options)

    def async_client(self, channel: Channel | str = Channel.WEB, **options: Any) -> AsyncClient:
        """An `AsyncClient` of this tenant on `channel` (same options as `client`)."""
        return AsyncClient(self.server.url, self.key(channel), channel=Channel(channel), **options)


# Tenant settings for tests about something other than consent that need events attributed to
# their customers without recording analytics consent first (ConsentSettings.analytics).
ATTRIBUTED_EVENTS: dict[str, Any] = {"consent": {"analytics": "legitimate_interest"}}


class _ServerBase:
    url: str
    database_url: str

    def __init__(self, database_url: str | None, secret_key: str | None = None) -> None:
        # The key that seals signing keys at rest; the same one must serve a database later.
        self.secret_key = secret_key or base64.b64encode(os.urandom(32)).decode()
        self._tmpdir: str | None = None
        self._clients_dir: str | None = None
        if database_url is None:
            self._tmpdir = tempfile.mkdtemp(prefix="omnisdk-test-")
            database_url = f"sqlite+aiosqlite:///{Path(self._tmpdir) / 'omnisdk.sqlite3'}"
        self.database_url = database_url

    def data_path(self, name: str) -> Path:
        """A directory for one test client's local data (its outbox, caches), removed with
        the server's temporary files."""
        if self._clients_dir is None:
            self._clients_dir = tempfile.mkdtemp(prefix="omnisdk-clients-")
        return Path(self._clients_dir) / name

    def _write(self, work: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
        """Run `work(connection)` in one write transaction on the server's database."""
        from server_stub.storage.database import Database

        async def run() -> T:
            database = Database(self.database_url)
            try:
                async with database.transaction(write=True) as conn:
                    return await work(conn)
            finally:
                await database.dispose()

        return _run(run())

    def create_tenant(
        self, name: str = "test shop", settings: dict[str, Any] | None = None
    ) -> TestTenant:
        """A tenant (with `settings`, TenantSettings as JSON, e.g. {"consent": {...}})."""
        from server_stub.sealing import Sealer
        from server_stub.services import tenants

        async def work(conn: Any) -> str:
            sealer = Sealer(base64.b64decode(self.secret_key))
            return (await tenants.create(conn, name, settings, sealer=sealer)).id

        return TestTenant(id=self._write(work), name=name, server=self)

    def create_key(self, tenant_id: str, channel: Channel, scopes: frozenset[Scope] | None) -> str:
        from server_stub.services import keys

        async def work(conn: Any) -> str:
            return (await keys.create(conn, tenant_id, channel, "test", scopes))[1]

        return self._write(work)

    def _migrate(self) -> None:
        from server_stub.storage.migrate import upgrade

        _run(upgrade(self.database_url))

    def _cleanup(self) -> None:
        for directory in (self._tmpdir, self._clients_dir):
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
        self._tmpdir = self._clients_dir = None


class ReferenceServer(_ServerBase):
    """The reference server in a background thread of this process, on a free port.

    `wrap` lets a test put ASGI middleware around the real app (to inject faults, say).
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        port: int | None = None,
        wrap: Callable[[ASGIApp], ASGIApp] | None = None,
        **settings: Any,
    ) -> None:
        """`database_url`: a database to use (a temporary SQLite file when None); `port`: the
        port on 127.0.0.1 to listen on (a free one when None); `settings`: server settings
        (`omnisdk-server serve --help`), such as `change_retention_seconds=60`."""
        super().__init__(database_url)
        self.port = port
        self._wrap = wrap
        self._settings = settings
        self._thread: threading.Thread | None = None
        self._server: Any = None

    def start(self) -> ReferenceServer:
        import uvicorn

        from server_stub.app import create_app
        from server_stub.frontdoor import uvicorn_options
        from server_stub.settings import Settings

        self._migrate()
        settings = Settings(
            database_url=self.database_url, **{"secret_key": self.secret_key, **self._settings}
        )
        app = create_app(settings)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port or 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(
            self._wrap(app) if self._wrap else app,
            lifespan="on",
            **uvicorn_options(settings, in_process=True),
            timeout_graceful_shutdown=1,  # open change-feed streams reconnect; see cli serve
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True, name="omnisdk-server"
        )
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the reference server did not start; see its log above")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = self._thread = None
        self._cleanup()

    def __enter__(self) -> ReferenceServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ServerProcess(_ServerBase):
    """`omnisdk-server serve` as a child process on a free port, as an operator runs it."""

    def __init__(
        self,
        database_url: str | None = None,
        *,
        workers: int = 1,
        env: dict[str, str] | None = None,
        log_path: str | Path | None = None,
        port: int | None = None,
        secret_key: str | None = None,
    ) -> None:
        super().__init__(database_url, secret_key)
        self.workers = workers
        self.port = port
        self._env = env or {}
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self) -> ServerProcess:
        port = self.port or free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "OMNISDK_SECRET_KEY": self.secret_key,
            **self._env,
            "OMNISDK_DATABASE_URL": self.database_url,
        }
        command = [
            sys.executable,
            "-m",
            "server_stub.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(self.workers),
        ]
        self._log = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(command, env=env, stdout=self._log, stderr=self._log)
        self._wait_ready()
        return self

    @property
    def pid(self) -> int:
        """The server's process id (to watch its memory, say); only while it runs."""
        if self._process is None:
            raise RuntimeError("the server is not running")
        return self._process.pid

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"omnisdk-server exited with status {self._process.returncode}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"omnisdk-server was not ready within {STARTUP_TIMEOUT} s")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
        self._log = None
        self._cleanup()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
