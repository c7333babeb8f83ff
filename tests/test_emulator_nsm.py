"""The emulated NSM (served by the monitor): PCR rules, errors and signed documents."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from enclavekit import attestation, nsm, pcr
from enclavekit.transport import SocketNsm, nsm_request
from local_backend.emulator.monitor import make_signer
from local_backend.emulator.nsm_server import BootMeasurements, NsmDevice, NsmServer

IID = "i-0123456789abcdef0"
MODULE_ID = f"{IID}-enc0191cceb4289903f"
ROLE = "arn:aws:iam::123456789012:role/enclave-parent"
MEAS = pcr.Measurements(pcr0=b"\x01" * 48, pcr1=b"\x02" * 48, pcr2=b"\x03" * 48, pcr8=b"\x08" * 48)
E = nsm.ErrorCode


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nsm-state")


@pytest.fixture(scope="module")
def signer(state: Path):  # noqa: ANN201
    return make_signer(state, MODULE_ID)


def device(signer, debug: bool = False, role: str | None = ROLE) -> NsmDevice:  # noqa: ANN001
    return NsmDevice(MODULE_ID, BootMeasurements(MEAS, role, IID, debug), signer)


def test_boot_pcrs_are_locked_and_come_from_eif_role_and_instance(signer) -> None:  # noqa: ANN001
    d = device(signer)
    expect = {
        0: MEAS.pcr0,
        1: MEAS.pcr1,
        2: MEAS.pcr2,
        3: pcr.pcr3_of_role_arn(ROLE),
        4: pcr.pcr4_of_instance_id(IID),
        8: MEAS.pcr8,
    }
    for i in range(32):
        r = d.handle(nsm.DescribePCR(index=i))
        assert r.lock is (i < 16)
        assert r.data == expect.get(i, bytes(48))
    assert device(signer, role=None).handle(nsm.DescribePCR(index=3)).data == bytes(48)
    info = d.handle(nsm.DescribeNSM())
    assert (info.module_id, info.max_pcrs, info.digest) == (MODULE_ID, 32, "SHA384")
    assert info.locked_pcrs == tuple(range(16))


def test_extend_lock_and_errors_as_the_real_nsm(signer) -> None:  # noqa: ANN001
    d = device(signer)
    r = d.handle(nsm.ExtendPCR(index=16, data=b"abc"))
    assert r.data == pcr.extend(bytes(48), b"abc")
    assert d.handle(nsm.ExtendPCR(index=0, data=b"x")) == nsm.ErrorResponse(E.ReadOnlyIndex)
    assert d.handle(nsm.ExtendPCR(index=32, data=b"x")) == nsm.ErrorResponse(E.InvalidIndex)
    assert d.handle(nsm.DescribePCR(index=32)) == nsm.ErrorResponse(E.InvalidIndex)
    assert d.handle(nsm.LockPCR(index=3)) == nsm.ErrorResponse(E.ReadOnlyIndex)
    assert d.handle(nsm.LockPCR(index=16)) == nsm.LockPCRResponse()
    assert d.handle(nsm.ExtendPCR(index=16, data=b"x")) == nsm.ErrorResponse(E.ReadOnlyIndex)
    assert d.handle(nsm.LockPCRs(range=33)) == nsm.ErrorResponse(E.InvalidIndex)
    assert d.handle(nsm.LockPCRs(range=32)) == nsm.LockPCRsResponse()
    assert d.handle(nsm.DescribeNSM()).locked_pcrs == tuple(range(32))
    assert len(d.handle(nsm.GetRandom()).random) == 256
    # Undecodable bytes and oversize requests, at the wire level.
    assert nsm.decode_response(d.handle_bytes(b"\xff\x00")) == nsm.ErrorResponse(E.InvalidArgument)
    assert nsm.decode_response(d.handle_bytes(b"\0" * 0x1001)) == nsm.ErrorResponse(E.InputTooLarge)


def test_attestation_verifies_locally_and_enforces_field_sizes(signer, state: Path) -> None:  # noqa: ANN001
    d = device(signer)
    d.handle(nsm.ExtendPCR(index=20, data=b"boot-step"))
    r = d.handle(nsm.Attestation(user_data=b"u" * 1024, nonce=b"n" * 16, public_key=b"k"))
    doc = attestation.verify(r.document, attestation.TrustAnchor.local(state))
    assert doc.module_id == MODULE_ID and re.fullmatch(
        r"i-[0-9a-f]{17}-enc[0-9a-f]{16}", doc.module_id
    )
    assert sorted(doc.pcrs) == [*range(16), 20]  # 0-15 as real documents, plus the used one
    assert (doc.pcrs[0], doc.pcrs[8], doc.pcrs[3]) == (
        MEAS.pcr0,
        MEAS.pcr8,
        pcr.pcr3_of_role_arn(ROLE),
    )
    assert (doc.user_data, doc.nonce, doc.public_key) == (b"u" * 1024, b"n" * 16, b"k")
    with pytest.raises(attestation.AttestationError):
        attestation.verify(r.document, attestation.TrustAnchor.aws())
    too_big = d.handle(nsm.Attestation(user_data=b"u" * 1025))
    assert too_big == nsm.ErrorResponse(E.InputTooLarge)


def test_debug_mode_zeroes_image_pcrs_and_keeps_pcr3_pcr4(signer, state: Path) -> None:  # noqa: ANN001
    d = device(signer, debug=True)
    doc = attestation.verify(
        d.handle(nsm.Attestation()).document, attestation.TrustAnchor.local(state)
    )
    assert doc.is_debug
    for i in (0, 1, 2, 8):
        assert doc.pcrs[i] == bytes(48)
    assert doc.pcrs[3] == pcr.pcr3_of_role_arn(ROLE)
    assert doc.pcrs[4] == pcr.pcr4_of_instance_id(IID)


def test_served_over_the_device_socket(signer, tmp_path: Path) -> None:  # noqa: ANN001
    server = NsmServer(device(signer), tmp_path / "nsm.sock").start()
    try:
        client = SocketNsm(tmp_path / "nsm.sock")
        assert nsm_request(client, nsm.DescribePCR(index=4)).data == pcr.pcr4_of_instance_id(IID)
        assert nsm_request(client, nsm.ExtendPCR(index=1, data=b"x")) == nsm.ErrorResponse(
            E.ReadOnlyIndex
        )
        client.close()
    finally:
        server.stop()
    assert not (tmp_path / "nsm.sock").exists()
