"""pytest plugin for users' own tests: a local endpoint and a deployed CDK app as fixtures.

Registered through the `pytest11` entry point, so installing enclavekit makes the fixtures
available; nothing starts unless a test asks for a fixture, and importing this module costs
nothing but the standard library (every pytest run in the environment loads it).

    def test_my_service(enclavekit_deploy):
        deployed = enclavekit_deploy("path/to/app", secrets={"app-secret": b"s3cret"})
        assert deployed.outputs["MyStack"]["Domain"] == "app.example.test"
        assert deployed.https(path="/").status == 200   # TLS verified against the local CA

Fixtures:
    enclavekit_endpoint  (session) a local endpoint on a free loopback port (or the one
                         `--enclavekit-port PORT` / $ENCLAVEKIT_PORT names) with a temporary
                         state dir; stopped at teardown together with every instance host
                         and enclave it started.
    enclavekit_deploy    (session) factory: `cdk bootstrap` once, then `cdk deploy` of an app
                         dir, waiting for its instances' user data, sealing its application
                         secrets and waiting until the enclaves are provisioned;
                         returns a `Deployment` (outputs, stacks, hosts, https(), verify());
                         its stacks come from the app's cloud assembly and the endpoint, so
                         a stack needs no CfnOutput to be found.

The deployment steps are local_backend.deploy's, as `enclavekit up` runs them; this module
turns their errors into one pytest.fail line. The plain functions for tests that need their
own scope: `local_endpoint()` (a context manager), `deploy()`, `Deployment.destroy()`,
`processes_of()`, `listening()`.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import signal
import socket
import ssl
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from local_backend.deploy import CdkRun

DEPLOY_TIMEOUT_S = 600.0
PROVISION_TIMEOUT_S = 60.0
TAIL_LINES = 40
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


# ------------------------------------------------------------------ processes and ports


def processes_of(state_dir: Path) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose command line names `state_dir`.

    Everything the endpoint starts (parent agents, enclave monitors, isolated enclaves) is
    started with a path inside its state dir, so this finds all of it from /proc alone.
    """
    needle = str(Path(state_dir).resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            continue  # a zombie holds nothing
        args = [a.decode(errors="replace") for a in argv if a]
        if any(a == needle or a.startswith(needle + "/") for a in args):
            found.append((int(entry.name), " ".join(args)))
    return found


def listening(ports: Sequence[int]) -> set[int]:
    """Which of `ports` have a TCP listener in this network namespace (from /proc/net)."""
    wanted, found = set(ports), set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            next(fh, None)
            for row in fh:
                cols = row.split()
                port = int(cols[1].rsplit(":", 1)[1], 16)
                if cols[3] == _LISTEN and port in wanted:
                    found.add(port)
    return found


def _kill(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ the endpoint


@dataclass(frozen=True)
class LocalEndpoint:
    """A running local endpoint: where it is, and clients aimed at it (never at AWS)."""

    url: str
    port: int
    state_dir: Path
    pid: int

    @property
    def env(self) -> dict[str, str]:
        """Environment for a process that must talk only to this endpoint."""
        from enclavekit.localenv import local_aws_env

        return local_aws_env(self.url, scratch_dir=self.state_dir / "clients")

    def client(self, service: str, **kwargs: Any) -> Any:
        """A boto3 client for `service` at this endpoint, as the account root."""
        from enclavekit.localenv import local_client

        # boto3's own names for credentials and region are accepted, as the contract says
        names = {
            "aws_access_key_id": "access_key_id",
            "aws_secret_access_key": "secret_access_key",
            "aws_session_token": "session_token",
            "region_name": "region",
        }
        given = {ours: kwargs.pop(theirs) for theirs, ours in names.items() if theirs in kwargs}
        return local_client(service, self.url, **given, **kwargs)

    def ca_pem(self) -> bytes:
        """The local CA root (PEM) that issues this endpoint's ACM certificates."""
        from local_backend import server

        return server.ca_pem(self.state_dir)


def start_endpoint(state_dir: Path, port: int | None = None) -> LocalEndpoint:
    """Start an endpoint on `port` (default: a free one, retried if another process wins it)."""
    from enclavekit.errors import BackendError
    from local_backend import server

    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        try:
            info = server.start(port or free_port(), state_dir)
            break
        except BackendError:
            if port is not None or attempt == 2:
                raise
    return LocalEndpoint(url=info.endpoint, port=info.port, state_dir=state_dir, pid=info.pid)


def stop_endpoint(endpoint: LocalEndpoint) -> list[tuple[int, str]]:
    """Stop the endpoint and what it started; returns (and kills) what was still left."""
    from local_backend import server

    server.stop(endpoint.state_dir)
    left = processes_of(endpoint.state_dir)
    _kill([pid for pid, _ in left])
    return left


@contextlib.contextmanager
def local_endpoint(state_dir: Path, port: int | None = None) -> Iterator[LocalEndpoint]:
    """An endpoint for the duration of the block; leftovers at exit are killed and warned of."""
    ep = start_endpoint(state_dir, port)
    try:
        yield ep
    finally:
        left = stop_endpoint(ep)
        if left:
            warnings.warn(
                f"enclavekit: {len(left)} process(es) of {ep.state_dir} outlived the endpoint "
                f"and were killed: {', '.join(str(pid) for pid, _ in left)}",
                pytest.PytestWarning,
                stacklevel=2,
            )


# ------------------------------------------------------------------ deployments


@dataclass(frozen=True)
class DeployedHost:
    """An enclave host of a deployed stack: an instance whose user data started our parent
    agent and its enclave (`relay_port`: the machine port forwarded to its service port, None
    when its security groups let nothing in)."""

    stack: str
    instance_id: str
    logical_id: str
    relay_port: int | None
    domain: str | None
    service_port: int | None
    enclave_id: str
    enclave_cid: int
    instance_dir: Path

    def _view(self) -> Any:
        from local_backend.host.layout import HostLayout
        from local_backend.parent.view import AgentHost

        return AgentHost(HostLayout(self.instance_dir))

    def parent_state(self) -> dict[str, Any]:
        """The parent side's live state: the host's `state` and launcher `pid`, its enclave,
        and `provisioned`/`provisioned_at`/`last_error` as the enclave's Status reports them."""
        try:
            return dict(self._view().state())
        except (OSError, ValueError, KeyError):
            return {}

    def provisioning(self) -> dict[str, Any]:
        """`parent_state()`'s provisioning part only (the enclave's Status; cheap to poll)."""
        try:
            return dict(self._view().provisioning())
        except (OSError, ValueError, KeyError):
            return {}

    def vsock(self) -> Any:
        """The host's emulated vsock as its parent side (CID 3) sees it (`.connect(cid, port)`)."""
        return self._view().vsock

    def enclaves(self) -> list[dict[str, Any]]:
        """`nitro-cli describe-enclaves`, run inside the host."""
        return list(self._view().enclaves())


@dataclass(frozen=True)
class HttpsResponse:
    """One HTTPS exchange through a host's relay, its chain verified to the local CA."""

    status: int
    headers: dict[str, str]
    body: bytes
    tls_version: str
    peer_certificate: bytes  # DER of the leaf the enclave presented

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Deployment:
    """What `cdk deploy` left running: outputs per stack, the enclave hosts, the cdk output."""

    endpoint: LocalEndpoint
    app_dir: Path
    stacks: tuple[str, ...]
    outputs: dict[str, dict[str, str]] = field(hash=False)
    hosts: tuple[DeployedHost, ...]
    cdk: CdkRun

    def host(self, name: str | None = None) -> DeployedHost:
        """The host named by instance id, logical id, domain or stack (None: the only one)."""
        hits = [
            h
            for h in self.hosts
            if name is None or name in (h.instance_id, h.logical_id, h.domain, h.stack)
        ]
        if len(hits) != 1:
            have = ", ".join(f"{h.stack}/{h.instance_id} ({h.domain})" for h in self.hosts)
            pytest.fail(
                f"enclavekit: expected exactly one enclave host matching {name!r}, found "
                f"{len(hits)} among [{have or 'no hosts'}]",
                pytrace=False,
            )
        return hits[0]

    def https(
        self,
        host: DeployedHost | str | None = None,
        path: str = "/",
        *,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 15.0,
    ) -> HttpsResponse:
        """A real TLS request to `host`'s relay port, verified against the local CA for its
        domain (the response comes from inside the enclave: the parent only relays bytes)."""
        h = host if isinstance(host, DeployedHost) else self.host(host)
        if not h.domain:
            pytest.fail(
                f"enclavekit: host {h.instance_id} has no service domain to verify "
                "its certificate against",
                pytrace=False,
            )
        if h.relay_port is None:
            pytest.fail(
                f"enclavekit: TLS to {h.domain} failed: no machine port is forwarded to service "
                f"port {h.service_port} of host {h.instance_id} (its security groups let "
                "nothing in)",
                pytrace=False,
            )
        wait_provisioned(h, timeout=timeout)
        ctx = ssl.create_default_context(cadata=self.endpoint.ca_pem().decode())
        raw = socket.create_connection(("127.0.0.1", h.relay_port), timeout=timeout)
        try:
            tls = ctx.wrap_socket(raw, server_hostname=h.domain)
        except (ssl.SSLError, OSError) as exc:
            raw.close()
            pytest.fail(
                f"enclavekit: TLS to {h.domain} via 127.0.0.1:{h.relay_port} failed: {exc}",
                pytrace=False,
            )
        conn = http.client.HTTPConnection(h.domain, h.relay_port, timeout=timeout)
        conn.sock = tls
        try:
            conn.request(method, path, body=body, headers={"Host": h.domain, **(headers or {})})
            resp = conn.getresponse()
            data = resp.read()
            return HttpsResponse(
                status=resp.status,
                headers={k.lower(): v for k, v in resp.getheaders()},
                body=data,
                tls_version=tls.version() or "",
                peer_certificate=tls.getpeercert(binary_form=True) or b"",
            )
        finally:
            conn.close()

    def verify(self, stack: str | None = None) -> Any:
        """`enclavekit verify` of this deployment's stacks (or `stack`): a VerifyReport."""
        from local_backend.verify import VerifyReport, verify

        merged = VerifyReport(hosts=[])
        for name in [stack] if stack else self.stacks:
            report = verify(self.endpoint.state_dir, stack=name)
            merged.hosts.extend(report.hosts)
            merged.problems.extend(report.problems)
        return merged

    def destroy(self, *, timeout: float = DEPLOY_TIMEOUT_S) -> CdkRun:
        """`cdk destroy --force` of this deployment's stacks (pytest.fail if it fails)."""
        run = run_cdk(
            self.endpoint,
            self.app_dir,
            ["destroy", *(self.stacks or ["--all"]), "--force"],
            timeout=timeout,
        )
        if run.returncode != 0:
            _fail_cdk("destroy", self.app_dir, run)
        return run


def wait_provisioned(host: DeployedHost, *, timeout: float = PROVISION_TIMEOUT_S) -> None:
    """Wait until the agent has provisioned the enclave (certificate and secrets handed over)."""
    deadline = time.monotonic() + timeout
    while True:
        st = host.provisioning()
        if st.get("state") != "running":
            pytest.fail(
                f"enclavekit: host {host.instance_id} is {st.get('state') or 'gone'}, "
                "expected a running host",
                pytrace=False,
            )
        if st.get("provisioned"):
            return
        if time.monotonic() > deadline:
            pytest.fail(
                f"enclavekit: host {host.instance_id} ({host.stack}) not provisioned within "
                f"{timeout:.0f} s: {_why_not(st)}",
                pytrace=False,
            )
        time.sleep(0.2)


def _why_not(st: Mapping[str, Any]) -> str:
    """Why a host is not provisioned: the enclave's last error, else the agent's journal
    (which says "waiting for sealed secrets: NAME" when a secret is still unsealed)."""
    journal = str(st.get("journal") or "")
    if "waiting for sealed secrets" in journal:
        return f"{journal}: pass secrets={{name: bytes}} to enclavekit_deploy"
    return str(st.get("last_error") or journal or st.get("state") or "gone")


def run_cdk(
    endpoint: LocalEndpoint,
    app_dir: Path,
    args: Sequence[str],
    *,
    timeout: float = DEPLOY_TIMEOUT_S,
) -> CdkRun:
    """The project's cdk CLI in `app_dir` against `endpoint`, output captured, behind the
    egress guard (local_backend.deploy.run_cdk; each refusal is a line of the output).

    The running interpreter's bin dir goes on PATH (after Node 22) so a cdk.json app of
    `python3 app.py` finds this environment's aws_cdk even when the venv is not activated.
    """
    from local_backend import deploy as deploy_steps

    return deploy_steps.run_cdk(endpoint.url, app_dir, args, timeout=timeout, base=_base_env())


def _base_env() -> dict[str, str]:
    base = dict(os.environ)
    base["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", "")])
    return base


