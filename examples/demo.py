"""`make demo`: set up a shop on a fresh reference server, walk the journey, stop the server.

Everything an operator would type is shown and run for real: `omnisdk-server tenant create`,
`omnisdk-server key create`, `omnisdk-server serve` (on SQLite, on a free port).
"""

from __future__ import annotations

import base64
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from omnisdk.testing import ServerProcess

HERE = Path(__file__).parent
CHANNELS = ("web", "app", "pos", "admin")


# The server's secret key (it seals signing keys and the tenant's identifier secret): the
# operator's commands and the server must use the same one, as on a real host.
SECRET_KEY = base64.b64encode(os.urandom(32)).decode()


def operator(*args: str, database_url: str) -> str:
    print(f"  $ omnisdk-server {shlex.join(args)}")
    result = subprocess.run(
        [sys.executable, "-m", "server_stub.cli", *args, "--database-url", database_url],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMNISDK_SECRET_KEY": SECRET_KEY},
    )
    return result.stdout.strip()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="omnisdk-demo-") as directory:
        database_url = f"sqlite:///{Path(directory) / 'omnisdk.sqlite3'}"
        print("== Operator: set up the shop")
        tenant = operator("tenant", "create", "Shoe Shop Berlin", database_url=database_url)
        keys = {}
        for channel in CHANNELS:
            keys[channel] = operator(
                "key",
                "create",
                "--tenant",
                tenant,
                "--channel",
                channel,
                "--name",
                f"demo {channel}",
                database_url=database_url,
            )
        print(f"  tenant {tenant}, one key per channel: {', '.join(CHANNELS)}")
        print(
            "  "
            + operator(
                "content",
                "import",
                "--tenant",
                tenant,
                str(HERE / "content" / "landing.yaml"),
                database_url=database_url,
            )
        )
        print("  $ omnisdk-server serve --port <free port>")
        log = Path(directory) / "server.log"
        # The journey's webhook receiver listens on 127.0.0.1: a server posts to this
        # machine only when its operator allows private networks.
        allow_local_webhooks = {"OMNISDK_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true"}
        with ServerProcess(
            database_url, env=allow_local_webhooks, log_path=log, secret_key=SECRET_KEY
        ) as server:
            print(f"  the reference server is ready at {server.url}\n")
            env = {**os.environ, "OMNISDK_URL": server.url}
            env.update({f"OMNISDK_{c.upper()}_KEY": keys[c] for c in CHANNELS})
            journey = subprocess.run([sys.executable, str(HERE / "journey.py")], env=env)
        print("\n== The reference server has stopped.")
        return journey.returncode


if __name__ == "__main__":
    sys.exit(main())
