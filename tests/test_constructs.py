"""Template assertions for the construct library: one synth per scenario (module-scoped)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import enclave_constructs as ek
import pytest
from aws_cdk import assertions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms

from enclavekit.policy import RequestContext, evaluate_kms, parse_policy

FIXTURE_APP = Path(__file__).parent / "fixtures" / "constructs_app"
ACCOUNT, REGION = "123456789012", "us-east-1"
CERT_ARN = f"arn:aws:acm:{REGION}:{ACCOUNT}:certificate/0a1b2c3d-aaaa-bbbb-cccc-000000000001"


def _stack(name: str) -> tuple[cdk.App, cdk.Stack, ec2.Vpc]:
    app = cdk.App()
    stack = cdk.Stack(app, name, env=cdk.Environment(account=ACCOUNT, region=REGION))
    vpc = ec2.Vpc(
        stack,
        "Vpc",
        max_azs=1,
        nat_gateways=0,
        subnet_configuration=[
            ec2.SubnetConfiguration(
                name="iso", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=24
            )
        ],
    )
    return app, stack, vpc


def _of_type(template: dict, kind: str) -> dict[str, dict]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def _one(template: dict, kind: str) -> tuple[str, dict]:
    found = _of_type(template, kind)
    assert len(found) == 1, (kind, list(found))
    return next(iter(found.items()))


def _resolve(value: Any) -> Any:
    """The few intrinsics these templates use, resolved for account 123456789012."""
    if isinstance(value, dict) and len(value) == 1:
        ((fn, arg),) = value.items()
        if fn == "Ref" and arg == "AWS::Partition":
            return "aws"
        if fn == "Ref" and arg == "AWS::Region":
            return REGION
        if fn == "Fn::Join":
            return arg[0].join(str(_resolve(p)) for p in arg[1])
        if fn == "Fn::GetAtt" and arg[1] == "Arn":
            return f"arn:aws:iam::{ACCOUNT}:role/{arg[0]}"
    if isinstance(value, dict):
        return {k: _resolve(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v) for v in value]
    return value


def _user_data(resource: dict) -> str:
    props = resource["Properties"]
    ud = props.get("UserData") or props["LaunchTemplateData"]["UserData"]
    body = ud["Fn::Base64"]
    assert isinstance(body, str), "user data of an env-bound stack must be a plain string"
    return body


# ---------------------------------------------------------------- the full host (seed shape)
@pytest.fixture(scope="module")
def app_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("app") / "constructs_app"
    shutil.copytree(FIXTURE_APP, dest)
    return dest


@pytest.fixture(scope="module")
def full(app_copy: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app, stack, vpc = _stack("Full")
    image = ek.EnclaveImage.from_directory(app_copy, build_dir=tmp_path_factory.mktemp("build"))
    host = ek.EnclaveHost(
        stack, "Host", vpc=vpc, image=image, certificate=CERT_ARN, domain="app.example.test"
    )
    key = ek.AttestedKey(stack, "Key")
    grant = host.grant_attested_decrypt(key)
    secret = ek.EnclaveSecret(stack, "Secret", host=host, key=key)
    assembly = app.synth()
    template = assertions.Template.from_stack(stack)
    return {
        "t": template,
        "j": template.to_json(),
        "image": image,
        "host": host,
        "grant": grant,
        "secret": secret,
        "assembly_dir": Path(assembly.directory),
    }


def test_instance_is_enclave_enabled_with_imdsv2(full: dict) -> None:
    t: assertions.Template = full["t"]
    t.has_resource_properties(
        "AWS::EC2::Instance",
        {"InstanceType": "m5a.xlarge", "EnclaveOptions": {"Enabled": True}},
    )
    t.has_resource_properties(
        "AWS::EC2::LaunchTemplate",
        {"LaunchTemplateData": {"MetadataOptions": {"HttpTokens": "required"}}},
    )
    # construct ids are API: the instance is Host/Resource, the role Host/Role
    assert full["host"].instance.node.path == "Full/Host/Resource"
    assert full["host"].role.node.path == "Full/Host/Role"


def test_metadata_is_exactly_the_contract(full: dict) -> None:
    j = full["j"]
    _, inst = _one(j, "AWS::EC2::Instance")
    role_id, _ = _one(j, "AWS::IAM::Role")
    key_id, _ = _one(j, "AWS::KMS::Key")
    assoc_id, _ = _one(j, "AWS::EC2::EnclaveCertificateIamRoleAssociation")
    m = full["image"].measurements
    meta = json.loads(json.dumps(inst["Metadata"]["enclavekit:host"]))  # a copy to edit
    asset = meta["image"].pop("asset")
    assert re.fullmatch(r"cdk-hnb659fds-assets-123456789012-us-east-1", asset["bucket"])
    assert re.fullmatch(r"[0-9a-f]{64}\.eif", asset["key"])
    assert meta == {
        "version": 1,
        "image": {
            "name": "constructs-fixture",
            "measurements": {"PCR0": m.hex(0), "PCR1": m.hex(1), "PCR2": m.hex(2)},
            "debug": False,
        },
        "enclave": {"cpu_count": 2, "memory_mib": 512, "cid": 16, "debug_mode": False},
        "service": {"port": 443, "enclave_port": 8443, "domain": "app.example.test"},
        "role": role_id,
        "certificate": {"arn": CERT_ARN, "association": assoc_id},
        "secrets": [
            {"name": "app-secret", "key": key_id, "parameter": "/enclavekit/Full/app-secret"}
        ],
        "attested_keys": [key_id],
    }


def test_user_data_agrees_with_metadata(full: dict) -> None:
    j = full["j"]
    _, inst = _one(j, "AWS::EC2::Instance")
    meta = inst["Metadata"]["enclavekit:host"]
    ud = _user_data(inst)
    enc, svc, img = meta["enclave"], meta["service"], meta["image"]
    allocator = re.search(r"allocator.yaml <<'ENCLAVEKIT_EOF'\n(.*?)ENCLAVEKIT_EOF", ud, re.S)
    assert allocator is not None
    assert f"memory_mib: {enc['memory_mib']}\ncpu_count: {enc['cpu_count']}" in allocator[1]
    run = re.search(r"ExecStart=/usr/bin/nitro-cli run-enclave (.*)", ud)
    assert run is not None
    args = run[1].split()
    assert args[args.index("--cpu-count") + 1] == str(enc["cpu_count"])
    assert args[args.index("--memory") + 1] == str(enc["memory_mib"])
    assert args[args.index("--enclave-cid") + 1] == str(enc["cid"])
    assert "--debug-mode" not in args
    eif = args[args.index("--eif-path") + 1]
    assert f"aws s3 cp 's3://{img['asset']['bucket']}/{img['asset']['key']}' '{eif}'" in ud
    assert f"TCP-LISTEN:{svc['port']},fork" in ud
    assert f"VSOCK-CONNECT:{enc['cid']}:{svc['enclave_port']}" in ud
    proxy = re.search(r"vsock-proxy.yaml <<'ENCLAVEKIT_EOF'\n(.*?)ENCLAVEKIT_EOF", ud, re.S)
    assert proxy is not None
    assert re.findall(r"address: (\S+),", proxy[1]) == ["kms.us-east-1.amazonaws.com"]
    assert ud.startswith("#!/bin/bash\nset -euo pipefail\n")
    # the same spec object renders both
    spec = full["host"].spec()
    assert spec.cpu_count == enc["cpu_count"] and spec.port == svc["port"]


def test_key_policy_binds_exactly_the_image_pcrs(full: dict) -> None:
    _, key = _one(full["j"], "AWS::KMS::Key")
    m = full["image"].measurements
    stmts = key["Properties"]["KeyPolicy"]["Statement"]
    allows = [s for s in stmts if s["Effect"] == "Allow" and "Condition" in s]
    assert len(allows) == 1
    assert allows[0]["Condition"] == {
        "StringEqualsIgnoreCase": {f"kms:RecipientAttestation:PCR{n}": m.hex(n) for n in (0, 1, 2)}
    }
    assert sorted(allows[0]["Action"]) == sorted(ek.ATTESTED_ACTIONS)
    denies = [s for s in stmts if s["Effect"] == "Deny"]
    assert sorted(next(iter(d["Condition"]["StringNotEqualsIgnoreCase"])) for d in denies) == [
        f"kms:RecipientAttestation:PCR{n}" for n in (0, 1, 2)
    ]
    for d in denies:
        assert d["Principal"] == allows[0]["Principal"]
    unconditioned = [s for s in stmts if s["Effect"] == "Allow" and "Condition" not in s]
    for s in unconditioned:
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        assert not [a for a in actions if a in ("kms:*", "kms:Decrypt", "kms:ReEncrypt*")], s
        assert not [a for a in actions if a.startswith(("kms:GenerateDataKey", "kms:ReEncrypt"))], s


def test_key_policy_semantics_with_the_policy_evaluator(full: dict) -> None:
    """The synthesized policies, evaluated with AWS semantics: attested yes, anything else no."""
    j = full["j"]
    role_id, _ = _one(j, "AWS::IAM::Role")
    _, key = _one(j, "AWS::KMS::Key")
    key_policy = parse_policy(_resolve(key["Properties"]["KeyPolicy"]))
    identity = [
        parse_policy(_resolve(p["Properties"]["PolicyDocument"]))
        for p in _of_type(j, "AWS::IAM::Policy").values()
    ]
    role_arn = f"arn:aws:iam::{ACCOUNT}:role/{role_id}"
    key_arn = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-0000-0000-0000-000000000000"
    m = full["image"].measurements
    good = {f"kms:RecipientAttestation:PCR{n}": m.hex(n).upper() for n in (0, 1, 2)}
    bad = dict(good, **{"kms:RecipientAttestation:PCR2": "00" * 48})

    def decide(principal: str, action: str, keys: dict) -> bool:
        ctx = RequestContext(principal, ACCOUNT, action, key_arn, keys)
        return evaluate_kms(ctx, key_policy, identity).allowed

    root = f"arn:aws:iam::{ACCOUNT}:root"
    for action in ("kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateRandom"):
        assert decide(role_arn, action, good), action  # attested image, any case
        assert not decide(role_arn, action, {}), action  # no attestation
        assert not decide(role_arn, action, bad), action  # another image
    assert not decide(root, "kms:Decrypt", {})  # admins cannot decrypt
    assert decide(root, "kms:Encrypt", {})  # but can seal
    assert decide(root, "kms:ScheduleKeyDeletion", {})


def test_grant_is_resource_only(full: dict) -> None:
    grant = full["grant"]
    assert grant.success
    assert grant.principal_statements == [] or not grant.principal_statements
    for policy in _of_type(full["j"], "AWS::IAM::Policy").values():
        for s in policy["Properties"]["PolicyDocument"]["Statement"]:
            if "kms:Decrypt" in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]]):
                # only the ACM association's managed key, never the attested key
                assert ":key/" in json.dumps(s["Resource"]) and "EncryptionKmsKeyId" in json.dumps(
                    s["Resource"]
                )


def test_enclave_certificate_association_and_three_grants(full: dict) -> None:
    t: assertions.Template = full["t"]
    j = full["j"]
    role_id, role = _one(j, "AWS::IAM::Role")
    assoc_id, assoc = _one(j, "AWS::EC2::EnclaveCertificateIamRoleAssociation")
    assert assoc["Properties"] == {
        "CertificateArn": CERT_ARN,
        "RoleArn": {"Fn::GetAtt": [role_id, "Arn"]},
    }
    assert "Path" not in role["Properties"]
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "ec2.amazonaws.com"
    }
    stmts = next(iter(_of_type(j, "AWS::IAM::Policy").values()))["Properties"]["PolicyDocument"][
        "Statement"
    ]
    resolved = {s["Action"]: _resolve(s["Resource"]) for s in stmts if isinstance(s["Action"], str)}
    bucket = {"Fn::GetAtt": [assoc_id, "CertificateS3BucketName"]}
    kms_id = {"Fn::GetAtt": [assoc_id, "EncryptionKmsKeyId"]}
    s3 = next(s for s in stmts if s["Action"] == "s3:GetObject")
    assert s3["Resource"]["Fn::Join"][1][-2:] == [bucket, "/*"]
    kd = next(s for s in stmts if s["Action"] == "kms:Decrypt")
    assert kd["Resource"]["Fn::Join"][1][-1] == kms_id
    assert ":*:key/" in kd["Resource"]["Fn::Join"][1]
    assert resolved["iam:GetRole"] == f"arn:aws:iam::{ACCOUNT}:role/{role_id}"
    t.resource_count_is("AWS::EC2::EnclaveCertificateIamRoleAssociation", 1)


def test_secret_parameter_readable_by_host_role(full: dict) -> None:
    t: assertions.Template = full["t"]
    t.has_resource_properties(
        "AWS::SSM::Parameter",
        {"Name": "/enclavekit/Full/app-secret", "Type": "String", "Value": "enclavekit:unsealed"},
    )
    policy = json.dumps(next(iter(_of_type(full["j"], "AWS::IAM::Policy").values())))
    assert "ssm:GetParameter" in policy


def test_key_policy_matches_describe_eif_of_the_shipped_asset(full: dict) -> None:
    """`enclavekit describe-eif` on the EIF in the cloud assembly prints the key policy's PCRs."""
    _, inst = _one(full["j"], "AWS::EC2::Instance")
    asset_key = inst["Metadata"]["enclavekit:host"]["image"]["asset"]["key"]
    eif = full["assembly_dir"] / f"asset.{asset_key}"
    described = _describe_eif(eif)
    _, key = _one(full["j"], "AWS::KMS::Key")
    allow = next(s for s in key["Properties"]["KeyPolicy"]["Statement"] if "Condition" in s)
    cond = allow["Condition"]["StringEqualsIgnoreCase"]
    assert {k.rsplit(":", 1)[1]: v for k, v in cond.items()} == {
        k: v for k, v in described["Measurements"].items() if k.startswith("PCR")
    }


