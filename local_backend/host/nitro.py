"""The commands of `aws-nitro-enclaves-cli` inside a host: nitro-cli, the allocator, vsock-proxy.

`nitro-cli` is enclavekit's own enclave CLI (`enclavekit.cli.enclave` + `.image`) over the
host's emulator state (`/run/nitro_enclaves/emulator`), with the parent's role and instance id
(PCR3/PCR4) taken from the instance, and run-enclave held to the pool the allocator reserved
(nitro-cli's E22/E27 errors). `nitro-enclaves-allocator` does what the stock allocator script
(bootstrap/nitro-enclaves-allocator) does, with its messages: parse allocator.yaml with the
script's own trivial parser (nothing before `---` is read), then check the CPU count against
the *instance type* (CPU 0's core stays with the parent, whole cores only) and the memory
against what the type can give — a pool the type cannot give fails as on AWS.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from local_backend.host import driver
from local_backend.host.layout import HOST_ALLOCATION, HOST_EMULATOR_STATE, HOST_IDENTITY

CONFIG = "/etc/nitro_enclaves/allocator.yaml"
VERSION = "Nitro CLI 1.4.2"
DOCS = "https://docs.aws.amazon.com/enclaves/latest/user/cli-errors.html"


def identity() -> dict[str, Any]:
    try:
        return json.loads(Path(HOST_IDENTITY).read_text())
    except (OSError, ValueError):
        return {}


class AllocatorError(Exception):
    pass


def _fail(text: str) -> AllocatorError:
    return AllocatorError(f"Error: {text}")


def parse_allocator_config(text: str, path: str = CONFIG) -> dict[str, str]:
    """The stock script's parser: after `---`, `key: value` lines; comments skipped."""
    config = {"memory_mib": "", "cpu_count": "", "cpu_pool": ""}
    skip = True
    for count, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if re.match(r"^\s*#", line):
            continue
        if line == "---":
            skip = False
            continue
        if skip or not line:
            continue
        m = re.match(r"^([-_a-z0-9]+)", line.split(":")[0], re.IGNORECASE)
        key = m.group(1) if m else ""
        if key not in config:
            raise _fail(f"Error in {path}:{count} - unexpected: {key}")
        value = re.sub(r"^.+:", "", line)
        value = re.sub(r'^\s+"?', "", value)
        value = re.sub(r'"?$', "", value)
        if not value:
            raise _fail(f"Error in {path}:{count} - missing value for {key}")
        config[key] = value
    if not config["memory_mib"]:
        raise _fail("Config error: missing memory reservation (`memory_mib`).")
    if not config["cpu_count"] and not config["cpu_pool"]:
        raise _fail("Config error: missing CPU reservation (either `cpu_count` or `cpu_pool`).")
    if config["cpu_count"] and config["cpu_pool"]:
        raise _fail("Config error: `cpu_count` conflicts with `cpu_pool`.")
    return config


def _cpu_list(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise _fail("Failed to configure the CPU pool.")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def allocate(config: dict[str, str], type_name: str, enclave_enabled: bool) -> dict[str, Any]:
    """Reserve the pool for `config` on `type_name`; prints as the script does."""
    from enclavekit import instance_types

    if not enclave_enabled:
        raise _fail(
            "The CPU pool file is missing. Please make sure the Nitro Enclaves driver is inserted."
        )
    t = instance_types.lookup(type_name)
    threads = t.threads_per_core
    memory = config["memory_mib"]
    if config["cpu_count"]:
        print("Auto-generating the enclave CPU pool by using the CPU count...")
        count_text = config["cpu_count"]
        if not count_text.isdigit():
            raise _fail(f"The CPU count value ({count_text}) is invalid.")
        count = int(count_text)
        if count <= 0:
            raise _fail("Provided CPU count is not higher than 0.")
        if count > t.vcpus:
            raise _fail(f"Provided CPU count is higher than available CPUs - {t.vcpus}.")
        if count % threads:
            raise _fail(f"The CPU count is not multiple of {threads} (threads per core).")
        if count > t.vcpus - threads:
            raise _fail(
                "Failed to find suitable CPUs for the Nitro Enclaves CPU pool after "
                "checking all NUMA nodes."
            )
        cpus = list(range(1, count + 1)) if threads == 1 else _sibling_pool(t.vcpus, count)
        print(f"Will try to reserve {memory} MB of memory on node 0.")
    else:
        cpus = _cpu_list(config["cpu_pool"])
        if any(c >= t.vcpus for c in cpus) or 0 in cpus:
            raise _fail("Failed to configure the CPU pool.")
        count = len(cpus)
    print("Configuring the huge page memory...")
    if not memory.isdigit():
        raise _fail(f"The needed memory amount ({memory}) is invalid.")
    if int(memory) > instance_types.max_enclave_memory_mib(t):
        print("Memory configuration failed, rolling back memory reservations...")
        raise _fail(
            "Failed to configure entire amount of requested memory. This indicates "
            "insufficient system resources."
        )
    print(f"- Reserved {int(memory) // 2} pages of type: 2048kB.")
    print("Done.")
    pool = ",".join(map(str, cpus))
    if config["cpu_count"]:
        print(f"Auto-generated the enclave CPU pool: {pool}.")
    print("Configuring the enclave CPU pool...")
    print("Done.")
    cpu_msg = f"{count} CPUs" if config["cpu_count"] else f"CPU pool: {config['cpu_pool']}"
    print(f"Successfully allocated Nitro Enclaves resources: {memory} MiB, {cpu_msg}")
    return {"cpu_count": count, "cpu_ids": cpus, "memory_mib": int(memory)}


def _sibling_pool(vcpus: int, count: int) -> list[int]:
    """Whole cores after CPU 0's, numbered as EC2 numbers siblings (n and n + vcpus/2)."""
    half = vcpus // 2
    cores = range(1, half)
    out: list[int] = []
    for c in cores:
        if len(out) >= count:
            break
        out.extend([c, c + half])
    return sorted(out)


def allocator_main(argv: list[str]) -> int:
    ident = identity()
    try:
        text = Path(CONFIG).read_text()
    except OSError:
        print(f"Error: Config file {CONFIG} not found.")
        return 1
    try:
        config = parse_allocator_config(text)
        result = allocate(
            config, ident.get("instance_type", ""), bool(ident.get("enclave_enabled", True))
        )
    except AllocatorError as exc:
        print(exc)
        return 1
    except Exception as exc:  # noqa: BLE001 - e.g. an instance type outside the table
        print(f"Error: {exc}")
        return 1
    path = Path(HOST_ALLOCATION)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result) + "\n")
    return 0


