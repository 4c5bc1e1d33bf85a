"""PgBouncer in transaction pooling mode in front of the test PostgreSQL, on a free port.

Debian's `pgbouncer` package (installed by .ci/run) is started with a generated ini that
points every database at the PostgreSQL server of OMNISDK_TEST_POSTGRES_URL; it trusts the
`postgres` user, as that server does. Started as root it switches to the `postgres` user
(PgBouncer refuses to run as root), so its files live in a directory that user can read.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from sqlalchemy.engine import make_url

BINARY_PATHS = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def pgbouncer_binary() -> str | None:
    found = shutil.which("pgbouncer")
    return found or next((p for p in BINARY_PATHS if os.access(p, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PgBouncer:
    """`with PgBouncer(direct_url) as bouncer:` then connect to `bouncer.url(database)`."""

    def __init__(self, direct_url: str, binary: str, pool_size: int = 20) -> None:
        self.direct = make_url(direct_url)
        self.binary = binary
        self.pool_size = pool_size
        self.port = _free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="omnisdk-pgbouncer-"))
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, database: str) -> str:
        """The URL of `database` through this PgBouncer (asyncpg driver)."""
        through = self.direct.set(
            drivername="postgresql+asyncpg", host="127.0.0.1", port=self.port, database=database
        )
        return through.render_as_string(hide_password=False)

    @property
    def log(self) -> str:
        path = self.directory / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> PgBouncer:
        user = self.direct.username or "postgres"
        (self.directory / "users.txt").write_text(f'"{user}" ""\n')
        (self.directory / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={self.direct.host or '127.0.0.1'} port={self.direct.port or 5432}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.directory / 'users.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 500\n"
            "ignore_startup_parameters = extra_float_digits\n"
            f"logfile = {self.directory / 'pgbouncer.log'}\n"
            f"pidfile = {self.directory / 'pgbouncer.pid'}\n"
        )
        command = [self.binary]
        if os.geteuid() == 0:  # PgBouncer will not run as root
            account = pwd.getpwnam("postgres")
            for path in [self.directory, *self.directory.iterdir()]:
                os.chown(path, account.pw_uid, account.pw_gid)
            command += ["-u", "postgres"]
        command.append(str(self.directory / "pgbouncer.ini"))
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {self._process.stderr}\n{self.log}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not listen on {self.port}:\n{self.log}")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)  # PgBouncer's immediate shutdown
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)