def _reason(output: str) -> str:
    """The line of cdk's output that says why it failed: the app's construct error as one
    line, else the ❌ line and what follows it."""
    from enclavekit.cdk_errors import construct_error

    construct = construct_error(output)
    if construct is not None:
        return f"construct error: {construct}"
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.startswith("❌"):
            rest = [x for x in lines[i : i + 3] if not x.startswith("✨")]
            return " ".join(rest)[:400]
    for ln in reversed(lines):
        if "error" in ln.lower() or "failed" in ln.lower():
            return ln[:400]
    return lines[-1][:400] if lines else "no output"


def _fail_cdk(verb: str, app_dir: Path, run: CdkRun) -> None:
    status = "timed out" if run.returncode == -1 else f"exit {run.returncode}"
    pytest.fail(
        f"enclavekit: cdk {verb} of {app_dir} failed ({status}): {_reason(run.output)}\n"
        f"--- last {TAIL_LINES} lines of cdk output ---\n{run.tail()}",
        pytrace=False,
    )


def bootstrap(endpoint: LocalEndpoint) -> CdkRun | None:
    """`cdk bootstrap` of the local account, unless its CDKToolkit stack already exists.

    Run outside any app dir, so the CLI does not synthesize an app just to find environments.
    """
    from local_backend import deploy as deploy_steps

    scratch = endpoint.state_dir / "clients" / "bootstrap"
    scratch.mkdir(parents=True, exist_ok=True)
    run = deploy_steps.bootstrap(endpoint.url, scratch, timeout=DEPLOY_TIMEOUT_S, base=_base_env())
    if run is not None and run.returncode != 0:
        _fail_cdk("bootstrap", scratch, run)
    return run


