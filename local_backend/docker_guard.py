"""The container client `enclavekit cdk` gives the cdk CLI (CDK_DOCKER): docker, aimed at the
local image registry only.

cdk-assets publishes a container image asset with `docker login <proxyEndpoint>` (from ECR's
GetAuthorizationToken), `docker build`, `docker tag <repositoryUri>:<tag>` (the URI from
DescribeRepositories) and `docker push`. The local endpoint's ECR names its own registry on
loopback (local_backend.registry), so with a working docker engine those calls pass to the real
docker unchanged, after this guard has checked every registry host they name: a host that is
not the local registry (`127.0.0.1:<endpoint port>`, from AWS_ENDPOINT_URL) is refused with one
line naming it, so nothing is pushed to, pulled from or logged into real ECR or any other
registry through the CLI. Without a working engine (`docker info` fails, or no docker at all),
every call fails with one line naming the app's container image assets (from the cloud
assembly's `*.assets.json`).

`python -m local_backend.docker_guard ARGS...` is what the generated CDK_DOCKER script runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

DOCKER_HUB = "docker.io"
INFO_TIMEOUT_S = 20.0
# docker's global options that take a value (before the command).
_GLOBAL_VALUED = frozenset(
    {"--config", "-c", "--context", "-H", "--host", "-l", "--log-level"}
    | {"--tlscacert", "--tlscert", "--tlskey"}
)
# Per command: the options whose values are image references, and those with other values.
_REF_OPTIONS = {"build": frozenset({"-t", "--tag", "--cache-from", "--cache-to"})}
_VALUED = {
    "login": frozenset({"-u", "--username", "-p", "--password"}),
    "push": frozenset({"--platform"}),
    "pull": frozenset({"--platform"}),
}


def image_assets(start: Path) -> list[str]:
    """Display names (else source directories) of the container image assets of the cloud
    assembly at or above `start` (or in `start/cdk.out`)."""
    candidates = [start / "cdk.out", *(p for p in (start, *start.parents))]
    for base in candidates:
        manifests = sorted(base.glob("*.assets.json")) if base.is_dir() else []
        if not manifests:
            continue
        names: list[str] = []
        for manifest in manifests:
            try:
                images = json.loads(manifest.read_text()).get("dockerImages") or {}
            except (OSError, ValueError):
                continue
            for key, spec in images.items():
                source = (spec or {}).get("source") or {}
                names.append(str(spec.get("displayName") or source.get("directory") or key))
        return sorted(set(names))
    return []


def message(argv: Sequence[str], cwd: Path, reason: str) -> str:
    """The one-line refusal for `docker ARGV` run in `cwd`, saying why."""
    names = image_assets(cwd)
    what = ", ".join(names) if names else "(unknown: no assets manifest found)"
    action = command(argv)[0] or "(none)"
    return (
        f"enclavekit: container image asset {what} cannot be published {reason}; real ECR is "
        f"never used (docker {action} refused)"
    )


# ------------------------------------------------------------------ what a command names


def command(argv: Sequence[str]) -> tuple[str, list[str]]:
    """docker's command (`build` for `buildx build` / `image build` too) and its arguments."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        opt = argv[i].split("=", 1)[0]
        i += 2 if opt in _GLOBAL_VALUED and "=" not in argv[i] else 1
    rest = list(argv[i:])
    if len(rest) >= 2 and rest[0] in ("image", "buildx", "container"):
        rest = rest[1:]
    return (rest[0], rest[1:]) if rest else ("", [])


def registry_host(ref: str) -> str:
    """The registry a docker image reference names (docker's rule: a first path component
    with a `.` or `:`, or `localhost`, is a host; otherwise Docker Hub)."""
    name = ref.split("@", 1)[0]
    first, sep, _ = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        return first.lower()
    return DOCKER_HUB


def _login_host(server: str) -> str:
    if "://" in server:
        return (urlsplit(server).netloc or server).lower()
    return server.split("/", 1)[0].lower()


def _option_values(args: Sequence[str], names: frozenset[str]) -> list[str]:
    out = []
    for i, arg in enumerate(args):
        opt, eq, value = arg.partition("=")
        if opt in names:
            if eq:
                out.append(value)
            elif i + 1 < len(args):
                out.append(args[i + 1])
    return out


