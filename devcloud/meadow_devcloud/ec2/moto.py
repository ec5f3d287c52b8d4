"""moto in server mode as a child process: the dev cloud's emulated AWS API.

A real subprocess (not an in-process thread) so tests exercise exactly what a user of
`meadow aws devcloud start` gets, and so a crash of moto cannot take the caller with it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from meadow_devcloud.vm.procs import die_with_parent

# Without these moto accepts any instance type, AMI or key name, hiding real mistakes.
VALIDATION_ENV = {
    "MOTO_IAM_LOAD_MANAGED_POLICIES": "true",
    "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION": "true",
    "MOTO_ENABLE_AMI_VALIDATION": "true",
    "MOTO_ENABLE_KEYPAIR_VALIDATION": "true",
}

DEFAULT_REGION = "us-east-2"

# Loopback only: never let a proxy from the environment see dev cloud traffic.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class MotoStartError(RuntimeError):
    """moto did not come up; the message carries the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def client_env(url: str, region: str = DEFAULT_REGION) -> dict[str, str]:
    """What a user exports to point boto3 (and Meadow) at the emulated cloud."""
    return {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": region,
    }


@dataclass
class MotoServer:
    """A running `python -m moto.server` bound to loopback."""

    host: str
    port: int
    process: subprocess.Popen[bytes] | None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @classmethod
    def start(
        cls,
        port: int = 0,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        timeout: float = 30.0,
        attempts: int = 3,
    ) -> MotoServer:
        """Start moto and wait until it answers; port 0 picks a free one (retrying a race)."""
        last: MotoStartError | None = None
        for _ in range(attempts if port == 0 else 1):
            chosen = port or free_port(host)
            try:
                return cls._start_once(chosen, host, log_path, timeout)
            except MotoStartError as error:
                last = error
        assert last is not None
        raise last

    @classmethod
    def _start_once(cls, port: int, host: str, log_path: Path | None, timeout: float) -> MotoServer:
        env = {**os.environ, **VALIDATION_ENV}
        # moto must never be reached through, or reach out via, a proxy.
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env.pop(name, None)
        log: IO[bytes] | int = subprocess.DEVNULL
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "meadow_devcloud.ec2.moto_serialized",
                    "-H",
                    host,
                    "-p",
                    str(port),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=die_with_parent,
            )
        finally:
            if not isinstance(log, int):
                log.close()
        server = cls(host, port, process, log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise MotoStartError(
                    f"moto exited with {process.returncode} on port {port}: {server._log_tail()}"
                )
            if server.ready():
                return server
            time.sleep(0.05)
        server.stop()
        raise MotoStartError(f"moto did not answer on {server.url} in {timeout}s")

    @classmethod
    def attach(cls, url: str) -> MotoServer:
        """A handle on a moto someone else runs (stop() leaves it alone)."""
        host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
        return cls(host, int(port), None)

    def ready(self) -> bool:
        try:
            with _opener.open(f"{self.url}/moto-api/", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def reset(self) -> None:
        """Forget every resource in every service (between tests)."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST", data=b"")
        with _opener.open(request, timeout=30) as response:
            response.read()

    def env(self, region: str = DEFAULT_REGION) -> dict[str, str]:
        return client_env(self.url, region)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_text(errors="replace")[-2000:]