def _context_args(context: Mapping[str, Any] | None) -> list[str]:
    args = []
    for key, value in (context or {}).items():
        text = value if isinstance(value, str) else json.dumps(value)
        args += ["--context", f"{key}={text}"]
    return args


def hosts_of(endpoint: LocalEndpoint, stacks: Sequence[str]) -> tuple[DeployedHost, ...]:
    """The running enclave hosts of `stacks`: instances whose user data started our parent
    agent (its /etc/enclavekit/host.json) and an enclave."""
    from local_backend import deploy as deploy_steps

    hosts = []
    for h in deploy_steps.enclave_hosts(endpoint.state_dir, stacks):
        st = h.state()
        hosts.append(
            DeployedHost(
                stack=str(h.stack),
                instance_id=h.instance_id,
                logical_id=h.logical_id or "",
                relay_port=st["relay_port"],
                domain=st["domain"],
                service_port=st["service_port"],
                enclave_id=st["enclave"]["EnclaveID"],
                enclave_cid=int(st["enclave"]["EnclaveCID"]),
                instance_dir=h.dir,
            )
        )
    return tuple(hosts)


def wait_user_data(
    endpoint: LocalEndpoint, stacks: Sequence[str], *, fail: bool = True
) -> list[str]:
    """Wait until every enclave-enabled instance of `stacks` has run its user data; returns
    their instance ids. With `fail`, a user data that failed fails the test with the instance,
    the failing command, its exit status and the tail of its console."""
    from enclavekit.errors import BackendError
    from local_backend import deploy as deploy_steps
    from local_backend.host import control

    try:
        return deploy_steps.wait_user_data(
            endpoint.state_dir, stacks, timeout=control.BOOT_TIMEOUT_S, fail=fail
        )
    except BackendError as exc:
        pytest.fail(f"enclavekit: {exc}", pytrace=False)


