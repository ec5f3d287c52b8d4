"""A fake EC2 instance metadata service, served at 169.254.169.254 inside one VM.

Enough of IMDS (v1 and v2 tokens) for boto3's instance-profile credentials and region
lookups and for Meadow's agent: identity, placement, the instance profile's credentials
and `spot/instance-action`, which answers 404 until the dev cloud announces an
interruption by writing the notice file (so a separate `devcloud interrupt` process can
announce it too).
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

#: The notice file in a VM's directory; `spot/instance-action` serves it while it exists.
NOTICE_FILE = "spot-instance-action.json"


@dataclass(frozen=True)
class Identity:
    """What the metadata service says about its instance (from describe_instances)."""

    instance_id: str
    instance_type: str
    region: str
    availability_zone: str
    image_id: str
    account_id: str
    private_ip: str
    lifecycle: str  # "spot" or "on-demand"
    role: str | None  # the instance profile's role; None: no credentials (like EC2)
    tokens_required: bool
    user_data: bytes


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def interruption_notice(seconds: float = 120.0) -> dict[str, str]:
    return {"action": "terminate", "time": iso(datetime.now(UTC) + timedelta(seconds=seconds))}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        listener: socket.socket,
        identity: Identity,
        notice_path: Path,
        log_path: Path | None,
    ) -> None:
        super().__init__(listener.getsockname(), _Handler, bind_and_activate=False)
        self.log_path = log_path
        self.socket.close()
        self.socket = listener
        self.identity = identity
        self.notice_path = notice_path
        self.tokens: dict[str, float] = {}
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        if self.server.log_path is not None:
            stamp = datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]
            with open(self.server.log_path, "a") as log:
                log.write(f"{stamp} {format % args}\n")

    def _send(self, status: int, body: str = "", content_type: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path != "/latest/api/token":
            self._send(404, "Not Found")
            return
        try:
            ttl = int(self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", ""))
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= 21600:
            self._send(400, "Bad Request")
            return
        token = secrets.token_urlsafe(32)
        with self.server.lock:
            self.server.tokens[token] = time.monotonic() + ttl
        self.send_response(200)
        self.send_header("X-aws-ec2-metadata-token-ttl-seconds", str(ttl))
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(token)))
        self.end_headers()
        self.wfile.write(token.encode())

    def _authorized(self) -> bool:
        token = self.headers.get("X-aws-ec2-metadata-token")
        if token is None:
            return not self.server.identity.tokens_required
        with self.server.lock:
            expiry = self.server.tokens.get(token)
        return expiry is not None and expiry > time.monotonic()

    def do_GET(self) -> None:
        if not self._authorized():
            self._send(401, "Unauthorized")
            return
        path = self.path.split("?", 1)[0].rstrip("/")
        found = self._lookup(path)
        if found is None:
            self._send(404, "Not Found")
        elif path.endswith("/document") or path.startswith("/latest/meta-data/iam/"):
            self._send(200, found, "application/json" if found.startswith("{") else "text/plain")
        else:
            self._send(200, found)

    def _notice(self) -> dict[str, str] | None:
        try:
            notice: dict[str, str] = json.loads(self.server.notice_path.read_text())
            return notice
        except (OSError, ValueError):
            return None

    def _lookup(self, path: str) -> str | None:
        me = self.server.identity
        notice = self._notice()
        meta: dict[str, str] = {
            "ami-id": me.image_id,
            "instance-id": me.instance_id,
            "instance-type": me.instance_type,
            "instance-life-cycle": me.lifecycle,
            "local-ipv4": me.private_ip,
            "local-hostname": _hostname(me.private_ip, me.region),
            "hostname": _hostname(me.private_ip, me.region),
            "placement/availability-zone": me.availability_zone,
            "placement/region": me.region,
        }
        if me.role is not None:
            meta["iam/security-credentials"] = me.role
            meta[f"iam/security-credentials/{me.role}"] = json.dumps(_credentials())
            profile = f"arn:aws:iam::{me.account_id}:instance-profile/{me.role}"
            meta["iam/info"] = json.dumps(
                {
                    "Code": "Success",
                    "LastUpdated": iso(datetime.now(UTC)),
                    "InstanceProfileArn": profile,
                    "InstanceProfileId": "AIPA" + me.instance_id[2:].upper(),
                }
            )
        if notice is not None:
            meta["spot/instance-action"] = json.dumps(notice)
            meta["spot/termination-time"] = notice.get("time", "")
        if path == "/latest/user-data":
            return me.user_data.decode(errors="replace") if me.user_data else None
        if path == "/latest/dynamic/instance-identity/document":
            return json.dumps(
                {
                    "accountId": me.account_id,
                    "architecture": "x86_64",
                    "availabilityZone": me.availability_zone,
                    "imageId": me.image_id,
                    "instanceId": me.instance_id,
                    "instanceType": me.instance_type,
                    "privateIp": me.private_ip,
                    "region": me.region,
                    "version": "2017-09-30",
                }
            )
        prefix = "/latest/meta-data"
        if path != prefix and not path.startswith(prefix + "/"):
            return None
        key = path[len(prefix) + 1 :]
        if key in meta:
            return meta[key]
        # A directory: list the next path component of every key below it.
        below = key + "/" if key else ""
        children = sorted(
            {
                name[len(below) :].split("/", 1)[0] + ("/" if "/" in name[len(below) :] else "")
                for name in meta
                if name.startswith(below)
            }
        )
        return "\n".join(children) if children else None


def _hostname(private_ip: str, region: str) -> str:
    return f"ip-{private_ip.replace('.', '-')}.{region}.compute.internal"


def _credentials() -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "Code": "Success",
        "LastUpdated": iso(now),
        "Type": "AWS-HMAC",
        "AccessKeyId": "testing",
        "SecretAccessKey": "testing",
        "Token": "testing",
        "Expiration": iso(now + timedelta(hours=6)),
    }


class Imds:
    """One VM's metadata service on a listener already bound inside its namespace."""

    def __init__(
        self,
        listener: socket.socket,
        identity: Identity,
        notice_path: Path,
        log_path: Path | None = None,
    ) -> None:
        self._server = _Server(listener, identity, notice_path, log_path)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"imds-{identity.instance_id}",
            daemon=True,
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()
