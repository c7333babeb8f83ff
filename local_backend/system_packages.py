"""Debian's nginx, p11-kit, libp11 and SoftHSMv2, unpacked into the project (no root, no apt state).

ACM for Nitro Enclaves (set-up A) is nginx on the parent asking a PKCS#11 token for every
private-key operation: OpenSSL's pkcs11 engine (libp11) loads p11-kit's client module, which
speaks p11-kit's RPC protocol to a `p11-kit server` where the token lives (on AWS, in the ACM
enclave, over vsock). These are the real programs for that chain, fetched by
scripts/system-packages.sh into `.system/root` (or `$ENCLAVEKIT_SYSTEM_ROOT`).
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

from enclavekit.errors import BackendError

PROJECT = Path(__file__).resolve().parent.parent
ROOT_ENV = "ENCLAVEKIT_SYSTEM_ROOT"
SCRIPT = PROJECT / "scripts" / "system-packages.sh"


@dataclass(frozen=True)
class SystemRoot:
    """Where the unpacked programs are (a tree laid out like Debian's /)."""

    root: Path

    @property
    def libdir(self) -> Path:
        return self.root / "usr" / "lib" / f"{platform.machine()}-linux-gnu"

    @property
    def nginx(self) -> Path:
        return self.root / "usr" / "sbin" / "nginx"

    @property
    def p11kit_libexec(self) -> Path:
        """p11-kit's helpers; `p11-kit server` runs `p11-kit-remote` from its compiled-in
        /usr/libexec/p11-kit, so `p11kit_server_argv` binds this there in a mount namespace."""
        return self.root / "usr" / "libexec" / "p11-kit"

    @property
    def p11kit_server(self) -> Path:
        return self.p11kit_libexec / "p11-kit-server"

    @property
    def p11kit_client(self) -> Path:
        return self.libdir / "pkcs11" / "p11-kit-client.so"

    @property
    def pkcs11_engine(self) -> Path:
        return self.libdir / "engines-3" / "pkcs11.so"

    @property
    def softhsm_module(self) -> Path:
        return self.libdir / "softhsm" / "libsofthsm2.so"

    @property
    def softhsm_util(self) -> Path:
        return self.root / "usr" / "bin" / "softhsm2-util"

    @property
    def skopeo(self) -> Path:
        """skopeo, the OCI registry client (it loads libgpgme from `libdir`)."""
        return self.root / "usr" / "bin" / "skopeo"

    def missing(self) -> list[str]:
        paths = (
            self.nginx,
            self.p11kit_server,
            self.p11kit_client,
            self.pkcs11_engine,
            self.softhsm_module,
            self.softhsm_util,
            self.skopeo,
        )
        return [str(p) for p in paths if not p.exists()]

    def p11kit_server_argv(self, socket: Path, module: Path, token_uri: str) -> list[str]:
        """`p11-kit server` in the foreground on a Unix socket, in its own mount namespace
        where our p11-kit-remote stands at the path the binary was built to exec."""
        script = (
            "mount -t tmpfs enclavekit-libexec /usr/libexec && mkdir /usr/libexec/p11-kit && "
            'mount --bind "$1" /usr/libexec/p11-kit && exec "$2" -f -n "$3" -p "$4" "$5"'
        )
        return [
            "unshare", "--mount", "--propagation", "private", "sh", "-c", script, "p11-kit",
            str(self.p11kit_libexec), str(self.p11kit_server), str(socket), str(module), token_uri,
        ]  # fmt: skip

    def openssl_conf(self, module: Path) -> str:
        """An OpenSSL config that loads libp11's engine with `module` (init = 1: nginx's
        `ssl_engine pkcs11` needs the engine initialized before it asks for a key)."""
        return (
            "openssl_conf = openssl_init\n[openssl_init]\nengines = engine_section\n"
            "[engine_section]\npkcs11 = pkcs11_section\n[pkcs11_section]\n"
            f"engine_id = pkcs11\ndynamic_path = {self.pkcs11_engine}\n"
            f"MODULE_PATH = {module}\ninit = 1\n"
        )


def system_root(*, fetch: bool = True) -> SystemRoot:
    """The unpacked tree; fetched on first use (scripts/system-packages.sh) unless told not to."""
    explicit = os.environ.get(ROOT_ENV)
    found = SystemRoot(Path(explicit) if explicit else PROJECT / ".system" / "root")
    if found.missing() and fetch and not explicit:
        run = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, check=False)
        if run.returncode != 0:
            last = (run.stderr.strip().splitlines() or ["no output"])[-1]
            raise BackendError(f"system packages: {SCRIPT.name} failed ({last})")
    missing = found.missing()
    if missing:
        raise BackendError(
            f"system packages: expected nginx, p11-kit, SoftHSMv2 and skopeo under {found.root}, "
            f"missing {missing[0]} (run scripts/system-packages.sh, or set {ROOT_ENV})"
        )
    return found
