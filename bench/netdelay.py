"""A TCP proxy on 127.0.0.1 that delivers every byte a fixed time after it was sent: a
network between the server and its database, on one machine.

Each direction of each connection is a queue of (due time, bytes): what is read is delivered
`one_way` seconds later, in order, however much follows it, so the link adds latency without
limiting throughput (a round trip costs twice `one_way` more). It runs its own event loop in a
thread, so the processes it serves need not know it is there.

    with DelayedLink(5432, one_way=0.0005) as link:
        ... connect to 127.0.0.1:link.port ...
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import TracebackType

CHUNK = 65_536


class DelayedLink:
    def __init__(self, upstream_port: int, one_way: float, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.one_way = one_way
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(256)
        self.port = int(self._listener.getsockname()[1])
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> DelayedLink:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        started.result(timeout=10)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._connection, sock=self._listener)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    async def _connection(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            reader, writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(
                self._direction(client_reader, writer),
                self._direction(reader, client_writer),
                return_exceptions=True,
            )
        except asyncio.CancelledError:  # the link is closing: so is this connection
            writer.close()
            client_writer.close()

    async def _direction(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Read from `source` as it arrives; deliver each chunk to `sink` `one_way` later."""
        due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                at, data = await due.get()
                if not data:
                    break
                wait = at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                sink.write(data)
                await sink.drain()
            sink.close()

        delivering = asyncio.create_task(deliver())
        try:
            while data := await source.read(CHUNK):
                due.put_nowait((time.monotonic() + self.one_way, data))
        finally:
            due.put_nowait((0.0, b""))
            await delivering
