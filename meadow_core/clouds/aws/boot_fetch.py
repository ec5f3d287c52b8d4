"""How an EC2 instance's boot script downloads the agent bundle: with its own role.

User data can be read back by anyone who may describe the instance's attributes, so it
holds only the bundle's bucket, key and region (and, in ``fleet.bootstrap``, its
sha256): no URL signed with the caller's credentials, no access key id. At boot the
instance asks its metadata service (IMDSv2) for the instance role's credentials and
sends S3 a SigV4-signed GET with them; the role may read the bucket (``admin``'s
``agent_policy``).

The image need not have boto3 or the AWS CLI, so the code is plain-stdlib Python
that runs on the image's ``python3`` (3.9 on Amazon Linux 2023: no ``X | Y`` types).
The functions below are the code: `snippet` ships their source into the boot script,
so the tests exercise the same text the instance runs.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import os
import time
import urllib.parse
import urllib.request

_IMPORTS = "import hashlib, hmac, json, os, time, urllib.parse, urllib.request"


def role_credentials(imds: str) -> dict[str, str]:
    """The instance role's AccessKeyId, SecretAccessKey and Token, from IMDSv2."""
    # Never through a proxy from the environment: the metadata service is link-local.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(
        imds + "/latest/api/token",
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"},
    )
    with opener.open(request, timeout=5) as response:
        token = response.read().decode()
    headers = {"X-aws-ec2-metadata-token": token}
    base = imds + "/latest/meta-data/iam/security-credentials/"
    with opener.open(urllib.request.Request(base, headers=headers), timeout=5) as response:
        role = response.read().decode().split()[0]
    with opener.open(urllib.request.Request(base + role, headers=headers), timeout=5) as response:
        credentials: dict[str, str] = json.loads(response.read())
    return credentials


def signed_headers(
    url: str, region: str, credentials: dict[str, str], amz_date: str
) -> dict[str, str]:
    """The headers of a SigV4-signed S3 GET of ``url`` (path already percent-encoded,
    no query) at ``amz_date`` (``YYYYMMDDTHHMMSSZ``), Authorization included."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address
        host = "[" + host + "]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = host + ":" + str(parts.port)
    payload = hashlib.sha256(b"").hexdigest()  # a GET has no body
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    if credentials.get("Token"):
        headers["x-amz-security-token"] = credentials["Token"]
    names = sorted(headers)
    signed = ";".join(names)
    lines = [f"{name}:{headers[name].strip()}" for name in names]
    canonical = "\n".join(["GET", parts.path or "/", "", *lines, "", signed, payload])
    scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + credentials["SecretAccessKey"]).encode()
    for part in (amz_date[:8], region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials['AccessKeyId']}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    return headers


def object_url(bucket: str, key: str, region: str) -> str:
    """Path-style under AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL when set (as boto3
    reads them; the dev cloud sets the latter), else S3's virtual-hosted URL."""
    quoted = urllib.parse.quote(key, safe="/~")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        return endpoint.rstrip("/") + "/" + bucket + "/" + quoted
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return "https://" + bucket + ".s3." + region + "." + domain + "/" + quoted


def fetch(bucket: str, key: str, region: str) -> bytes:
    """The object's bytes, read with the instance role's credentials; 10 tries, 2 s
    apart (at boot the network, the metadata service or the role may lag)."""
    imds = os.environ.get("MEADOW_IMDS_URL", "http://169.254.169.254").rstrip("/")
    url = object_url(bucket, key, region)
    for attempt in range(10):
        try:
            credentials = role_credentials(imds)
            amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            headers = signed_headers(url, region, credentials, amz_date)
            with urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=60
            ) as response:
                data: bytes = response.read()
            return data
        except (OSError, ValueError, KeyError, IndexError):
            if attempt == 9:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


def snippet(bucket: str, key: str, region: str) -> str:
    """Boot-script Python that binds ``data`` to the object's bytes (see
    ``fleet.bootstrap.boot_script``)."""
    functions = (role_credentials, signed_headers, object_url, fetch)
    source = "\n\n".join(inspect.getsource(function) for function in functions)
    return f"{_IMPORTS}\n\n{source}\n\ndata = fetch({bucket!r}, {key!r}, {region!r})\n"