def _nitro_error(code: str, text: str) -> int:
    print(f"[ {code} ] {text}\n\nFor more details, please visit {DOCS}#{code}", file=sys.stderr)
    return 1


def nitro_cli_main(argv: list[str]) -> int:
    from enclavekit.cli import main as cli_main

    if argv[:1] in (["--version"], ["-V"]):
        print(VERSION)
        return 0
    args = list(argv)
    verb = args[0] if args else ""
    if verb in ("run-enclave", "describe-enclaves", "terminate-enclave", "console"):
        args += ["--state-dir", HOST_EMULATOR_STATE]
    if verb == "run-enclave":
        for flag in ("--parent-role-arn", "--parent-instance-id"):
            if any(a == flag or a.startswith(flag + "=") for a in args):
                # the emulator's own options: on a parent the hardware says who the parent is
                print(f"error: unexpected argument '{flag}' found", file=sys.stderr)
                return 2
        rc = _check_pool(args)
        if rc:
            return rc
    if verb == "pcr":
        return _pcr(args[1:])
    groups = ("enclavekit.cli.enclave", "enclavekit.cli.image")
    if verb == "run-enclave" and Path(driver.SOCKET).exists():
        return _run_through_driver(args, groups)
    return cli_main(args, groups=groups)


def _run_through_driver(args: list[str], groups: tuple[str, ...]) -> int:
    """run-enclave as nitro-cli does it: the driver builds the enclave, nitro-cli reports."""
    from enclavekit.cli import build_parser

    ns = build_parser(groups).parse_args(args)
    reply = driver.run_enclave(
        {
            "eif_path": str(Path(ns.eif_path).absolute()),
            "cpu_count": ns.cpu_count,
            "memory_mib": ns.memory,
            "cid": ns.enclave_cid,
            "debug_mode": ns.debug_mode,
            "name": ns.enclave_name,
            "parent_role_arn": ns.parent_role_arn,
            "parent_instance_id": ns.parent_instance_id,
        }
    )
    if "error" in reply:
        print(f"enclavekit: error: {reply['error']}", file=sys.stderr)
        return int(reply.get("exit_code", 1))
    result = reply["ok"]
    print(
        f"Started enclave with enclave-cid: {result['EnclaveCID']}, "
        f"memory: {result['MemoryMiB']} MiB, cpu-ids: {result['CPUIDs']}",
        file=sys.stderr,
    )
    print(json.dumps(result, indent=4), flush=True)
    if ns.attach_console and ns.debug_mode:
        from local_backend.emulator.runtime import EnclaveManager

        for chunk in EnclaveManager(HOST_EMULATOR_STATE).console(result["EnclaveID"]):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
    return 0


def _arg(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def _check_pool(args: list[str]) -> int:
    try:
        pool = json.loads(Path(HOST_ALLOCATION).read_text())
    except (OSError, ValueError):
        pool = {"cpu_count": 0, "memory_mib": 0}
    cpus, memory = _arg(args, "--cpu-count"), _arg(args, "--memory")
    if cpus and cpus.isdigit() and int(cpus) > pool["cpu_count"]:
        return _nitro_error(
            "E22",
            f"Insufficient CPUs available in the pool. User provided `cpu-count` is "
            f"{cpus}, which is more than the configured CPU pool size.\nYou can increase the "
            "CPU pool size by editing the `cpu_count` value from "
            "'/etc/nitro_enclaves/allocator.yaml' and then enable the "
            "nitro-enclaves-allocator.service.",
        )
    if memory and memory.isdigit() and int(memory) > pool["memory_mib"]:
        return _nitro_error(
            "E27",
            f"Insufficient memory available. User provided `memory` is {memory} MB, "
            "which is more than the available hugepage memory.\nYou can increase the available "
            "memory by editing the `memory_mib` value from '/etc/nitro_enclaves/allocator.yaml' "
            "and then restart the nitro-enclaves-allocator.service.",
        )
    return 0


def _pcr(args: list[str]) -> int:
    """`nitro-cli pcr --input FILE | --signing-certificate FILE`: PCR of a file's content."""
    from enclavekit import pcr

    path = _arg(args, "--signing-certificate") or _arg(args, "--input")
    if not path:
        print("nitro-cli pcr: expected --input FILE or --signing-certificate FILE", file=sys.stderr)
        return 1
    data = Path(path).read_bytes()
    value = (
        pcr.pcr8_of_certificate(data)
        if "--signing-certificate" in args
        else pcr.pcr_of_content(data)
    )
    print(json.dumps({"PCR": value.hex()}, indent=4))
    return 0


def vsock_proxy_main(argv: list[str]) -> int:
    from enclavekit.cli import main as cli_main

    return cli_main(
        ["vsock-proxy", *argv, "--state-dir", HOST_EMULATOR_STATE],
        groups=("enclavekit.cli.enclave",),
    )
