"""The loopback bridge: a VM reaches moto at the same URL the host uses, and nothing else.

Each VM gets a listener on 127.0.0.1:<moto port> inside its own namespace; every
connection accepted there is forwarded to moto on the host's loopback. Because the
simulator process holds sockets in both namespaces it forwards directly (no socat, no
unix-socket hop), and the only destination it ever dials is moto's own address.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any


class Bridge:
    """One event-loop thread forwarding all VMs' listeners to a single target."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="devcloud-bridge", daemon=True)
        self._servers: dict[str, asyncio.Server] = {}
        self._writers: dict[str, set[asyncio.StreamWriter]] = {}

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        future: Future[None] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        future.result(timeout=10)

    def add(self, key: str, listener: socket.socket) -> None:
        """Serve `listener` (already bound inside a VM) until remove(key)."""
        self._call(self._add(key, listener))

    def remove(self, key: str) -> None:
        """Close the VM's listener and cut its open connections (the machine is gone)."""
        if self._thread.is_alive():
            self._call(self._remove(key))

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        for key in list(self._servers):
            self.remove(key)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _add(self, key: str, listener: socket.socket) -> None:
        writers: set[asyncio.StreamWriter] = set()
        self._writers[key] = writers

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.add(writer)
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                writer.close()
                writers.discard(writer)
                return
            writers.add(up_writer)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                for end in (writer, up_writer):
                    end.close()
                    writers.discard(end)

        listener.setblocking(False)
        self._servers[key] = await asyncio.start_server(handle, sock=listener)

    async def _remove(self, key: str) -> None:
        server = self._servers.pop(key, None)
        if server is not None:
            server.close()
        for writer in self._writers.pop(key, set()):
            writer.close()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()