def seal_secrets(
    endpoint: LocalEndpoint,
    hosts: Sequence[DeployedHost],
    secrets: Mapping[str, bytes] | None = None,
) -> list[str]:
    """Seal the application secrets of `hosts`' stacks, as `enclavekit up` does
    (local_backend.deploy.seal_secrets); returns the sealed `stack/name`s.

    A name in `secrets` is sealed with the given bytes (KMS Encrypt by the account root with
    the host's key, base64 into its SSM parameter); every other secret still unsealed gets a
    fresh random value. Either way the reference copy goes where `enclavekit verify` reads it,
    so `Deployment.verify()` can challenge the enclave. A name in `secrets` that no host
    declares fails the test. `wait_all_provisioned` has the agents re-sync.
    """
    from local_backend import deploy as deploy_steps

    wanted = dict(secrets or {})
    for name, value in wanted.items():
        if not isinstance(value, bytes | bytearray):
            pytest.fail(
                f"enclavekit: secret {name!r} must be bytes, got {type(value).__name__}",
                pytrace=False,
            )
    declared: set[str] = set()
    for h in hosts:  # what each host's user data wrote for its agent
        declared.update(s["name"] for s in h._view().spec.get("secrets") or [])
    unknown = sorted(set(wanted) - declared)
    if unknown:
        pytest.fail(
            f"enclavekit: secrets {unknown} are declared by no deployed enclave host; "
            f"declared: {sorted(declared) or 'none'}",
            pytrace=False,
        )
    stacks = sorted({h.stack for h in hosts})
    return deploy_steps.seal_secrets(endpoint.state_dir, endpoint.url, stacks, values=wanted)


