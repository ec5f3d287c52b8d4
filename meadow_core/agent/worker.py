"""A warm worker process: runs tasks one at a time and keeps its imports between them.

Started by the agent as ``python -m meadow_core.agent.worker FD``, FD being a socket to
the agent (in a container: ``unix:PATH``, a socket the agent listens on) that carries
framed protocol messages; stdout and stderr are a pipe the agent reads as the running
task's log. After each task the worker flushes both streams and writes an end marker
line, so the agent knows the task's output is complete. Given ``--watch-code`` (code run
in place), its ``ready`` and ``done`` messages name the user's files it imported, so the
agent can retire it once one changes (``code_watch``).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import io
import os
import pickle
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import cloudpickle

from meadow_core import protocol
from meadow_core.agent.code_watch import ImportedCode
from meadow_core.task_context import STORE_VARIABLE, TaskContext, set_current_task

END_MARKER = b"\x1eMEADOW-END "
#: A container worker proves with this value (from its environment) that it is the
#: worker the agent started, not another local user who found the agent's socket.
WORKER_TOKEN_VARIABLE = "MEADOW_WORKER_TOKEN"
#: A folder the agent adopts result files from (beside its store, so adopting is a
#: rename): a large result is pickled straight into a file there, never sent as a frame.
SPILL_DIR_VARIABLE = "MEADOW_SPILL_DIR"
_FUNCTION_CACHE_SIZE = 32


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when the agent dies, so no worker outlives it."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:
            os._exit(1)


def _adopt_orphans() -> None:
    """Become the subreaper of the tasks' processes: a daemon a task leaves behind
    (a double fork) is re-parented to this worker, not to init, so it can be ended."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_child_subreaper = 36
        libc.prctl(pr_set_child_subreaper, 1)


def _children() -> list[int]:
    """This process's children, from /proc (no scan of every process: the common case
    of none is a few system calls)."""
    pids: list[int] = []
    try:
        threads = os.listdir("/proc/self/task")
    except OSError:
        return pids
    for thread in threads:
        with contextlib.suppress(OSError), open(f"/proc/self/task/{thread}/children") as f:
            pids.extend(int(pid) for pid in f.read().split())
    return pids


def end_leftovers(deadline_seconds: float = 2.0) -> None:
    """End every process the last task left running, with their descendants (also
    ``setsid`` ones and daemons re-parented here), and reap them: nothing of a task
    outlives it or is charged to the next task on this worker."""
    pids = _children()
    if not pids:
        return
    import psutil  # only when a task left something (psutil scans /proc)

    give_up = time.monotonic() + deadline_seconds
    while pids and time.monotonic() < give_up:
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                for victim in [*process.children(recursive=True), process]:
                    with contextlib.suppress(psutil.Error):
                        victim.kill()
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        pids = _children()  # descendants re-parented here meanwhile


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _recv(sock: socket.socket) -> dict[str, Any]:
    header = _recv_exact(sock, protocol.frame_header_size())
    return protocol.unpack(_recv_exact(sock, protocol.frame_length(header)))


def describe_exception(exc: BaseException) -> list[str]:
    """``[type, message, traceback]`` of an exception, as the protocol carries it."""
    exc_type = type(exc)
    name = exc_type.__qualname__
    if exc_type.__module__ not in ("builtins", "__main__"):
        name = f"{exc_type.__module__}.{name}"
    return [name, str(exc), "".join(traceback.format_exception(exc))]