def positionals(args: Sequence[str], valued: frozenset[str]) -> list[str]:
    """The non-option arguments of a docker command line (`valued` options take the next one)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in valued
        else:
            out.append(arg)
    return out


def named_registries(argv: Sequence[str]) -> list[str]:
    """The registry hosts `docker ARGV` would log into, push to, pull from or tag for."""
    cmd, args = command(argv)
    if cmd == "login":
        servers = positionals(args, _VALUED["login"])
        return [_login_host(servers[-1]) if servers else DOCKER_HUB]
    if cmd in ("push", "pull"):
        refs = positionals(args, _VALUED[cmd])[:1]
        return [registry_host(r) for r in refs] or [DOCKER_HUB]
    if cmd == "tag":
        return [h for h in map(registry_host, positionals(args, frozenset())) if h != DOCKER_HUB]
    if cmd == "build":
        hosts = []
        for value in _option_values(args, _REF_OPTIONS["build"]):
            ref = value
            if "ref=" in value:  # --cache-from type=registry,ref=HOST/NAME
                ref = next(p[4:] for p in value.split(",") if p.startswith("ref="))
            elif "=" in value:  # type=local,src=... names no registry
                continue
            host = registry_host(ref)
            if host != DOCKER_HUB:
                hosts.append(host)
        return hosts
    return []


def local_registries(env: Mapping[str, str]) -> frozenset[str]:
    """The local registry's host names: the endpoint's port on loopback."""
    endpoint = env.get("AWS_ENDPOINT_URL", "")
    try:
        port = urlsplit(endpoint).port
    except ValueError:
        port = None
    if not port:
        return frozenset()
    return frozenset({f"127.0.0.1:{port}", f"localhost:{port}"})


# ------------------------------------------------------------------ the engine


def real_docker(env: Mapping[str, str]) -> str | None:
    """The docker client on PATH other than this guard's own script."""
    own = Path(__file__).resolve()
    for entry in env.get("PATH", "").split(os.pathsep):
        found = shutil.which("docker", path=entry) if entry else None
        if not found:
            continue
        try:
            text = Path(found).read_text(errors="replace")[:4096]
        except OSError:
            text = ""
        if "local_backend.docker_guard" in text or Path(found).resolve() == own:
            continue
        return found
    return None


def engine_problem(docker: str | None, env: Mapping[str, str]) -> str | None:
    """Why there is no working docker engine (None: `docker info` succeeds)."""
    if docker is None:
        return "locally: no docker client on PATH"
    try:
        proc = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=INFO_TIMEOUT_S,
            env=dict(env),
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"locally: no working docker engine (docker info: {exc})"
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        why = lines[0] if lines else f"exit status {proc.returncode}"
        return f"locally: no working docker engine (docker info: {why})"
    return None


def write_script(directory: Path) -> Path:
    """An executable `docker` in `directory` that runs this guard (for CDK_DOCKER).

    Written beside and renamed into place: cdk runs in the same app directory share
    `directory`, and one may be executing the script while another writes it."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "docker"
    fd, tmp = tempfile.mkstemp(prefix=".docker-", dir=directory)
    with os.fdopen(fd, "w") as fh:
        fh.write(f'#!/bin/sh\nexec "{sys.executable}" -m local_backend.docker_guard "$@"\n')
    os.chmod(tmp, 0o755)
    os.replace(tmp, script)
    return script


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ)
    docker = real_docker(env)
    problem = engine_problem(docker, env)
    if problem is not None:
        print(message(args, Path.cwd(), problem), file=sys.stderr)
        return 1
    allowed = local_registries(env)
    foreign = [h for h in named_registries(args) if h not in allowed]
    if foreign:
        local = ", ".join(sorted(allowed)) or "(none: AWS_ENDPOINT_URL names no local endpoint)"
        reason = f"to registry {foreign[0]}: only the local registry {local} is used"
        print(message(args, Path.cwd(), reason), file=sys.stderr)
        return 1
    assert docker is not None
    os.execve(docker, [docker, *args], env)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
