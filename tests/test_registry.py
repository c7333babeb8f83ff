"""The endpoint's image registry and ECR aimed at it, with a real third-party OCI client.

This machine has no docker engine, so the registry is exercised with Debian's skopeo
(containers/image, the library podman and buildah push with), fetched by
scripts/system-packages.sh: a small OCI image layout built here is pushed, pulled back and
compared by digest; ECR's DescribeImages/BatchGetImage show it; a wrong token, another
region's token, a blob whose bytes do not match its digest, a manifest naming a missing blob
and a moved tag in an immutable repository are refused; the image survives `local stop` +
`start`. Then the CDK: bootstrap's container-assets repository carries the local URI, and a
stack with a DockerImageAsset fails with the one-line no-engine error and no attempt at any
non-loopback host.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from registry_support import OCI_MANIFEST, oci_layout

from enclavekit.localenv import LOCAL_ACCOUNT, LOCAL_REGION, local_client
from local_backend import server
from local_backend.cdk import bootstrap_target, cdk_env, run_cdk
from local_backend.docker_guard import local_registries, named_registries
from local_backend.pytest_plugin import free_port
from local_backend.registry import handles
from local_backend.system_packages import system_root

SUPPORT = Path(__file__).resolve().parent / "registry_support.py"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


# ------------------------------------------------------------------ clients


@pytest.fixture(scope="module")
def skopeo() -> list[str]:
    root = system_root()
    return [str(root.skopeo), "--insecure-policy"]


def _skopeo_env() -> dict[str, str]:
    root = system_root(fetch=False)
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    env["LD_LIBRARY_PATH"] = str(root.libdir)
    return env


def run_skopeo(skopeo: list[str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*skopeo, *args], capture_output=True, text=True, timeout=120, env=_skopeo_env()
    )
    assert (proc.returncode == 0) is ok, proc.stderr
    return proc


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[server.EndpointInfo]:
    state = tmp_path_factory.mktemp("state")
    info = server.start(free_port(), state)
    try:
        yield info
    finally:
        server.stop(state)


def _token(endpoint: server.EndpointInfo, region: str = LOCAL_REGION) -> tuple[str, str]:
    """(password, registry host) from GetAuthorizationToken."""
    data = local_client("ecr", endpoint.endpoint, region=region).get_authorization_token()
    auth = data["authorizationData"][0]
    user, password = base64.b64decode(auth["authorizationToken"]).decode().split(":", 1)
    assert user == "AWS"
    assert auth["proxyEndpoint"] == f"http://127.0.0.1:{endpoint.port}"
    return password, auth["proxyEndpoint"].split("://", 1)[1]


def _http(
    method: str, url: str, password: str, body: Any = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    auth = base64.b64encode(f"AWS:{password}".encode()).decode()
    req = urllib.request.Request(
        url, data=body, method=method, headers={"Authorization": f"Basic {auth}", **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _user(
    endpoint: server.EndpointInfo, name: str, actions: list[str], resource: str
) -> dict[str, str]:
    """An IAM user allowed `actions` on `resource`; its credentials for local_client."""
    iam = local_client("iam", endpoint.endpoint)
    iam.create_user(UserName=name)
    _allow(endpoint, name, actions, resource, policy="base")
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}


def _allow(
    endpoint: server.EndpointInfo, name: str, actions: list[str], resource: str, policy: str = "p"
) -> None:
    doc = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": actions, "Resource": resource}
    ]}  # fmt: skip
    local_client("iam", endpoint.endpoint).put_user_policy(
        UserName=name, PolicyName=policy, PolicyDocument=json.dumps(doc)
    )


def _codes(body: bytes) -> list[str]:
    return [e["code"] for e in json.loads(body)["errors"]]


# ------------------------------------------------------------------ the registry


@pytest.mark.slow
def test_push_pull_with_skopeo_and_what_ecr_shows(
    endpoint: server.EndpointInfo, skopeo: list[str], tmp_path: Path
) -> None:
    ecr = local_client("ecr", endpoint.endpoint)
    repo = ecr.create_repository(repositoryName="apps/web", imageTagMutability="IMMUTABLE")
    uri = repo["repository"]["repositoryUri"]
    assert uri == f"127.0.0.1:{endpoint.port}/{LOCAL_ACCOUNT}/{LOCAL_REGION}/apps/web"
    listed = ecr.describe_repositories(repositoryNames=["apps/web"])["repositories"][0]
    assert listed["repositoryUri"] == uri
    password, host = _token(endpoint)
    base = f"http://{host}/v2/{LOCAL_ACCOUNT}/{LOCAL_REGION}/apps/web"

    # The /v2/ ping challenges for ECR's Basic credentials.
    req = urllib.request.Request(f"http://{host}/v2/")
    with pytest.raises(urllib.error.HTTPError) as ping:
        urllib.request.urlopen(req, timeout=30)
    assert ping.value.code == 401
    assert ping.value.headers["WWW-Authenticate"].startswith("Basic realm=")

    digest = oci_layout(tmp_path / "src", "v1", {"hello.txt": b"hello from the local registry\n"})
    creds = f"AWS:{password}"
    push = ("copy", "--dest-creds", creds, "--dest-tls-verify=false")
    run_skopeo(skopeo, *push, f"oci:{tmp_path / 'src'}:v1", f"docker://{uri}:v1")

    # Pulled back: the same manifest digest, and every blob's bytes match their names.
    pull = ("copy", "--src-creds", creds, "--src-tls-verify=false")
    run_skopeo(skopeo, *pull, f"docker://{uri}:v1", f"oci:{tmp_path / 'back'}:v1")
    index = json.loads((tmp_path / "back" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == digest
    for blob in (tmp_path / "back" / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    assert sorted(p.name for p in (tmp_path / "src" / "blobs" / "sha256").iterdir()) == sorted(
        p.name for p in (tmp_path / "back" / "blobs" / "sha256").iterdir()
    )
    # The same image as a Docker v2 schema 2 manifest (skopeo converts it on the way).
    run_skopeo(skopeo, *push, "-f", "v2s2", f"oci:{tmp_path / 'src'}:v1", f"docker://{uri}:docker")
    docker_raw = run_skopeo(
        skopeo, "inspect", "--raw", "--creds", creds, "--tls-verify=false",
        f"docker://{uri}:docker",
    ).stdout  # fmt: skip
    assert json.loads(docker_raw)["mediaType"] == DOCKER_MANIFEST
    docker_digest = "sha256:" + hashlib.sha256(docker_raw.encode()).hexdigest()
    found = ecr.describe_images(repositoryName="apps/web", imageIds=[{"imageTag": "docker"}])
    assert found["imageDetails"][0]["imageDigest"] == docker_digest
    assert found["imageDetails"][0]["imageManifestMediaType"] == DOCKER_MANIFEST
    ecr.batch_delete_image(repositoryName="apps/web", imageIds=[{"imageTag": "docker"}])

    raw = run_skopeo(
        skopeo, "inspect", "--raw", "--creds", creds, "--tls-verify=false", f"docker://{uri}:v1"
    ).stdout
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == digest

    # ECR shows the image with the manifest's digest.
    details = ecr.describe_images(repositoryName="apps/web")["imageDetails"]
    assert [(d["imageDigest"], d["imageTags"]) for d in details] == [(digest, ["v1"])]
    assert details[0]["imageManifestMediaType"] == OCI_MANIFEST
    got = ecr.batch_get_image(repositoryName="apps/web", imageIds=[{"imageTag": "v1"}])
    assert got["images"][0]["imageManifest"] == raw
    listed_ids = ecr.list_images(repositoryName="apps/web")["imageIds"]
    assert listed_ids == [{"imageDigest": digest, "imageTag": "v1"}]

    # A wrong token: skopeo is refused (401), and so is a raw request.
    wrong = run_skopeo(
        skopeo, "copy", "--dest-creds", "AWS:" + password[:-4] + "AAAA",
        "--dest-tls-verify=false", f"oci:{tmp_path / 'src'}:v1", f"docker://{uri}:v2",
        ok=False,
    )  # fmt: skip
    assert "unauthorized" in wrong.stderr.lower() or "401" in wrong.stderr
    assert _http("GET", f"http://{host}/v2/", "not-a-token")[0] == 401
    # Another region's token opens another registry, not this one.
    west, _ = _token(endpoint, "us-west-2")
    status, _, body = _http("GET", f"{base}/tags/list", west)
    assert status == 403 and _codes(body) == ["DENIED"]

    # Blob uploads verify the digest: monolithic and chunked, a corrupted one is refused.
    data = b"layer bytes"
    good = "sha256:" + hashlib.sha256(data).hexdigest()
    status, headers, _ = _http("POST", f"{base}/blobs/uploads/?digest={good}", password, data)
    assert status == 201 and headers["Docker-Content-Digest"] == good
    status, headers, _ = _http("POST", f"{base}/blobs/uploads/", password, b"")
    assert status == 202
    upload = f"http://{host}{headers['Location']}"
    assert _http("PATCH", upload, password, b"corrupt", **{"Content-Range": "0-6"})[0] == 202
    status, _, body = _http("PUT", f"{upload}?digest={good}", password, b"ed!")
    assert status == 400 and _codes(body) == ["DIGEST_INVALID"]
    # docker sends chunks with Transfer-Encoding: chunked (no Content-Length).
    _, headers, _ = _http("POST", f"{base}/blobs/uploads/", password, b"")
    upload = f"http://{host}{headers['Location']}"
    status, headers, _ = _http("PATCH", upload, password, iter([b"layer ", b"bytes"]))
    assert status == 202 and headers["Range"] == "0-10"
    assert _http("PUT", f"{upload}?digest={good}", password, b"")[0] == 201
    bad = "sha256:" + hashlib.sha256(b"corrupted!").hexdigest()
    assert _http("HEAD", f"{base}/blobs/{bad}", password)[0] == 404
    # A chunk out of order is refused with the upload's range.
    _, headers, _ = _http("POST", f"{base}/blobs/uploads/", password, b"")
    upload = f"http://{host}{headers['Location']}"
    status, headers, _ = _http("PATCH", upload, password, b"xx", **{"Content-Range": "5-6"})
    assert status == 416

    # A manifest naming a blob never pushed, and a moved tag in an immutable repository.
    manifest = json.loads(raw)
    manifest["layers"][0]["digest"] = bad
    status, _, body = _http(
        "PUT", f"{base}/manifests/v3", password, json.dumps(manifest).encode(),
        **{"Content-Type": OCI_MANIFEST},
    )  # fmt: skip
    assert status == 400 and _codes(body) == ["MANIFEST_BLOB_UNKNOWN"]
    manifest = json.loads(raw)
    manifest["annotations"] = {"moved": "yes"}
    status, _, body = _http(
        "PUT", f"{base}/manifests/v1", password, json.dumps(manifest).encode(),
        **{"Content-Type": OCI_MANIFEST},
    )  # fmt: skip
    assert status == 400 and _codes(body) == ["TAG_INVALID"]
    assert "immutable" in json.loads(body)["errors"][0]["message"]
    # A manifest put by digest must hash to it.
    status, _, body = _http(
        "PUT", f"{base}/manifests/{bad}", password, raw.encode(), **{"Content-Type": OCI_MANIFEST}
    )
    assert status == 400 and _codes(body) == ["DIGEST_INVALID"]

    # A token carries its caller's permissions: a pull-only user pulls, and its push is denied.
    arn = f"arn:aws:ecr:{LOCAL_REGION}:{LOCAL_ACCOUNT}:repository/apps/web"
    puller = _user(endpoint, "puller", ["ecr:GetAuthorizationToken"], "*")
    _allow(endpoint, "puller", ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"], arn)
    data = local_client("ecr", endpoint.endpoint, **puller).get_authorization_token()
    pull_pw = base64.b64decode(data["authorizationData"][0]["authorizationToken"]).decode()
    run_skopeo(
        skopeo, "copy", "--src-creds", pull_pw, "--src-tls-verify=false",
        f"docker://{uri}:v1", f"oci:{tmp_path / 'puller'}:v1",
    )  # fmt: skip
    denied = run_skopeo(
        skopeo, "copy", "--dest-creds", pull_pw, "--dest-tls-verify=false",
        f"oci:{tmp_path / 'src'}:v1", f"docker://{uri}:v9", ok=False,
    )  # fmt: skip
    assert "403 (Forbidden)" in denied.stderr, denied.stderr
    status, _, body = _http("POST", f"{base}/blobs/uploads/", pull_pw.split(":", 1)[1], b"")
    assert (
        status == 403
        and "not authorized to perform: ecr:InitiateLayerUpload"
        in (json.loads(body)["errors"][0]["message"])
    )
    with pytest.raises(Exception, match="AccessDenied"):  # the ECR API: IAM as everywhere
        local_client("ecr", endpoint.endpoint, **puller).create_repository(repositoryName="other")

    # local stop + start: the blobs and the image are still there.
    state = Path(endpoint.state_dir)
    server.stop(state)
    server.start(endpoint.port, state)
    password, _ = _token(endpoint)
    again = ("copy", "--src-creds", f"AWS:{password}", "--src-tls-verify=false")
    run_skopeo(skopeo, *again, f"docker://{uri}@{digest}", f"oci:{tmp_path / 'after'}:v1")
    index = json.loads((tmp_path / "after" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == digest
    details = local_client("ecr", endpoint.endpoint).describe_images(repositoryName="apps/web")
    assert [d["imageDigest"] for d in details["imageDetails"]] == [digest]


# ------------------------------------------------------------------ the CDK


CDK_APP = textwrap.dedent(
    """
    import aws_cdk as cdk
    from aws_cdk import aws_ecr_assets as assets, aws_logs as logs

    app = cdk.App()
    env = cdk.Environment(account="{account}", region="{region}")
    stack = cdk.Stack(app, "ImageStack", env=env)
    image = assets.DockerImageAsset(stack, "AppImage", directory="image", display_name="AppImage")
    logs.LogGroup(stack, "Logs")
    cdk.CfnOutput(stack, "ImageUri", value=image.image_uri)
    app.synth()
    """
)


@pytest.mark.slow
def test_cdk_image_asset_without_engine_then_through_the_local_registry(
    endpoint: server.EndpointInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No engine: the one-line error. Then cdk-assets' whole flow with the skopeo-backed
    stand-in engine (tests/registry_support.py): the asset lands in the bootstrap repository
    through the guard and the registry, and the stack deploys."""
    app = tmp_path / "app"
    (app / "image").mkdir(parents=True)
    (app / "image" / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /\n")
    (app / "image" / "hello.txt").write_text("hello\n")
    (app / "app.py").write_text(CDK_APP.format(account=LOCAL_ACCOUNT, region=LOCAL_REGION))
    (app / "cdk.json").write_text(json.dumps({"app": "python3 app.py"}))
    state = Path(endpoint.state_dir)

    boot = run_cdk(["bootstrap", bootstrap_target()], state_dir=state, cwd=app, capture=True)
    assert boot.returncode == 0, (boot.stdout + boot.stderr)[-3000:]
    repos = local_client("ecr", endpoint.endpoint).describe_repositories()["repositories"]
    assets_repo = [r for r in repos if "container-assets" in r["repositoryName"]]
    assert len(assets_repo) == 1
    assert assets_repo[0]["repositoryUri"].startswith(f"127.0.0.1:{endpoint.port}/")

    res = run_cdk(
        ["deploy", "--require-approval", "never", "ImageStack"],
        state_dir=state,
        cwd=app,
        capture=True,
        timeout=600,
    )
    out = res.stdout + res.stderr
    assert res.returncode != 0
    lines = [ln for ln in out.splitlines() if "enclavekit: container image asset" in ln]
    assert lines, out[-3000:]
    assert "AppImage cannot be published locally: no working docker engine" in lines[0]
    assert res.refused == (), f"the egress guard refused {res.refused}"
    assert "dkr.ecr" not in out

    standin = tmp_path / "engine"
    standin.mkdir()
    (standin / "docker").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{SUPPORT}" "$@"\n')
    (standin / "docker").chmod(0o755)
    root = system_root()
    monkeypatch.setenv("PATH", f"{standin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("REGISTRY_STANDIN_DIR", str(tmp_path / "engine-state"))
    monkeypatch.setenv("SKOPEO", str(root.skopeo))
    monkeypatch.setenv("SKOPEO_LIBDIR", str(root.libdir))
    res = run_cdk(  # the cloud assembly the first deploy synthesized
        ["deploy", "--app", "cdk.out", "--require-approval", "never", "ImageStack"],
        state_dir=state,
        cwd=app,
        capture=True,
        timeout=600,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert res.refused == (), f"the egress guard refused {res.refused}"
    calls = (tmp_path / "engine-state" / "calls.log").read_text().splitlines()
    registry = f"127.0.0.1:{endpoint.port}"
    assert any(c.startswith("login ") and c.endswith(registry) for c in calls), calls
    pushed = [c.split()[-1] for c in calls if c.startswith("push ")]
    assert len(pushed) == 1 and pushed[0].startswith(assets_repo[0]["repositoryUri"] + ":")
    tag = pushed[0].rsplit(":", 1)[1]
    ecr = local_client("ecr", endpoint.endpoint)
    images = ecr.describe_images(repositoryName=assets_repo[0]["repositoryName"])["imageDetails"]
    assert [i["imageTags"] for i in images] == [[tag]]
    cfn = local_client("cloudformation", endpoint.endpoint)
    assert cfn.describe_stacks(StackName="ImageStack")["Stacks"][0]["StackStatus"] == (
        "CREATE_COMPLETE"
    )


# ------------------------------------------------------------------ the CDK_DOCKER guard


def test_guard_names_every_registry_a_command_reaches() -> None:
    local = f"127.0.0.1:{4599}"
    assert named_registries(["login", "-u", "AWS", "--password-stdin", f"http://{local}"]) == [
        local
    ]
    assert named_registries(
        ["--config", "/tmp/c", "login", "-u", "AWS", "1.dkr.ecr.us-east-1.amazonaws.com"]
    ) == ["1.dkr.ecr.us-east-1.amazonaws.com"]
    assert named_registries(["login"]) == ["docker.io"]
    assert named_registries(["push", f"{local}/1/us-east-1/r:t"]) == [local]
    assert named_registries(["push", "python:3"]) == ["docker.io"]
    assert named_registries(["image", "push", "--platform", "linux/amd64", "ghcr.io/a:b"]) == [
        "ghcr.io"
    ]
    assert named_registries(["tag", "cdkasset-abc", f"{local}/1/us-east-1/r:t"]) == [local]
    assert named_registries(
        ["build", "--tag", "cdkasset-x", "--cache-from", "type=registry,ref=q.io/r:c", "."]
    ) == ["q.io"]
    assert named_registries(["buildx", "build", "-t=localhost:1/x", "."]) == ["localhost:1"]
    assert named_registries(["info"]) == []
    # The endpoint routes unsigned /v2 requests to the registry, signed ones (API Gateway v2)
    # to moto.
    assert handles({"PATH_INFO": "/v2/"}) and handles({"PATH_INFO": "/v2/1/r/n/tags/list"})
    signed = {"PATH_INFO": "/v2/apis", "HTTP_AUTHORIZATION": "AWS4-HMAC-SHA256 Credential=x"}
    assert not handles(signed) and not handles({"PATH_INFO": "/v20/x"})
    assert local_registries({"AWS_ENDPOINT_URL": "http://localhost:4599"}) == {
        "127.0.0.1:4599",
        "localhost:4599",
    }


def test_guard_with_an_engine_passes_local_calls_and_refuses_other_hosts(tmp_path: Path) -> None:
    """With a docker whose `docker info` succeeds (a recorder standing in for the engine this
    machine lacks), calls naming the local registry reach it unchanged, stdin included; a
    call naming any other registry never does."""
    app = tmp_path / "app"
    (app / "cdk.out").mkdir(parents=True)
    manifest = {"dockerImages": {"abc": {"displayName": "AppImage", "source": {}}}}
    (app / "cdk.out" / "ImageStack.assets.json").write_text(json.dumps(manifest))
    engine = tmp_path / "engine"
    engine.mkdir()
    record = tmp_path / "calls.log"
    (engine / "docker").write_text(
        f'#!/bin/sh\necho "$*" >> {record}\n[ "$1" = login ] && cat >> {record}\nexit 0\n'
    )
    (engine / "docker").chmod(0o755)
    base = {"PATH": f"{engine}{os.pathsep}{os.environ['PATH']}"}
    env = cdk_env("http://localhost:4599", cwd=app, base=base)
    docker = env["CDK_DOCKER"]

    def call(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [docker, *args], cwd=app, input=stdin, capture_output=True, text=True, env=env,
            timeout=60,
        )  # fmt: skip

    ok = call(
        "login", "--username", "AWS", "--password-stdin", "http://127.0.0.1:4599", stdin="pw\n"
    )
    assert ok.returncode == 0, ok.stderr
    assert call("push", "127.0.0.1:4599/1/us-east-1/r:t").returncode == 0
    refused = call("login", "--username", "AWS", "1.dkr.ecr.us-east-1.amazonaws.com")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "enclavekit: container image asset AppImage cannot be published to registry "
        "1.dkr.ecr.us-east-1.amazonaws.com: only the local registry 127.0.0.1:4599, "
        "localhost:4599 is used; real ECR is never used (docker login refused)"
    ]
    assert call("push", "python:3").returncode == 1
    calls = record.read_text().splitlines()
    assert calls.count("info --format {{.ServerVersion}}") == 4
    others = [c for c in calls if not c.startswith("info")]
    assert others == [
        "login --username AWS --password-stdin http://127.0.0.1:4599",
        "pw",
        "push 127.0.0.1:4599/1/us-east-1/r:t",
    ]

    # No engine: `docker info` fails, so every call fails naming the assets.
    (engine / "docker").write_text("#!/bin/sh\necho 'Cannot connect to the daemon' >&2\nexit 1\n")
    none = call("push", "127.0.0.1:4599/1/us-east-1/r:t")
    assert none.returncode == 1
    assert none.stderr.strip().splitlines() == [
        "enclavekit: container image asset AppImage cannot be published locally: no working "
        "docker engine (docker info: Cannot connect to the daemon); real ECR is never used "
        "(docker push refused)"
    ]
    shutil.rmtree(engine)


def test_tokens_are_checked(tmp_path: Path) -> None:
    """Only a token this state dir's key MACed, unexpired and unaltered, opens the registry."""
    from local_backend.moto_ext.ecr import models as ecr

    saved = dict(ecr._config)
    ecr._config["state_dir"] = tmp_path
    try:
        _check_tokens(ecr, tmp_path)
    finally:
        ecr._config.update(saved)


def _check_tokens(ecr: Any, tmp_path: Path) -> None:
    from local_backend.moto_ext.identity import Caller

    role = f"arn:aws:iam::{LOCAL_ACCOUNT}:role/publisher"
    caller = Caller("AKIA", LOCAL_ACCOUNT, role, role + "/session", "role", "publisher")
    claims = ecr.issue_token(LOCAL_ACCOUNT, LOCAL_REGION, caller)
    token = ecr.encode_token(claims)
    assert ecr.verify_token(token) == claims
    assert claims.caller().principal == role and claims.caller().kind == "role"
    assert ecr.verify_token(token, now=claims.expires + 1) is None
    head, body, mac = token.split(".")
    forged = json.loads(base64.urlsafe_b64decode(body + "=="))
    forged["account"] = "999999999999"
    forged_body = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("=")
    assert ecr.verify_token(f"{head}.{forged_body}.{mac}") is None
    assert ecr.verify_token(f"{LOCAL_ACCOUNT}-auth-token") is None  # moto's fixed password
    assert oct((tmp_path / "registry" / "token.key").stat().st_mode & 0o777) == "0o600"
    other = tmp_path / "other"
    ecr._config["state_dir"] = other
    assert ecr.verify_token(token) is None  # another endpoint's key
