"""PID 1 of an instance host: start enabled units, run cloud-init once, reap, shut down.

cloud-init runs in a child process so that PID 1 only reaps: services that daemonize (what
`systemctl start` leaves running) are re-parented here, as under systemd. SIGTERM (the instance
stops or terminates) stops the services, then every process of the host.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from local_backend.host.layout import HOST_EMULATOR_STATE, HOST_IDENTITY

STOP_GRACE_S = 3.0
DEFAULT_ENV_PREFIXES = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_CA_BUNDLE", "ENCLAVEKIT_")


def _shutdown(_signum: int, _frame: object) -> None:
    with contextlib.suppress(Exception):
        from local_backend.host import systemd

        systemd.stop_all()
    with contextlib.suppress(ProcessLookupError):
        os.kill(-1, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.05)
    os._exit(0)


def main() -> int:
    identity = json.loads(Path(HOST_IDENTITY).read_text())
    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    from local_backend.host import systemd

    # systemd's DefaultEnvironment: what services get besides their own unit's settings.
    systemd.DEFAULT_ENV_FILE.parent.mkdir(parents=True, exist_ok=True)
    systemd.DEFAULT_ENV_FILE.write_text(
        json.dumps({k: v for k, v in os.environ.items() if k.startswith(DEFAULT_ENV_PREFIXES)})
    )
    # Parent-side programs find the emulated vsock (CID 3) where the emulator's own mount
    # says so (`enclavekit.transport.open_vsock`), as on a Nitro parent they find /dev/vsock.
    vsock = Path(HOST_EMULATOR_STATE) / "vsock"
    vsock.mkdir(parents=True, exist_ok=True)
    (vsock / "self").write_text("3\n")
    Path("/run/enclavekit").mkdir(exist_ok=True)
    with contextlib.suppress(FileExistsError):
        Path("/run/enclavekit/vsock").symlink_to(vsock)
    driver_fd = (
        int(sys.argv[sys.argv.index("--driver-fd") + 1]) if "--driver-fd" in sys.argv else -1
    )
    if os.fork() == 0:  # the enclave driver keeps what everything else loses next
        from local_backend.host import driver

        try:
            driver.serve(launcher_fd=driver_fd)
        finally:
            os._exit(1)
    if driver_fd >= 0:
        os.close(driver_fd)  # nothing else in the host holds the line to the launcher
    from local_backend.host import driver, sandbox

    deadline = time.monotonic() + 10
    while not Path(driver.SOCKET).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    say = lambda text: print(f"enclavekit: {text}", flush=True)  # noqa: E731
    sandbox.seal_submounts("/sys", say)  # the driver's own namespace keeps its cgroups
    sandbox.drop_capabilities(say, sandbox.USER_DROPPED_CAPABILITIES)
    with contextlib.suppress(Exception):
        systemd.start_enabled(sys.stdout.buffer)
    pid = os.fork()
    if pid == 0:
        from local_backend.host import cloudinit

        code = 0
        try:
            code = 1 if cloudinit.run(identity["instance_id"], sys.stdout.buffer).errors else 0
        except BaseException as exc:  # noqa: BLE001 - the console must say why
            print(f"cloud-init: {type(exc).__name__}: {exc}", flush=True)
            code = 2
        finally:
            sys.stdout.flush()
            os._exit(code)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            signal.pause()


if __name__ == "__main__":
    sys.exit(main())