class _Worker:
    def __init__(self, sock: socket.socket, code: ImportedCode | None = None) -> None:
        self.sock = sock
        #: The user's files this worker imported, reported to the agent, which retires
        #: the worker when one changes (None: code that cannot change, a snapshot).
        self.code = code
        self.functions: OrderedDict[str, Callable[..., Any]] = OrderedDict()
        # Functions whose bytes did not load (a module missing here, say): the agent
        # sends the bytes once, so the tasks queued behind get the same error.
        self.unloadable: OrderedDict[str, BaseException] = OrderedDict()

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(protocol.frame(message))

    def load_function(self, message: dict[str, Any]) -> Callable[..., Any]:
        key = message.get("function_key")
        if key is None:
            module_name, _, attr = message["function_name"].rpartition(".")
            if not module_name:
                raise ValueError(
                    f"function name {message['function_name']!r} must be 'module.function'"
                )
            target: Any = importlib.import_module(module_name)
            for part in attr.split(":"):
                target = getattr(target, part)
            return target  # type: ignore[no-any-return]
        if key in self.functions:
            self.functions.move_to_end(key)
            return self.functions[key]
        blob = message.get("function_bytes")
        if blob is None:
            if key in self.unloadable:
                raise self.unloadable[key]
            # The agent believed we had it cached; ask for it (cache was trimmed).
            raise LookupError(f"function {key} not cached")
        try:
            function = cloudpickle.loads(blob)
        except BaseException as exc:
            self.unloadable[key] = exc
            while len(self.unloadable) > _FUNCTION_CACHE_SIZE:
                self.unloadable.popitem(last=False)
            raise
        self.functions[key] = function
        while len(self.functions) > _FUNCTION_CACHE_SIZE:
            self.functions.popitem(last=False)
        return function  # type: ignore[no-any-return]

    def run(self, message: dict[str, Any]) -> dict[str, Any]:
        reply: dict[str, Any] = {"op": "done", "token": message["token"]}
        set_current_task(
            TaskContext(
                job_id=message["job_id"],
                task_id=message["task_id"],
                attempt=message["attempt"],
                store_location=os.environ[STORE_VARIABLE],
            )
        )
        try:
            return self._run(message, reply)
        finally:
            set_current_task(None)

    def _run(self, message: dict[str, Any], reply: dict[str, Any]) -> dict[str, Any]:
        try:
            function = self.load_function(message)
            payload = pickle.loads(message["args"])
            if message["kind"] == "map":
                value = function(payload)
            else:
                args, kwargs = payload
                value = function(*args, **kwargs)
        except BaseException as exc:  # the user's code may raise anything, even SystemExit
            reply["error"] = describe_exception(exc)
            return reply
        spill = _SpillingWriter(os.environ.get(SPILL_DIR_VARIABLE))
        try:
            cloudpickle.dump(value, spill)
            reply.update(spill.finish())
        except BaseException as exc:
            spill.discard()
            name, message_text, tb = describe_exception(exc)
            if spill.write_error is not None:  # a full disk, not an unpicklable value
                reply["error"] = [
                    protocol.ErrorKind.AGENT_ERROR,
                    f"could not store the task's result at {spill.path}: {spill.write_error}",
                    tb,
                ]
                return reply
            reply["error"] = [
                protocol.ErrorKind.RESULT_NOT_PICKLABLE,
                f"the task's return value of type {type(value).__qualname__} could not be "
                f"pickled ({name}: {message_text}); return plain data instead",
                tb,
            ]
        return reply

    def _report_code(self, message: dict[str, Any]) -> None:
        assert self.code is not None
        found = self.code.report()
        if found:
            message["code"] = found

    def serve(self) -> None:
        try:
            self._serve()
        finally:
            end_leftovers()

    def _serve(self) -> None:
        ready: dict[str, Any] = {"op": "ready", "pid": os.getpid()}
        token = os.environ.pop(WORKER_TOKEN_VARIABLE, None)  # tasks need not see it
        if token is not None:
            ready["token"] = token
        if self.code is not None:
            self._report_code(ready)
        self.send(ready)
        while True:
            try:
                message = _recv(self.sock)
            except EOFError:
                return
            if message["op"] == "exit":
                return
            if self.code is not None:
                self.code.forget_listings()
            reply = self.run(message)
            end_leftovers()
            if self.code is not None:
                self._report_code(reply)
            sys.stdout.flush()
            sys.stderr.flush()
            # The end marker goes through the same pipe as the task's output, after it.
            os.write(1, END_MARKER + str(message["token"]).encode() + b"\n")
            self.send(reply)


class _SpillingWriter:
    """Where a result is pickled: memory up to the inline limit, then a file in the
    spill folder, written as the pickler goes. A 2 GB result costs the value plus a
    pickle frame, not the value plus its pickled copy, and never meets the socket's
    32-bit frame length. Without a spill folder (a container) everything stays in memory.
    """

    def __init__(self, folder: str | None) -> None:
        self.folder = folder
        self.buffer = io.BytesIO()
        self.file: io.BufferedWriter | None = None
        self.path: str | None = None
        self.write_error: OSError | None = None

    def write(self, data: bytes | memoryview) -> int:
        if self.file is None:
            size = memoryview(data).nbytes
            if self.folder is None or self.buffer.tell() + size <= protocol.INLINE_LIMIT:
                return self.buffer.write(data)
            try:
                fd, self.path = tempfile.mkstemp(dir=self.folder, prefix="result-")
                self.file = os.fdopen(fd, "wb")
                self.file.write(self.buffer.getbuffer())
            except OSError as exc:
                self.write_error = exc
                raise
            self.buffer = io.BytesIO()
        try:
            return self.file.write(data)
        except OSError as exc:
            self.write_error = exc
            raise

    def finish(self) -> dict[str, Any]:
        """The reply's part: ``value`` (bytes) or ``value_file`` (a path to adopt)."""
        if self.file is None:
            return {"value": self.buffer.getvalue()}
        try:
            self.file.close()  # flushes: the disk may fill here too
        except OSError as exc:
            self.write_error = exc
            raise
        return {"value_file": self.path}

    def discard(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def _exit_when_stdin_closes() -> None:
    """In a container the agent is no parent to die with; it holds the other end of
    stdin (``docker run -i``), which closes when the agent or the docker CLI dies."""

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(0, 4096):
                pass
        os._exit(70)

    threading.Thread(target=watch, name="meadow-lifeline", daemon=True).start()


def _connect(argument: str) -> socket.socket:
    """FD of a socket the agent passed, or ``unix:PATH`` of one it listens on (a
    container, where no descriptor can be inherited)."""
    if argument.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(argument[len("unix:") :])
        return sock
    return socket.socket(fileno=int(argument))


def main() -> None:
    """``worker FD [--watch-code SINCE_NS]``: with ``--watch-code`` the worker reports
    the user's files it imports (code run in place, which may change on disk)."""
    in_container = sys.argv[1].startswith("unix:")
    if in_container:
        # docker carries stdout and stderr as two streams that may reorder; one
        # stream keeps each task's output before its end marker.
        os.dup2(1, 2)
        _exit_when_stdin_closes()
    else:
        _die_with_parent()
    _adopt_orphans()
    # The agent stops workers with SIGTERM; a task's own handlers may change that.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = _connect(sys.argv[1])
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    code = None
    if sys.argv[2:3] == ["--watch-code"]:
        code = ImportedCode(since_ns=int(sys.argv[3]))
    _Worker(sock, code).serve()


if __name__ == "__main__":
    main()