def test_rebuilding_a_changed_app_changes_policy_and_describe_eif(
    full: dict, app_copy: Path, tmp_path: Path
) -> None:
    changed = tmp_path / "changed_app"
    shutil.copytree(app_copy, changed)
    (changed / "main.py").write_text((changed / "main.py").read_text() + "# v2\n")
    app, stack, vpc = _stack("Changed")
    image = ek.EnclaveImage.from_directory(changed, build_dir=tmp_path / "build")
    host = ek.EnclaveHost(stack, "Host", vpc=vpc, image=image)
    key = ek.AttestedKey(stack, "Key")
    host.grant_attested_decrypt(key)
    assembly = Path(app.synth().directory)
    j = assertions.Template.from_stack(stack).to_json()
    _, inst = _one(j, "AWS::EC2::Instance")
    described = _describe_eif(
        assembly / f"asset.{inst['Metadata']['enclavekit:host']['image']['asset']['key']}"
    )
    _, k = _one(j, "AWS::KMS::Key")
    allow = next(s for s in k["Properties"]["KeyPolicy"]["Statement"] if "Condition" in s)
    cond = allow["Condition"]["StringEqualsIgnoreCase"]
    assert cond["kms:RecipientAttestation:PCR2"] == described["Measurements"]["PCR2"]
    assert cond["kms:RecipientAttestation:PCR0"] == described["Measurements"]["PCR0"]
    old = full["image"].measurements
    assert cond["kms:RecipientAttestation:PCR0"] != old.hex(0)
    assert cond["kms:RecipientAttestation:PCR2"] != old.hex(2)
    assert cond["kms:RecipientAttestation:PCR1"] == old.hex(1)  # same kernel and bootstrap