def wait_all_provisioned(
    endpoint: LocalEndpoint,
    hosts: Sequence[DeployedHost],
    before: Mapping[str, float | None],
    resealed: Sequence[str],
    *,
    timeout: float = PROVISION_TIMEOUT_S,
) -> None:
    """Have the agents re-sync, then wait until every host is provisioned; a host of a stack in
    `resealed` must have been provisioned again after sealing (its provisioned_at differs from
    `before`)."""
    from enclavekit.errors import BackendError
    from local_backend import deploy as deploy_steps

    since = {h.instance_id: before.get(h.instance_id) for h in hosts if h.stack in resealed}
    try:
        deploy_steps.wait_provisioned(
            endpoint.state_dir, sorted({h.stack for h in hosts}), timeout=timeout, since=since
        )
    except BackendError as exc:
        hint = (
            ": pass secrets={name: bytes} to enclavekit_deploy"
            if "waiting for sealed secrets" in str(exc)
            else ""
        )
        pytest.fail(f"enclavekit: {exc}{hint}", pytrace=False)


_DEPLOYED = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE"}


def deployed_stacks(
    endpoint: LocalEndpoint, app_dir: Path, wanted: Sequence[str] | None = None
) -> tuple[str, ...]:
    """The app's stacks (from its cloud assembly, `cdk.out/manifest.json` or cdk.json's
    "output") that the endpoint has deployed, in assembly order; only `wanted` if given.
    Not from cdk's outputs file, which names only stacks that declare a CfnOutput."""
    from local_backend import deploy as deploy_steps

    try:
        out_dir = json.loads((app_dir / "cdk.json").read_text()).get("output") or "cdk.out"
        assembly = deploy_steps.assembly_stacks(app_dir / out_dir)
    except (OSError, ValueError, AttributeError) as exc:
        pytest.fail(
            f"enclavekit: cdk deploy of {app_dir} left no readable cloud assembly ({exc})",
            pytrace=False,
        )
    cfn = endpoint.client("cloudformation")
    live = {
        s["StackName"] for s in cfn.describe_stacks()["Stacks"] if s["StackStatus"] in _DEPLOYED
    }
    picked = set(wanted) if wanted else None
    return tuple(n for n in assembly if n in live and (picked is None or n in picked))


