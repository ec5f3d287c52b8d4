"""The boot script's bundle download signs its S3 GET as botocore would, with the
instance role's credentials from IMDSv2 (moto checks no signature, so these do)."""

from __future__ import annotations

import datetime
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from unittest import mock

import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from meadow_devcloud.ec2.imds import Identity, Imds

from meadow_core.clouds.aws import boot_fetch

WHEN = datetime.datetime(2026, 12, 7, 21, 30, 5)
AMZ_DATE = "20261207T213005Z"
CREDENTIALS = {
    "AccessKeyId": "ASIAEXAMPLEROLEKEY01",
    "SecretAccessKey": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    "Token": "IQoJb3JpZ2luX2Vj/a+session=token",
}


def _botocore_headers(url: str, region: str, credentials: dict[str, str]) -> dict[str, str]:
    """What botocore's S3 signer puts on a GET of ``url`` at ``WHEN``."""
    request = AWSRequest(method="GET", url=url)
    signer = botocore.auth.S3SigV4Auth(
        Credentials(
            credentials["AccessKeyId"], credentials["SecretAccessKey"], credentials.get("Token")
        ),
        "s3",
        region,
    )
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=WHEN):
        signer.add_auth(request)
    return {name.lower(): value for name, value in request.headers.items()}


@pytest.mark.parametrize(
    ("url", "region"),
    [
        (
            "https://meadow-123456789012-us-east-2.s3.us-east-2.amazonaws.com/"
            "bootstrap/0123abcd.tar.gz",
            "us-east-2",
        ),
        ("http://127.0.0.1:5000/meadow-123456789012-us-east-1/bootstrap/x.tar.gz", "us-east-1"),
        ("https://S3.Example.com:443/bucket/a%20b%2Bc~d/%E2%98%83.tar.gz", "eu-west-1"),
        ("http://[::1]:9000/bucket/key", "us-west-2"),
    ],
)
@pytest.mark.parametrize("with_token", [True, False])
def test_the_signature_is_botocores(url: str, region: str, with_token: bool) -> None:
    credentials = dict(CREDENTIALS)
    if not with_token:
        del credentials["Token"]
    ours = boot_fetch.signed_headers(url, region, credentials, AMZ_DATE)
    theirs = _botocore_headers(url, region, credentials)
    assert ours.pop("Authorization") == theirs.pop("authorization")
    assert ours.pop("host") == botocore.auth._host_from_url(url)
    assert ours == theirs  # x-amz-date, x-amz-content-sha256 and the token, if any


def test_the_object_url_follows_the_endpoint_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    assert boot_fetch.object_url("b", "bootstrap/a b.tar.gz", "eu-west-1") == (
        "https://b.s3.eu-west-1.amazonaws.com/bootstrap/a%20b.tar.gz"
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://10.0.0.1:5000/")
    assert boot_fetch.object_url("b", "k", "eu-west-1") == "http://10.0.0.1:5000/b/k"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://10.0.0.2:9000")
    assert boot_fetch.object_url("b", "k", "eu-west-1") == "http://10.0.0.2:9000/b/k"


# -- the snippet as the boot script runs it: a metadata service and an S3 that checks --


ROLE_CREDENTIALS = {"AccessKeyId": "testing", "SecretAccessKey": "testing", "Token": "testing"}


@pytest.fixture
def imds(tmp_path: Path) -> Iterator[str]:
    """The dev cloud's metadata service (IMDSv2 tokens required), on loopback."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    identity = Identity(
        instance_id="i-0123456789abcdef0",
        instance_type="t3.micro",
        region="us-east-2",
        availability_zone="us-east-2a",
        image_id="ami-12345678",
        account_id="123456789012",
        private_ip="10.0.0.5",
        lifecycle="on-demand",
        role="meadow-agent",
        tokens_required=True,
        user_data=b"",
    )
    service = Imds(listener, identity, tmp_path / "notice.json")
    service.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        service.stop()


class _CheckingS3(ThreadingHTTPServer):
    """Serves one object to a GET botocore would have signed the same way with the
    role's credentials; refuses the first try (the boot script must retry)."""

    daemon_threads = True
    path_served = "/meadow-bucket/bootstrap/bundle.tar.gz"
    body = b"the agent bundle"

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CheckingHandler)
        self.requests = 0
        self.refusals: list[str] = []


class _CheckingHandler(BaseHTTPRequestHandler):
    server: _CheckingS3

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests += 1
        url = f"http://{self.headers['Host']}{self.path}"
        when = datetime.datetime.strptime(self.headers.get("X-Amz-Date", ""), "%Y%m%dT%H%M%SZ")
        request = AWSRequest(method="GET", url=url)
        signer = botocore.auth.S3SigV4Auth(
            Credentials("testing", "testing", "testing"), "s3", "us-east-2"
        )
        with mock.patch.object(botocore.auth, "get_current_datetime", return_value=when):
            signer.add_auth(request)
        if self.server.requests == 1:
            status, body = 503, b"SlowDown"
        elif self.headers.get("Authorization") != request.headers["Authorization"]:
            self.server.refusals.append(str(self.headers.get("Authorization")))
            status, body = 403, b"SignatureDoesNotMatch"
        elif self.path != self.server.path_served:
            status, body = 404, b"NoSuchKey"
        else:
            status, body = 200, self.server.body
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_the_snippet_fetches_with_the_role_credentials(imds: str) -> None:
    s3 = _CheckingS3()
    thread = threading.Thread(target=s3.serve_forever, daemon=True)
    thread.start()
    try:
        code = boot_fetch.snippet("meadow-bucket", "bootstrap/bundle.tar.gz", "us-east-2")
        code += "import sys\nsys.stdout.buffer.write(data)\n"
        # A fresh machine's environment: no AWS credentials, only the endpoints.
        env = {
            "PATH": "/usr/bin:/bin",
            "MEADOW_IMDS_URL": imds,
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3.server_address[1]}",
        }
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, timeout=60
        )
    finally:
        s3.shutdown()
        s3.server_close()
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == s3.body
    assert s3.requests == 2 and not s3.refusals
