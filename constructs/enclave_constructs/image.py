"""EnclaveImage: what an enclave runs, and the measurements that KMS policies bind to.

An image is a value (like `ecs.ContainerImage`): its measurements are known the moment it is
created, so key policies can be written from them; the EIF file, when there is one, becomes an
S3 asset only when a host binds the image into a stack.
"""

from __future__ import annotations

import atexit
import json
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk import aws_s3_assets as s3_assets

from constructs import Construct
from enclavekit import build as ek_build
from enclavekit import eif as ek_eif
from enclavekit.errors import InvalidInput
from enclavekit.pcr import Measurements

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_DEBUG_HINT = (
    "use EnclaveImage.debug(..., i_understand_debug_images_have_no_attestation=True) "
    "to run a debug image on purpose"
)


@dataclass(frozen=True)
class ImageAsset:
    """Where a bound image's EIF lives in S3 (CloudFormation values, possibly intrinsics)."""

    bucket: str
    key: str
    asset: s3_assets.Asset


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(
            f"enclave image name must be 1-128 of [A-Za-z0-9._+-] starting with a letter or "
            f"digit, got {name!r}"
        )
    return name


def _refuse_debug(measurements: Measurements, source: str) -> Measurements:
    if measurements.is_debug:
        raise InvalidInput(
            f"{source} has PCR0 all zeros (a debug-mode measurement, which attests nothing); "
            f"expected the measurements of a real image; {_DEBUG_HINT}"
        )
    return measurements


class EnclaveImage:
    """An enclave image with known measurements; build one with a `from_*` method."""

    def __init__(
        self,
        *,
        name: str,
        measurements: Measurements,
        eif_file: Path | None = None,
        host_path: str | None = None,
        debug: bool = False,
    ) -> None:
        """Use the `from_*` factories or `debug`; this constructor trusts its arguments."""
        self.name = _check_name(name)
        self.measurements = measurements
        self.eif_file = eif_file
        self.host_path = host_path
        self.is_debug = debug

    def __repr__(self) -> str:
        return f"EnclaveImage({self.name!r}, PCR0={self.measurements.image_sha384[:16]}...)"

    # ----------------------------------------------------------------- factories
    @classmethod
    def from_eif(cls, path: str | Path, *, name: str | None = None) -> EnclaveImage:
        """An EIF file already built (by enclavekit or nitro-cli), measured here in Python."""
        eif_path = Path(path)
        if not eif_path.is_file():
            raise InvalidInput(
                f"enclave image file must be an existing EIF file, got {str(path)!r}"
            )
        image = ek_eif.read_eif(eif_path)
        if not image.crc_ok:
            raise InvalidInput(f"enclave image file {str(path)!r} fails its CRC check")
        meta_name = (image.metadata or {}).get("ImageName") if image.metadata else None
        default = meta_name if isinstance(meta_name, str) and _NAME.match(meta_name) else None
        return cls(
            name=name or default or eif_path.stem,
            measurements=_refuse_debug(image.measurements, f"EIF {str(path)!r}"),
            eif_file=eif_path.resolve(),
        )

    @classmethod
    def from_nitro_cli_json(
        cls,
        source: str | Path | Mapping[str, Any],
        *,
        name: str = "enclave",
        host_path: str | None = None,
    ) -> EnclaveImage:
        """Measurements printed by `nitro-cli build-enclave` / `describe-eif` (a file or dict).

        The EIF itself is not shipped: pass `host_path` when it is already on the host (for
        example baked into the AMI) so the host can run it.
        """
        if isinstance(source, Mapping):
            obj: Any = source
            where = "nitro-cli JSON"
        else:
            p = Path(source)
            try:
                obj = json.loads(p.read_text())
            except FileNotFoundError:
                raise InvalidInput(
                    f"nitro-cli JSON must be an existing file, got {str(source)!r}"
                ) from None
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InvalidInput(
                    f"nitro-cli JSON {str(source)!r} must be JSON, found invalid text ({exc})"
                ) from None
            where = f"nitro-cli JSON {str(source)!r}"
        m = Measurements.from_nitro_cli_json(obj)
        return cls(name=name, measurements=_refuse_debug(m, where), host_path=host_path)

    @classmethod
    def from_directory(
        cls, app_dir: str | Path, *, name: str | None = None, build_dir: str | Path | None = None
    ) -> EnclaveImage:
        """An app directory (with its enclave.json) built reproducibly into an EIF asset."""
        app = Path(app_dir)
        manifest = ek_build.load_manifest(app)
        out_dir = Path(build_dir) if build_dir is not None else _scratch_dir()
        out_dir.mkdir(parents=True, exist_ok=True)
        result = ek_build.build_enclave(app, out_dir / f"{manifest.name}.eif")
        return cls(
            name=name or manifest.name,
            measurements=_refuse_debug(result.measurements, f"image built from {str(app)!r}"),
            eif_file=result.path.resolve(),
        )

    @classmethod
    def from_measurements(
        cls,
        *,
        pcr0: str,
        pcr1: str,
        pcr2: str,
        pcr8: str | None = None,
        name: str = "enclave",
        host_path: str | None = None,
    ) -> EnclaveImage:
        """Explicit PCRs (96 hex digits each), for an image built elsewhere."""
        m = Measurements.from_hex(pcr0=pcr0, pcr1=pcr1, pcr2=pcr2, pcr8=pcr8)
        return cls(
            name=name, measurements=_refuse_debug(m, "explicit measurements"), host_path=host_path
        )

    @classmethod
    def debug(
        cls,
        image: EnclaveImage | None = None,
        *,
        i_understand_debug_images_have_no_attestation: bool = False,
        name: str | None = None,
    ) -> EnclaveImage:
        """`image` run in debug mode: console on, PCRs all zero, so nothing can attest it.

        Refused unless the caller says so in so many words; keys are never bound to it.
        """
        if i_understand_debug_images_have_no_attestation is not True:
            raise InvalidInput(
                "debug enclave images attest all-zero PCRs, so any debug enclave can claim to "
                "be them; expected i_understand_debug_images_have_no_attestation=True, got "
                f"{i_understand_debug_images_have_no_attestation!r}"
            )
        return cls(
            name=name or (image.name if image else "debug"),
            measurements=Measurements.debug(),
            eif_file=image.eif_file if image else None,
            host_path=image.host_path if image else None,
            debug=True,
        )

    # ----------------------------------------------------------------- binding
    def bind(self, scope: Construct, id: str = "ImageAsset") -> ImageAsset | None:
        """Ship the EIF as an S3 asset under `scope` (None when the image has no file here)."""
        if self.eif_file is None:
            return None
        asset = s3_assets.Asset(scope, id, path=str(self.eif_file))
        return ImageAsset(bucket=asset.s3_bucket_name, key=asset.s3_object_key, asset=asset)

    @property
    def slug(self) -> str:
        """The name as used for files and systemd units on the host."""
        return re.sub(r"[^a-z0-9-]+", "-", self.name.lower()).strip("-") or "enclave"


_SCRATCH: list[Path] = []


def _scratch_dir() -> Path:
    """A per-process build directory, removed at exit (assets are copied into cdk.out)."""
    if not _SCRATCH:
        d = Path(tempfile.mkdtemp(prefix="enclavekit-eif-"))
        _SCRATCH.append(d)
        atexit.register(shutil.rmtree, d, True)
    path = Path(tempfile.mkdtemp(dir=_SCRATCH[0]))
    return path
