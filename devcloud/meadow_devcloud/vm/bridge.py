"""The loopback bridge: a VM reaches the emulated cloud at the URLs the host uses, and
nothing else.

For each of the cloud's services (moto; Azurite's blob, queue and table ports ...) a VM
gets a listener on 127.0.0.1:<the service's port> inside its own namespace; every
connection accepted there is forwarded to that service on the host's loopback. Because
the simulator process holds sockets in both namespaces it forwards directly (no socat,
no unix-socket hop), and the only destinations it ever dials are the services' own
addresses.
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
    """One event-loop thread forwarding all VMs' listeners, each to its own target."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="devcloud-bridge", daemon=True)
        self._servers: dict[str, list[asyncio.Server]] = {}
        self._writers: dict[str, set[asyncio.StreamWriter]] = {}

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        future: Future[None] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        future.result(timeout=10)

    def add(self, key: str, listener: socket.socket, target: tuple[str, int]) -> None:
        """Forward `listener` (already bound inside a VM) to `target` until remove(key).

        A VM (`key`) may have several listeners, one per service it reaches.
        """
        self._call(self._add(key, listener, target))

    def remove(self, key: str) -> None:
        """Close the VM's listeners and cut its open connections (the machine is gone)."""
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

    async def _add(self, key: str, listener: socket.socket, target: tuple[str, int]) -> None:
        writers = self._writers.setdefault(key, set())

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.add(writer)
            try:
                up_reader, up_writer = await asyncio.open_connection(*target)
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
        server = await asyncio.start_server(handle, sock=listener)
        self._servers.setdefault(key, []).append(server)

    async def _remove(self, key: str) -> None:
        servers = self._servers.pop(key, [])
        for server in servers:
            server.close()
        for writer in self._writers.pop(key, set()):
            writer.close()
        for server in servers:
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