def _describe_eif(path: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "enclavekit", "describe-eif", "--eif-path", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# ---------------------------------------------------------------- other modes in one synth
@pytest.fixture(scope="module")
def modes() -> dict[str, Any]:
    app, stack, vpc = _stack("Modes")
    m = dict(pcr0="a1" * 48, pcr1="b2" * 48, pcr2="c3" * 48)
    acm_host = ek.EnclaveHost(
        stack,
        "AcmHost",
        vpc=vpc,
        certificate=CERT_ARN,
        domain="tls.example.test",
        instance_type="c6i.2xlarge",
        enclave_cpu_count=4,
        enclave_memory_mib=1024,
        service_port=8443,
    )
    image = ek.EnclaveImage.from_measurements(**m, name="prebuilt", host_path="/opt/app.eif")
    fleet = ek.EnclaveHost(
        stack,
        "FleetHost",
        vpc=vpc,
        image=image,
        instance_type="m6g.xlarge",
        enclave_cpu_count=3,
        enclave_memory_mib=2048,
        fleet=ek.FleetOptions(1, 3),
    )
    debug_image = ek.EnclaveImage.debug(image, i_understand_debug_images_have_no_attestation=True)
    debug_host = ek.EnclaveHost(stack, "DebugHost", vpc=vpc, image=debug_image)
    plain = kms.Key(stack, "PlainKey")
    grant = ek.grant_attested_decrypt(plain, fleet, image, pcrs=(0,), image_sha384=True)
    template = assertions.Template.from_stack(stack)
    return {
        "t": template,
        "j": template.to_json(),
        "acm": acm_host,
        "fleet": fleet,
        "debug": debug_host,
        "grant": grant,
        "m": m,
    }


def test_acm_agent_mode_user_data(modes: dict) -> None:
    j = modes["j"]
    inst = next(v for k, v in _of_type(j, "AWS::EC2::Instance").items() if k.startswith("AcmHost"))
    meta = inst["Metadata"]["enclavekit:host"]
    assert "image" not in meta and "domain" in meta["service"]  # None fields are omitted
    assert meta["enclave"] == {"cpu_count": 4, "memory_mib": 1024, "cid": 16, "debug_mode": False}
    ud = _user_data(inst)
    assert "dnf install -y aws-nitro-enclaves-acm nginx" in ud
    acm_yaml = re.search(r"acm.yaml <<'ENCLAVEKIT_EOF'\n(.*?)ENCLAVEKIT_EOF", ud, re.S)
    assert acm_yaml is not None
    assert f'certificate_arn: "{CERT_ARN}"' in acm_yaml[1]
    assert "cpu_count: 4\n  memory_mib: 1024" in acm_yaml[1]
    assert "label: enclavekit-acm-token" in acm_yaml[1]
    assert "ssl_engine pkcs11;" in ud
    assert "token=enclavekit-acm-token;id=%01;object=acm-key;type=private" in ud
    assert "engine_id = pkcs11\ninit = 1" in ud
    assert "listen 8443 ssl;" in ud and "server_name tls.example.test;" in ud
    assert "nitro-cli run-enclave" not in ud  # the ACM agent runs its own token enclave


def test_fleet_is_launch_template_and_asg(modes: dict) -> None:
    t: assertions.Template = modes["t"]
    t.has_resource_properties(
        "AWS::EC2::LaunchTemplate",
        {
            "LaunchTemplateData": {
                "EnclaveOptions": {"Enabled": True},
                "InstanceType": "m6g.xlarge",
                "MetadataOptions": {"HttpTokens": "required"},
            }
        },
    )
    t.has_resource_properties(
        "AWS::AutoScaling::AutoScalingGroup", {"MinSize": "1", "MaxSize": "3"}
    )
    lt = next(
        v
        for k, v in _of_type(modes["j"], "AWS::EC2::LaunchTemplate").items()
        if k.startswith("FleetHost")
    )
    meta = lt["Metadata"]["enclavekit:host"]
    assert "asset" not in meta["image"]  # CDK omits None: no asset, the EIF is on the host
    assert meta["enclave"]["cpu_count"] == 3  # Graviton: no SMT, odd counts are fine
    ud = _user_data(lt)
    assert "--eif-path /opt/app.eif --cpu-count 3 --memory 2048" in ud
    assert not re.search(r"^aws s3 cp .*\.eif'$", ud, re.M)  # the agent bundle still is


def test_plain_key_grant_with_image_sha384(modes: dict) -> None:
    _, key = _one(modes["j"], "AWS::KMS::Key")
    stmts = key["Properties"]["KeyPolicy"]["Statement"]
    allow = next(s for s in stmts if "Condition" in s and s["Effect"] == "Allow")
    assert allow["Condition"]["StringEqualsIgnoreCase"] == {
        "kms:RecipientAttestation:PCR0": modes["m"]["pcr0"],
        "kms:RecipientAttestation:ImageSha384": modes["m"]["pcr0"],
    }
    assert len([s for s in stmts if s["Effect"] == "Deny"]) == 2
    lt = next(
        v
        for k, v in _of_type(modes["j"], "AWS::EC2::LaunchTemplate").items()
        if k.startswith("FleetHost")
    )
    assert lt["Metadata"]["enclavekit:host"]["attested_keys"] == [
        _one(modes["j"], "AWS::KMS::Key")[0]
    ]


def test_debug_host_runs_debug_mode(modes: dict) -> None:
    inst = next(
        v
        for k, v in _of_type(modes["j"], "AWS::EC2::Instance").items()
        if k.startswith("DebugHost")
    )
    meta = inst["Metadata"]["enclavekit:host"]
    assert meta["image"]["debug"] is True and meta["enclave"]["debug_mode"] is True
    assert set(meta["image"]["measurements"].values()) == {"00" * 48}
    assert "--debug-mode" in _user_data(inst)