def deploy(
    endpoint: LocalEndpoint,
    app_dir: str | Path,
    stacks: Sequence[str] | None = None,
    context: Mapping[str, Any] | None = None,
    *,
    secrets: Mapping[str, bytes] | None = None,
    seal: bool = True,
    timeout: float = DEPLOY_TIMEOUT_S,
) -> Deployment:
    """`cdk bootstrap` (once per endpoint), `cdk deploy`, then (unless `seal=False`) seal the
    application secrets (`secrets` by name, the still-unsealed rest at random, as `enclavekit
    up`) and wait until every enclave host is provisioned. Any failure is one pytest.fail
    line naming what failed and why, followed by the tail of cdk's output."""
    app = Path(app_dir).resolve()
    if not (app / "cdk.json").is_file():
        pytest.fail(
            f"enclavekit_deploy: app_dir must be a directory with cdk.json, got {str(app_dir)!r}",
            pytrace=False,
        )
    if isinstance(stacks, str):
        stacks = [stacks]
    bootstrap(endpoint)
    outputs_file = endpoint.state_dir / "clients" / f"outputs-{time.monotonic_ns()}.json"
    outputs_file.parent.mkdir(parents=True, exist_ok=True)
    run = run_cdk(
        endpoint,
        app,
        [
            "deploy",
            *(stacks or ["--all"]),
            "--require-approval",
            "never",
            "--outputs-file",
            str(outputs_file),
            *_context_args(context),
        ],
        timeout=timeout,
    )
    if run.returncode != 0:
        _fail_cdk("deploy", app, run)
    try:
        outputs = json.loads(outputs_file.read_text())
    except (OSError, ValueError) as exc:
        pytest.fail(
            f"enclavekit: cdk deploy of {app} wrote no readable outputs file ({exc})", pytrace=False
        )
    finally:
        outputs_file.unlink(missing_ok=True)
    names = deployed_stacks(endpoint, app, stacks)
    outputs = {name: dict(outputs.get(name) or {}) for name in names}
    wait_user_data(endpoint, names, fail=seal)
    hosts = hosts_of(endpoint, names)
    if seal:
        before = {h.instance_id: h.provisioning().get("provisioned_at") for h in hosts}
        sealed = seal_secrets(endpoint, hosts, secrets)
        wait_all_provisioned(endpoint, hosts, before, [name.split("/")[0] for name in sealed])
    elif secrets:
        pytest.fail("enclavekit_deploy: secrets given with seal=False", pytrace=False)
    return Deployment(
        endpoint=endpoint, app_dir=app, stacks=names, outputs=outputs, hosts=hosts, cdk=run
    )


# ------------------------------------------------------------------ fixtures

PORT_ENV = "ENCLAVEKIT_PORT"


def _port(text: str) -> int:
    import argparse

    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a TCP port 1..65535, found {text!r}")
    return int(text)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("enclavekit").addoption(
        "--enclavekit-port",
        type=_port,
        default=None,
        metavar="PORT",
        help=f"loopback port of the enclavekit_endpoint fixture (env {PORT_ENV}; "
        "default: a free port)",
    )


def endpoint_port(config: pytest.Config) -> int | None:
    """The port the session's endpoint listens on: --enclavekit-port, else $ENCLAVEKIT_PORT,
    else None (a free port)."""
    given = config.getoption("enclavekit_port", None)
    if given is not None:
        return int(given)
    env = os.environ.get(PORT_ENV, "").strip()
    if not env:
        return None
    try:
        return _port(env)
    except Exception as exc:  # noqa: BLE001 - argparse's error, as a usage error
        raise pytest.UsageError(f"{PORT_ENV}: {exc}") from None


@pytest.fixture(scope="session")
def enclavekit_endpoint(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalEndpoint]:
    """A local endpoint for the session (a free loopback port unless --enclavekit-port or
    $ENCLAVEKIT_PORT names one; temporary state dir)."""
    port = endpoint_port(request.config)
    with local_endpoint(tmp_path_factory.mktemp("enclavekit-state"), port) as ep:
        yield ep


@pytest.fixture(scope="session")
def enclavekit_deploy(enclavekit_endpoint: LocalEndpoint) -> Callable[..., Deployment]:
    """Factory: `enclavekit_deploy(app_dir, stacks=None, context=None, *, secrets=None,
    seal=True)` -> Deployment (see `deploy`)."""
    return functools.partial(deploy, enclavekit_endpoint)
