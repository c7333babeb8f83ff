"""Every early and late check of the constructs fails with a message quoting value and allowed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aws_cdk as cdk
import enclave_constructs as ek
import pytest
from aws_cdk import aws_ec2 as ec2

from enclavekit import build, eif
from enclavekit.errors import InvalidInput

FIXTURE_APP = Path(__file__).parent / "fixtures" / "constructs_app"
M = dict(pcr0="a1" * 48, pcr1="b2" * 48, pcr2="c3" * 48)


@pytest.fixture()
def scope() -> tuple[cdk.Stack, ec2.Vpc]:
    app = cdk.App()
    stack = cdk.Stack(app, "V", env=cdk.Environment(account="123456789012", region="us-east-1"))
    vpc = ec2.Vpc(
        stack,
        "Vpc",
        max_azs=1,
        nat_gateways=0,
        subnet_configuration=[
            ec2.SubnetConfiguration(name="iso", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
        ],
    )
    return stack, vpc


@pytest.fixture(scope="module")
def image() -> ek.EnclaveImage:
    return ek.EnclaveImage.from_measurements(**M)


@pytest.mark.parametrize(
    ("props", "pattern"),
    [
        ({"instance_type": "t3.large"}, r"enclave-capable .*got 't3.large'.*burstable"),
        ({"instance_type": "m5a.large"}, r"got 'm5a.large'.*at least 4 vCPUs"),
        ({"instance_type": "m5.metal"}, r"got 'm5.metal'.*bare metal"),
        ({"instance_type": "z9.mega"}, r"such as m5a\.xlarge.*got 'z9.mega'"),
        ({"enclave_memory_mib": 16384}, r"m5a.xlarge.*at most 15360 MiB, got 16384"),
        ({"enclave_cpu_count": 4}, r"CPU 0's core .*at most 2, got 4"),
        ({"enclave_cpu_count": 3, "instance_type": "m5a.2xlarge"}, r"must be even .*got 3"),
        ({"enclave_memory_mib": 32}, r"at least 64 MiB, got 32"),
        ({"service_port": 70000}, r"service_port must be .*got 70000"),
        ({"domain": "Not A Domain"}, r"domain must be .*got 'Not A Domain'"),
        ({"debug_mode": True}, r"debug_mode=True .*EnclaveImage.debug"),
        ({"certificate": "not-an-arn"}, r"certificate must be .*got 'not-an-arn'"),
    ],
)
def test_fails_host_props(scope, image, props: dict, pattern: str) -> None:
    stack, vpc = scope
    with pytest.raises(InvalidInput, match=pattern):
        ek.EnclaveHost(stack, "Host", vpc=vpc, image=image, **props)


def test_fails_fleet_capacity() -> None:
    with pytest.raises(InvalidInput, match=r"min_capacity=3 max_capacity=1"):
        ek.FleetOptions(3, 1)


def test_fails_debug_image_without_consent(image) -> None:
    with pytest.raises(
        InvalidInput, match=r"i_understand_debug_images_have_no_attestation=True, got False"
    ):
        ek.EnclaveImage.debug(image)
    with pytest.raises(InvalidInput, match=r"got 'yes'"):
        ek.EnclaveImage.debug(image, i_understand_debug_images_have_no_attestation="yes")


def test_fails_zero_pcrs_everywhere_else(tmp_path: Path) -> None:
    zero = "00" * 48
    with pytest.raises(InvalidInput, match=r"explicit measurements has PCR0 all zeros"):
        ek.EnclaveImage.from_measurements(pcr0=zero, pcr1=zero, pcr2=zero)
    doc = {
        "Measurements": {
            "HashAlgorithm": "Sha384 { ... }",
            "PCR0": zero,
            "PCR1": zero,
            "PCR2": zero,
        }
    }
    with pytest.raises(InvalidInput, match=r"all zeros.*EnclaveImage.debug"):
        ek.EnclaveImage.from_nitro_cli_json(doc)
    f = tmp_path / "m.json"
    f.write_text(json.dumps(doc))
    with pytest.raises(InvalidInput, match=re.escape(str(f))):
        ek.EnclaveImage.from_nitro_cli_json(f)


def test_fails_binding_a_key_to_a_debug_image(scope, image) -> None:
    stack, vpc = scope
    dbg = ek.EnclaveImage.debug(image, i_understand_debug_images_have_no_attestation=True)
    host = ek.EnclaveHost(stack, "Host", vpc=vpc, image=dbg)
    key = ek.AttestedKey(stack, "Key")
    with pytest.raises(InvalidInput, match=r"debug image whose PCRs are all zero"):
        host.grant_attested_decrypt(key)


@pytest.mark.parametrize(
    ("pcrs", "pattern"),
    [
        ((3,), r"got \(3,\)"),
        ((0, 0), r"distinct"),
        ((), r"at least one PCR"),
        ((8,), r"not signed \(no PCR8\)"),
    ],
)
def test_fails_bad_pcr_selection(scope, image, pcrs, pattern) -> None:
    stack, vpc = scope
    host = ek.EnclaveHost(stack, "Host", vpc=vpc, image=image)
    key = ek.AttestedKey(stack, "Key")
    with pytest.raises(InvalidInput, match=pattern):
        host.grant_attested_decrypt(key, pcrs=pcrs)


def test_fails_host_without_image_to_bind(scope) -> None:
    stack, vpc = scope
    host = ek.EnclaveHost(stack, "Host", vpc=vpc)
    with pytest.raises(InvalidInput, match=r"has no image"):
        host.grant_attested_decrypt(ek.AttestedKey(stack, "Key"))


def test_fails_late_checks_at_synth(scope, image) -> None:
    """Hibernation set through an escape hatch, a key nobody can use, a secret nobody can open."""
    stack, vpc = scope
    host = ek.EnclaveHost(stack, "Host", vpc=vpc, image=image)
    host.cfn_resource.hibernation_options = ec2.CfnInstance.HibernationOptionsProperty(
        configured=True
    )
    key = ek.AttestedKey(stack, "Unbound")
    ek.EnclaveSecret(stack, "Secret", host=host, key=key)
    with pytest.raises(Exception) as info:
        cdk.App.of(stack).synth()
    text = str(info.value)
    assert "has hibernation configured" in text
    assert "V/Unbound has no grant_attested_decrypt" in text
    assert "has no attested grant to host V/Host" in text


def test_fails_bad_image_inputs(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"existing EIF file, got '/nonexistent.eif'"):
        ek.EnclaveImage.from_eif("/nonexistent.eif")
    bogus = tmp_path / "bogus.eif"
    bogus.write_bytes(b"not an eif at all" * 10)
    with pytest.raises(InvalidInput):
        ek.EnclaveImage.from_eif(bogus)
    with pytest.raises(InvalidInput, match=r"name must be .*got 'bad name'"):
        ek.EnclaveImage.from_measurements(**M, name="bad name")
    with pytest.raises(InvalidInput, match=r"existing file, got '/nonexistent.json'"):
        ek.EnclaveImage.from_nitro_cli_json("/nonexistent.json")
    with pytest.raises(InvalidInput, match=r"enclave.json"):
        ek.EnclaveImage.from_directory(tmp_path)


def test_image_factories_agree(tmp_path: Path) -> None:
    """from_directory, from_eif, from_nitro_cli_json (file and dict) give the same measurements."""
    built = build.build_enclave(FIXTURE_APP, tmp_path / "a.eif")
    a = ek.EnclaveImage.from_directory(FIXTURE_APP, build_dir=tmp_path / "b")
    b = ek.EnclaveImage.from_eif(built.path)
    described = eif.describe_eif(built.path)
    c = ek.EnclaveImage.from_nitro_cli_json(described)
    (tmp_path / "d.json").write_text(json.dumps(described))
    d = ek.EnclaveImage.from_nitro_cli_json(tmp_path / "d.json", host_path="/opt/x.eif")
    assert a.measurements == b.measurements == c.measurements == d.measurements
    assert a.measurements == built.measurements
    assert a.name == "constructs-fixture" and a.eif_file is not None
    assert d.eif_file is None and d.host_path == "/opt/x.eif"
    assert not a.is_debug
