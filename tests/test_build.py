"""build-enclave: nitro-cli layout, reproducibility, manifest errors, the CLI verbs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from enclavekit.build import (
    DEFAULT_CMDLINES,
    EMULATOR_INIT,
    EMULATOR_KERNEL,
    EMULATOR_NSM_KO,
    build_enclave,
    extract_customer_ramdisk,
    is_emulator_image,
    load_manifest,
)
from enclavekit.cli import main
from enclavekit.cpio import read_newc
from enclavekit.eif import read_eif
from enclavekit.errors import EifFormatError, InvalidInput

HELLO = Path(__file__).resolve().parent / "fixtures" / "apps" / "hello"
ROOT = Path(__file__).resolve().parent.parent


def _pcr(*parts: bytes) -> str:
    return hashlib.sha384(b"\0" * 48 + hashlib.sha384(b"".join(parts)).digest()).hexdigest()


def _copy_app(dest: Path) -> Path:
    shutil.copytree(HELLO, dest)
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("built") / "hello.eif"
    return out, build_enclave(HELLO, out)


def test_pcrs_are_the_hash_of_the_sections(built: tuple[Path, object]) -> None:
    path, result = built
    image = read_eif(path)
    kernel, cmdline, (boot, app) = image.kernel, image.cmdline, image.ramdisks
    assert kernel == EMULATOR_KERNEL
    assert cmdline == DEFAULT_CMDLINES["x86_64"].encode()
    assert cmdline.decode() == (
        "reboot=k panic=30 pci=off nomodules console=ttyS0 i8042.noaux i8042.nomux "
        "i8042.nopnp i8042.dumbkbd random.trust_cpu=on"
    )
    m = result.measurements  # type: ignore[attr-defined]
    assert m.pcr0.hex() == _pcr(kernel, cmdline, boot, app)
    assert m.pcr1.hex() == _pcr(kernel, cmdline, boot)
    assert m.pcr2.hex() == _pcr(app)
    assert image.measurements == m and image.crc_ok


def test_nitro_cli_ramdisk_layout(built: tuple[Path, object]) -> None:
    image = read_eif(built[0])
    boot = {e.path: e for e in read_newc(image.ramdisks[0])}
    assert sorted(boot) == ["dev", "init", "nsm.ko"]
    assert boot["init"].data == EMULATOR_INIT and boot["init"].mode == 0o755
    assert boot["nsm.ko"].data == EMULATOR_NSM_KO and boot["dev"].is_dir
    app = {e.path: e for e in read_newc(image.ramdisks[1])}
    assert app["cmd"].data == b"/usr/bin/python3\n/app/main.py\n--port\n8443\n"
    assert app["cmd"].mode == 0o644 and app["env"].mode == 0o644
    assert app["env"].data == b"PYTHONPATH=/app\nGREETING=hello from the enclave\n"
    for d in ("dev", "proc", "run", "sys", "tmp", "var", "app", "app/lib", "app/enclavekit"):
        assert app[f"rootfs/{d}"].is_dir, d
    assert app["rootfs/app/main.py"].data == (HELLO / "main.py").read_bytes()
    assert app["rootfs/app/lib/util.py"].mode == 0o644
    assert app["rootfs/app/run.sh"].mode == 0o755
    assert app["rootfs/app/enclave.json"].data == (HELLO / "enclave.json").read_bytes()
    # Vendored: pcr as asked, plus errors which pcr imports; a fixed package __init__.
    vendored = sorted(p for p in app if p.startswith("rootfs/app/enclavekit/"))
    assert vendored == [
        "rootfs/app/enclavekit/__init__.py",
        "rootfs/app/enclavekit/errors.py",
        "rootfs/app/enclavekit/pcr.py",
    ]
    assert app["rootfs/app/enclavekit/pcr.py"].data == (ROOT / "enclavekit" / "pcr.py").read_bytes()
    assert not any("__pycache__" in p or p.endswith(".pyc") for p in app)


def test_describe_says_emulator_kernel(built: tuple[Path, object]) -> None:
    describe = built[1].describe  # type: ignore[attr-defined]
    assert describe["ImageName"] == "hello" and describe["ImageVersion"] == "1.0.0"
    assert describe["Metadata"]["EnclaveKit"]["Kernel"].startswith("emulator")
    assert describe["Metadata"]["EnclaveKit"]["Vendor"] == ["enclavekit.errors", "enclavekit.pcr"]
    assert describe["Metadata"]["BuildTime"] == "1970-01-01T00:00:00+00:00"
    assert is_emulator_image(read_eif(built[0]))


def test_reproducible_across_mtimes_umask_and_caches(
    tmp_path: Path, built: tuple[Path, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _copy_app(tmp_path / "app")
    for i, path in enumerate(sorted(app.rglob("*"))):
        os.utime(path, (1_000_000 + i * 77, 2_000_000_000 - i * 13))
    (app / "__pycache__").mkdir()
    (app / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\x00cache")
    (app / "lib" / "util.pyc").write_bytes(b"\x00stale")
    os.chmod(app / "main.py", 0o600)  # owner not executable -> still 0644 in the image
    old = os.umask(0o077)
    try:
        result = build_enclave(app, tmp_path / "again.eif")
    finally:
        os.umask(old)
    assert (tmp_path / "again.eif").read_bytes() == built[0].read_bytes()
    assert result.measurements == built[1].measurements  # type: ignore[attr-defined]

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    later = build_enclave(app, tmp_path / "later.eif")
    assert later.measurements == result.measurements  # metadata is not measured
    assert later.describe["Metadata"]["BuildTime"] == "2023-11-14T22:13:20+00:00"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(InvalidInput, match="SOURCE_DATE_EPOCH: expected a non-negative integer"):
        build_enclave(app, tmp_path / "bad.eif")


def test_changed_app_changes_pcr0_and_pcr2_only(tmp_path: Path, built: tuple[Path, object]) -> None:
    app = _copy_app(tmp_path / "app")
    (app / "lib" / "util.py").write_text("def greet(text: str) -> str:\n    return text\n")
    changed = build_enclave(app, tmp_path / "changed.eif").measurements
    base = built[1].measurements  # type: ignore[attr-defined]
    assert changed.pcr1 == base.pcr1
    assert changed.pcr0 != base.pcr0 and changed.pcr2 != base.pcr2
    os.chmod(app / "lib" / "util.py", 0o755)  # the exec bit is part of the image too
    assert build_enclave(app, tmp_path / "x.eif").measurements.pcr2 != changed.pcr2


def test_real_blobs_give_the_same_layout(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "bzImage").write_bytes(b"MZ fake bzImage " * 64)
    (blobs / "bzImage.config").write_text(
        "#\n# Linux/x86 4.14.256-209.484.amzn2.x86_64 Kernel Configuration\n"
    )
    (blobs / "init").write_bytes(b"\x7fELF fake init")
    (blobs / "nsm.ko").write_bytes(b"\x7fELF fake nsm.ko")
    result = build_enclave(
        HELLO,
        tmp_path / "real.eif",
        kernel=blobs / "bzImage",
        init=blobs / "init",
        cmdline="console=ttyS0 custom=1",
        name="renamed",
        version="2",
    )
    image = read_eif(result.path)
    assert image.kernel == (blobs / "bzImage").read_bytes() and not is_emulator_image(image)
    assert image.cmdline == b"console=ttyS0 custom=1"
    boot = {e.path: e.data for e in read_newc(image.ramdisks[0]) if not e.is_dir}
    assert boot == {"init": b"\x7fELF fake init", "nsm.ko": b"\x7fELF fake nsm.ko"}
    meta = result.describe["Metadata"]
    assert meta["KernelVersion"] == "4.14.256-209.484.amzn2.x86_64"
    assert meta["EnclaveKit"]["Kernel"] == "provided: bzImage"
    assert meta["EnclaveKit"]["NsmDriver"] == "provided: nsm.ko"
    assert result.describe["ImageName"] == "renamed" and result.describe["ImageVersion"] == "2"
    assert result.measurements.pcr0.hex() == _pcr(image.kernel, image.cmdline, *image.ramdisks)


def test_extract_customer_ramdisk(tmp_path: Path, built: tuple[Path, object]) -> None:
    launch = extract_customer_ramdisk(read_eif(built[0]), tmp_path / "root")
    assert launch.cmd == ["/usr/bin/python3", "/app/main.py", "--port", "8443"]
    assert launch.env == {"PYTHONPATH": "/app", "GREETING": "hello from the enclave"}
    assert launch.runtime is not None and launch.runtime["packages"] == ["cbor2", "cryptography"]
    assert (launch.root / "app" / "main.py").read_bytes() == (HELLO / "main.py").read_bytes()
    assert os.access(launch.root / "app" / "run.sh", os.X_OK)
    assert (launch.root / "app" / "enclavekit" / "pcr.py").is_file()
    assert sorted(p.name for p in launch.root.iterdir()) == [
        "app", "dev", "proc", "run", "sys", "tmp", "var",
    ]  # fmt: skip
    with pytest.raises(InvalidInput, match="expected an empty directory"):
        extract_customer_ramdisk(read_eif(built[0]), tmp_path / "root")


def test_extract_refuses_an_image_without_cmd(tmp_path: Path) -> None:
    from enclavekit.cpio import CpioEntry, write_newc
    from enclavekit.eif import write_eif

    meta = {"ImageName": "x", "ImageVersion": "1", "BuildMetadata": {}, "DockerInfo": None}
    data = write_eif(
        kernel=b"k",
        cmdline=b"c",
        ramdisks=[b"", write_newc([CpioEntry("env", b"")])],
        metadata=meta,
    )
    with pytest.raises(EifFormatError, match="expected a /cmd file, found none"):
        extract_customer_ramdisk(read_eif(data), tmp_path / "r")


# ---------------------------------------------------------------------------- bad input


def _manifest_app(tmp_path: Path, manifest: object) -> Path:
    app = tmp_path / "app"
    app.mkdir(exist_ok=True)
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    (app / "enclave.json").write_text(text)
    return app


GOOD = {"name": "a", "version": "1", "cmd": ["/bin/true"]}


@pytest.mark.parametrize(
    ("manifest", "pattern"),
    [
        ("{", r"enclave.json: not valid JSON \(line 1 column 2"),
        ([], r"expected a JSON object, found list"),
        ({"version": "1", "cmd": ["x"]}, r"missing required field 'name'"),
        ({**GOOD, "cmd": []}, r"field 'cmd': expected a non-empty array of strings"),
        ({**GOOD, "cmd": ["x", 3]}, r"field 'cmd\[1\]': expected a string, found int"),
        ({**GOOD, "env": {"1BAD": "x"}}, r"field 'env': expected keys like NAME_1, found '1BAD'"),
        ({**GOOD, "env": {"A": "x\ny"}}, r"field 'env.A': expected a string without newline"),
        ({**GOOD, "vendor": ["enclavekit.eif"]}, r"field 'vendor\[0\]': expected one of"),
        ({**GOOD, "runtime": {"python": 3.11}}, r"field 'runtime.python': expected a version"),
        ({**GOOD, "extra": 1}, r"unknown field\(s\) extra \(allowed: name, version"),
        ({**GOOD, "name": "a b"}, r"field 'name': expected 1-128 of"),
    ],
)
def test_manifest_errors_name_the_field(tmp_path: Path, manifest: object, pattern: str) -> None:
    app = _manifest_app(tmp_path, manifest)
    with pytest.raises(InvalidInput, match=pattern) as info:
        load_manifest(app)
    assert "\n" not in str(info.value)


def test_missing_dir_manifest_and_unreadable_inputs(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="expected a directory, found nothing there"):
        build_enclave(tmp_path / "nope", tmp_path / "o.eif")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match=r"enclave.json: not found"):
        build_enclave(tmp_path / "empty", tmp_path / "o.eif")
    app = _manifest_app(tmp_path, GOOD)
    with pytest.raises(InvalidInput, match=r"kernel .*: cannot be read"):
        build_enclave(app, tmp_path / "o.eif", kernel=tmp_path)  # a directory
    os.symlink("/etc/hostname", app / "link")
    with pytest.raises(InvalidInput, match=r"app file .*link: expected a regular file.*symlink"):
        build_enclave(app, tmp_path / "o.eif")
    (app / "link").unlink()
    os.mkfifo(app / "fifo")
    with pytest.raises(InvalidInput, match=r"app file .*fifo: .*found a special file"):
        build_enclave(app, tmp_path / "o.eif")
    (app / "fifo").unlink()
    (app / "enclavekit").mkdir()
    (app / "enclavekit" / "x.py").write_text("")
    _manifest_app(tmp_path, {**GOOD, "vendor": ["enclavekit.errors"]})
    with pytest.raises(InvalidInput, match="conflicts with the vendored core modules"):
        build_enclave(app, tmp_path / "o.eif")
    assert not (tmp_path / "o.eif").exists()


# --------------------------------------------------------------------------------- CLI


def test_cli_build_and_describe(
    tmp_path: Path, built: tuple[Path, object], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli.eif"
    assert main(["build-enclave", "--app-dir", str(HELLO), "--output-file", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert list(printed) == ["Measurements"]
    assert list(printed["Measurements"]) == ["HashAlgorithm", "PCR0", "PCR1", "PCR2"]
    assert printed["Measurements"] == built[1].measurements.to_nitro_cli()  # type: ignore[attr-defined]
    assert main(["describe-eif", "--eif-path", str(out)]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["Measurements"] == printed["Measurements"]
    assert described["EifVersion"] == 4 and described["CheckCRC"] is True


@pytest.mark.parametrize(
    "argv",
    [
        ["build-enclave", "--app-dir", "/nonexistent/app", "--output-file", "x.eif"],
        ["describe-eif", "--eif-path", "/nonexistent.eif"],
        ["build-enclave", "--output-file", "x.eif"],
    ],
)
def test_cli_bad_input_exits_2_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors leave through SystemExit
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err


def test_cli_corrupt_eif_exits_2(tmp_path: Path, built: tuple[Path, object]) -> None:
    bad = tmp_path / "bad.eif"
    bad.write_bytes(built[0].read_bytes()[:1000])
    proc = subprocess.run(
        [sys.executable, "-m", "enclavekit", "describe-eif", "--eif-path", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "runs past the end of the file" in proc.stderr


def test_cli_signed_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "signer")])
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=365))
        .sign(key, hashes.SHA384())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    out = tmp_path / "signed.eif"
    argv = ["build-enclave", "--app-dir", str(HELLO), "--output-file", str(out)]
    sign = ["--signing-certificate", str(tmp_path / "cert.pem")]
    assert main([*argv, *sign, "--private-key", str(tmp_path / "key.pem")]) == 0
    printed = json.loads(capsys.readouterr().out)["Measurements"]
    der = cert.public_bytes(serialization.Encoding.DER)
    assert printed["PCR8"] == _pcr(der)
    assert main(["describe-eif", "--eif-path", str(out)]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["IsSigned"] is True and described["SignatureCheck"] is True
    assert described["Measurements"] == printed
    assert main([*argv, *sign]) == 2
    assert "expected both --signing-certificate and --private-key" in capsys.readouterr().err
