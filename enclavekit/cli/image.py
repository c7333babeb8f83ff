"""`enclavekit build-enclave` and `enclavekit describe-eif`: nitro-cli's image verbs.

Output JSON has nitro-cli's shapes so scripts written for nitro-cli (and the constructs'
``EnclaveImage.from_nitro_cli_json``) read ours unchanged.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from enclavekit.cli.common import command, print_json

# build_enclave's keyword options, each an option of the same name (`--kernel-config` is
# `kernel_config`), in --help order: named once for both the parser and the call.
_BUILD_OPTIONS: dict[str, dict[str, Any]] = {
    "kernel": {"help": "kernel image (nitro-cli blobs: bzImage / Image)"},
    "kernel_config": {"help": "kernel .config, for KernelVersion (default <kernel>.config)"},
    "cmdline": {"help": "kernel command line (default: nitro-cli's for the arch)"},
    "init": {"help": "init binary (nitro-cli blobs: init)"},
    "nsm_ko": {"help": "NSM driver (default: nsm.ko next to --init)"},
    "arch": {"default": "x86_64", "choices": ("x86_64", "aarch64")},
    "name": {"help": "image name (default: the manifest's name)"},
    "version": {"help": "image version (default: the manifest's version)"},
    "signing_certificate": {"help": "PEM certificate to sign the image with"},
    "private_key": {"help": "PEM ECDSA private key of the signing certificate"},
}


def _build(args: argparse.Namespace) -> int:
    """build a reproducible EIF from an app directory (nitro-cli layout)

    Build a byte-reproducible Enclave Image File from an app directory with an enclave.json
    manifest. Without --kernel/--init a fixed emulator stand-in is used.
    """
    from enclavekit.build import build_enclave

    options = {name: getattr(args, name) for name in _BUILD_OPTIONS}
    result = build_enclave(args.app_dir, args.output_file, **options)
    print(f"Enclave Image successfully created: {result.path}", file=sys.stderr)
    print_json({"Measurements": result.measurements.to_nitro_cli()})
    return 0


def _describe(args: argparse.Namespace) -> int:
    """describe an EIF like nitro-cli describe-eif

    Print the nitro-cli describe-eif JSON of an Enclave Image File.
    """
    from enclavekit.eif import describe_eif

    print_json(describe_eif(args.eif_path))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's commands to the top-level parser."""
    build = command(sub, "build-enclave", _build)
    build.add_argument("--app-dir", required=True, help="directory with enclave.json and the app")
    build.add_argument("--output-file", required=True, help="where to write the .eif")
    for name, spec in _BUILD_OPTIONS.items():
        build.add_argument("--" + name.replace("_", "-"), **spec)

    describe = command(sub, "describe-eif", _describe)
    describe.add_argument("--eif-path", required=True, help="the .eif file")
