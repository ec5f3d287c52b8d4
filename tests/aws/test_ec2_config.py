"""The EC2 host as plain config, its credentials hook, and ``s3://`` store URLs: what
adapters use without importing ``meadow_core.clouds``."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from meadow_core import HostConfigError, host_from_config, host_from_string, host_to_config
from meadow_core.clouds.aws import session
from meadow_core.clouds.aws.host import AllocEC2Instance
from meadow_core.clouds.aws.store import S3ObjectStore
from meadow_core.transport import open_store

REGION = "us-east-2"


def test_ec2_round_trips_through_json() -> None:
    host = AllocEC2Instance(
        region_name=REGION, security_group_ids=("sg-1", "sg-2"), idle_timeout=60
    )
    config = host_to_config(host)
    assert config == {
        "type": "ec2",
        "region_name": REGION,
        "ami_id": None,
        "subnet_id": None,
        "security_group_ids": ["sg-1", "sg-2"],
        "iam_role_instance_profile": None,
        "idle_timeout": 60,
    }
    rebuilt = host_from_config(json.loads(json.dumps(config)))
    assert isinstance(rebuilt, AllocEC2Instance)
    assert rebuilt == AllocEC2Instance(
        region_name=REGION, security_group_ids=["sg-1", "sg-2"], idle_timeout=60.0
    )
    # One group given as a string is a list of one.
    assert host_from_config({"type": "ec2", "security_group_ids": "sg-1"}).security_group_ids == [
        "sg-1"
    ]  # type: ignore[attr-defined]


def test_ec2_string_form_and_errors() -> None:
    host = host_from_string(f"ec2:region_name={REGION},idle_timeout=60,security_group_ids=[a,b]")
    assert host == AllocEC2Instance(
        region_name=REGION, idle_timeout=60, security_group_ids=["a", "b"]
    )
    with pytest.raises(HostConfigError, match="valid settings are region_name, ami_id"):
        host_from_config({"type": "ec2", "region": REGION})


def _without_ambient_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_credentials_hook_takes_a_mapping_or_a_boto3_session(
    aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What an orchestrator hands over (Airflow's AwsBaseHook makes a boto3.Session)
    applies to the block only; outside it boto3's chain (here: nothing) decides."""
    key, secret = aws_env["AWS_ACCESS_KEY_ID"], aws_env["AWS_SECRET_ACCESS_KEY"]
    _without_ambient_credentials(monkeypatch, tmp_path)
    host = AllocEC2Instance()
    assert host.takes_credentials
    with pytest.raises(session.MissingCredentialsError):
        session.check_credentials()
    given = {"access_key_id": key, "secret_access_key": secret, "region_name": REGION}
    with host.credentials(given):
        assert host.region == REGION
        assert session.account_id()
    made = boto3.session.Session(
        aws_access_key_id=key, aws_secret_access_key=secret, region_name=REGION
    )
    with host.credentials(made):
        assert session.default_region() == REGION
        assert session.client("sts").get_caller_identity()["Account"]
    with host.credentials({"session": made, "region_name": "eu-west-1"}):
        assert session.default_region() == "eu-west-1"
    with pytest.raises(session.MissingCredentialsError):
        session.check_credentials()
    with pytest.raises(session.AwsConfigurationError, match="valid fields are access_key_id"):
        host.credentials({"role_arn": "arn:aws:iam::1:role/x"})
    with pytest.raises(session.AwsConfigurationError, match=r"boto3\.Session"):
        host.credentials("a string")


def test_s3_urls_open_the_bucket(aws_env: dict[str, str]) -> None:
    boto3.client("s3", region_name=REGION).create_bucket(
        Bucket="meadow-url-test", CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    store = open_store(f"s3://meadow-url-test?region={REGION}")
    assert isinstance(store, S3ObjectStore) and store.bucket == "meadow-url-test"
    store.put("a/b", b"hello")
    assert store.get("a/b") == b"hello"
    with pytest.raises(session.AwsConfigurationError, match="names no bucket"):
        open_store("s3://?region=us-east-2")
