"""The container worker's socket is open to every user (the image may run as any), so
only the peer holding the worker's token gets work; an impostor is closed unheard."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from meadow_core import protocol
from meadow_core.agent.processes import _accept_with_token


def test_only_the_peer_with_the_token_is_taken_for_the_worker(tmp_path: Path) -> None:
    path = str(tmp_path / "agent.sock")

    async def scenario() -> tuple[bytes, dict[str, object]]:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(8)
        listener.setblocking(False)
        accepted = asyncio.ensure_future(_accept_with_token(listener, "s3cret"))
        impostor_reader, impostor = await asyncio.open_unix_connection(path)
        impostor.write(protocol.frame({"op": "ready", "pid": 1, "token": "guess"}))
        await impostor.drain()
        closed = await asyncio.wait_for(impostor_reader.read(), 10)  # b"": hung up on
        genuine_reader, genuine = await asyncio.open_unix_connection(path)
        genuine.write(protocol.frame({"op": "ready", "pid": 2, "token": "s3cret"}))
        await genuine.drain()
        _, _, writer = await asyncio.wait_for(accepted, 10)
        writer.write(protocol.frame({"op": "run", "token": "t1"}))
        await writer.drain()
        header = await genuine_reader.readexactly(protocol.frame_header_size())
        got = protocol.unpack(await genuine_reader.readexactly(protocol.frame_length(header)))
        for w in (writer, genuine, impostor):
            w.close()
        listener.close()
        return closed, got

    closed, got = asyncio.run(scenario())
    assert closed == b"", "the impostor received nothing"
    assert got["op"] == "run" and got["token"] == "t1", "the genuine worker gets the work"
