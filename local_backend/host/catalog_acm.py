"""The packages of ACM for Nitro Enclaves set-up A: nginx, OpenSSL's pkcs11 engine, p11-kit and
`aws-nitro-enclaves-acm`, as AL2023's RPMs lay them out, so AWS's documented steps (the
AL2023 `nginx-conf.sh` edits, acm.yaml, `systemctl start nitro-enclaves-acm`) work unchanged.

The programs are real: Debian's nginx 1.22 and libp11 engine, unpacked into the project's
`.system/root` by scripts/system-packages.sh (the project is bound read-only into every host),
and the machine's libp11-kit as p11-kit's proxy module. The ACM agent is this project's
(`acm_agent`); its enclave image is built on the machine (`local_backend.acm_enclave`) before
a host installs the package. Where each stock file comes from: data/<package>/SOURCE.md.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from local_backend.host.rootfs import project_root

UNIT_DIR = "/usr/lib/systemd/system"
NGINX_CONF = "/etc/nginx/nginx.conf"
OPENSSL_CNF = "/etc/pki/tls/openssl.cnf"
EIF_DIR = "/usr/share/nitro_enclaves/p11ne"
# Where the machine keeps the ACM enclave image for hosts to install (written by
# `ensure_acm_image`, read by dnf inside the host: the project is visible there).
IMAGE_CACHE = ".enclavekit/acm-enclave-image"


def system_root() -> Path:
    """Debian's unpacked programs (local_backend.system_packages; the project's own tree, the
    only one a host sees)."""
    return project_root() / ".system" / "root"


def _libdir() -> str:
    return f"/usr/lib/{platform.machine()}-linux-gnu"


def image_cache() -> Path:
    return project_root() / IMAGE_CACHE


def nginx_wrapper() -> bytes:
    """/usr/sbin/nginx: Debian's binary reading AL2023's OpenSSL configuration path."""
    real = system_root() / "usr" / "sbin" / "nginx"
    return (
        "#!/bin/sh\n"
        "# enclavekit: Debian's nginx 1.22 (.system/root) with AL2023's OpenSSL config path\n"
        f'OPENSSL_CONF={OPENSSL_CNF} exec {real} "$@"\n'
    ).encode()


_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>{title}</title></head>\n"
    "<body><h1>{title}</h1><p>nginx on Amazon Linux (enclavekit host)</p></body></html>\n"
)


def acm_packages() -> list:  # list[catalog.Package]
    from local_backend.host.catalog import Package

    lib = _libdir()
    sysroot = system_root()
    html = "/usr/share/nginx/html"
    nginx = Package(
        name="nginx",
        version="1.24.0-1.amzn2023.0.4",
        summary="A high performance web server and reverse proxy server",
        files={
            NGINX_CONF: "nginx/nginx.conf",
            "/etc/nginx/nginx.conf.default": "nginx/nginx.conf",
            "/etc/nginx/mime.types": "nginx/mime.types",
            "/etc/nginx/mime.types.default": "nginx/mime.types",
            f"{UNIT_DIR}/nginx.service": "nginx/nginx.service",
        },
        contents={
            "/usr/sbin/nginx": nginx_wrapper(),
            f"{html}/index.html": _PAGE.format(title="Welcome to nginx!").encode(),
            f"{html}/404.html": _PAGE.format(title="404 Not Found").encode(),
            f"{html}/50x.html": _PAGE.format(title="Server error").encode(),
        },
        links={"/usr/lib/enclavekit/nginx.bin": str(sysroot / "usr" / "sbin" / "nginx")},
        config=(NGINX_CONF, "/etc/nginx/mime.types"),
        dirs=(
            "/etc/nginx/conf.d",
            "/etc/nginx/default.d",
            "/usr/share/nginx/modules",
            "/var/log/nginx",
            "/var/lib/nginx",
        ),
        users=("nginx",),
        requires=("openssl-libs",),
    )
    openssl_libs = Package(
        name="openssl-libs",
        version="3.0.8-1.amzn2023.0.18",
        summary="OpenSSL's shared libraries and /etc/pki/tls/openssl.cnf",
        files={OPENSSL_CNF: "openssl-libs/openssl.cnf"},
        config=(OPENSSL_CNF,),
        dirs=("/etc/pki/tls/openssl.d", "/etc/pki/tls/private"),
    )
    engine = str(sysroot / lib.lstrip("/") / "engines-3" / "pkcs11.so")
    openssl_pkcs11 = Package(
        name="openssl-pkcs11",
        version="0.4.12-3.amzn2023.0.1",
        summary="A PKCS#11 engine for use with OpenSSL (libp11)",
        links={
            f"{lib}/engines-3/pkcs11.so": engine,  # the machine libssl's ENGINESDIR
            "/usr/lib64/engines-3/pkcs11.so": engine,  # where AL2023 has it
        },
        requires=("openssl-libs", "p11-kit"),
    )
    p11_kit = Package(
        name="p11-kit",
        version="0.24.1-2.amzn2023.0.3",
        summary="Library for loading and sharing PKCS#11 modules (proxy module)",
        links={f"{lib}/p11-kit-proxy.so": "libp11-kit.so.0"},  # the machine's libp11-kit
        dirs=("/etc/pkcs11/modules",),
    )
    cache = image_cache()
    acm = Package(
        name="aws-nitro-enclaves-acm",
        version="1.4.0-1.amzn2023",
        summary="AWS Certificate Manager for Nitro Enclaves (enclavekit agent and image)",
        commands=("p11ne-agent",),
        files={
            "/etc/nitro_enclaves/acm.example.yaml": "aws-nitro-enclaves-acm/acm.example.yaml",
            f"{UNIT_DIR}/nitro-enclaves-acm.service": (
                "aws-nitro-enclaves-acm/nitro-enclaves-acm.service"
            ),
        },
        copies={
            f"{EIF_DIR}/p11ne.eif": str(cache / "p11ne.eif"),
            f"{EIF_DIR}/image-measurements.json": str(cache / "image-measurements.json"),
        },
        config=("/etc/nitro_enclaves/acm.example.yaml",),
        dirs=("/etc/pkcs11/modules",),
        requires=("aws-nitro-enclaves-cli", "openssl-pkcs11", "p11-kit"),
    )
    return [nginx, openssl_libs, openssl_pkcs11, p11_kit, acm]


def add_system_user(name: str) -> None:
    """`useradd -r -d /var/lib/NAME -s /sbin/nologin NAME` with a same-named system group."""
    from local_backend.host.catalog import _add_group

    _add_group(name)
    passwd = Path("/etc/passwd")
    lines = passwd.read_text().splitlines() if passwd.exists() else []
    if any(line.split(":")[0] == name for line in lines):
        return
    gid = next(
        line.split(":")[2]
        for line in Path("/etc/group").read_text().splitlines()
        if line.split(":")[0] == name
    )
    used = {int(line.split(":")[2]) for line in lines if line.count(":") >= 6}
    uid = next(u for u in range(999, 100, -1) if u not in used)
    entry = f"{name}:x:{uid}:{gid}:{name} user:/var/lib/{name}:/sbin/nologin"
    passwd.write_text("\n".join([*lines, entry]) + "\n")
    shadow = Path("/etc/shadow")
    if shadow.exists():
        shadow.write_text(shadow.read_text() + f"{name}:!!:19700::::::\n")
    home = Path(f"/var/lib/{name}")
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, uid, int(gid))
    home.chmod(0o770)


def ensure_acm_image() -> Path:
    """Build the ACM enclave image (local_backend.acm_enclave, cached by content) and put it
    where hosts' dnf installs it from. On the machine, before a host installs the package."""
    from local_backend.acm_enclave import p11ne_image

    eif, measurements = p11ne_image()
    cache = image_cache()
    cache.mkdir(parents=True, exist_ok=True)
    for src, name in ((eif, "p11ne.eif"), (measurements, "image-measurements.json")):
        tmp = cache / f".{name}.{os.getpid()}"
        tmp.write_bytes(Path(src).read_bytes())
        os.replace(tmp, cache / name)
    return cache
