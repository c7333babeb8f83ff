"""enclavekit.transport: NSM transports (ioctl struct, emulated socket) and vsock transports."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from enclavekit import nsm
from enclavekit.errors import EmulatorError, NsmMessageError
from enclavekit.transport import (
    EmulatedVsock,
    IoctlNsm,
    SocketNsm,
    nsm_request,
    open_nsm,
    open_vsock,
    recv_frame,
    send_frame,
)

INPUT_TOO_LARGE = nsm.encode_response(nsm.ErrorResponse(nsm.ErrorCode.InputTooLarge))


class _EchoNsm:
    """A framed Unix-socket peer that answers DescribePCR with a fixed PCR (test double of the
    far side only; the transport under test is real)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.seen: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            while True:
                try:
                    raw = recv_frame(conn, 1 << 16)
                except (ConnectionError, OSError):
                    return
                self.seen.append(raw)
                send_frame(
                    conn, nsm.encode_response(nsm.DescribePCRResponse(lock=True, data=bytes(48)))
                )

    def close(self) -> None:
        self.sock.close()


def test_socket_nsm_frames_requests_and_decodes_responses(tmp_path: Path) -> None:
    peer = _EchoNsm(tmp_path / "nsm")
    try:
        transport = open_nsm(str(tmp_path / "nsm"))
        assert isinstance(transport, SocketNsm)
        for _ in range(3):  # one connection, many round trips
            resp = nsm_request(transport, nsm.DescribePCR(index=0))
            assert resp == nsm.DescribePCRResponse(lock=True, data=bytes(48))
        assert peer.seen == [bytes.fromhex("a16b4465736372696265504352a165696e64657800")] * 3
        # Over the 0x1000 request cap: answered locally like the Rust client, never sent.
        assert transport.call(b"\0" * 0x1001) == INPUT_TOO_LARGE
        assert len(peer.seen) == 3
        transport.close()
    finally:
        peer.close()


def test_frame_length_over_limit_is_a_message_error() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall((0x4000).to_bytes(4, "big"))
        with pytest.raises(NsmMessageError, match="at most 12288"):
            recv_frame(b, 0x3000)


def test_open_nsm_refuses_what_is_not_a_device_or_socket(tmp_path: Path) -> None:
    with pytest.raises(EmulatorError, match="found nothing"):
        open_nsm(str(tmp_path / "absent"))
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(EmulatorError, match="found file mode -"):
        open_nsm(str(tmp_path / "file"))


def test_ioctl_nsm_uses_the_raw_ioctl_and_maps_failure() -> None:
    # /dev/null is a character device without the NSM ioctl: the 32-byte struct goes to the
    # kernel, which answers ENOTTY -> a one-line EmulatorError naming the device.
    transport = open_nsm("/dev/null")
    assert isinstance(transport, IoctlNsm)
    try:
        with pytest.raises(EmulatorError, match="NSM ioctl on /dev/null failed"):
            transport.call(nsm.encode_request(nsm.DescribeNSM()))
        assert transport.call(b"\0" * 0x1001) == INPUT_TOO_LARGE
    finally:
        transport.close()


def _echo_once(server: socket.socket) -> None:
    conn, _ = server.accept()
    with conn:
        conn.sendall(conn.recv(100)[::-1])


@pytest.mark.parametrize("deep", [False, True])
def test_emulated_vsock_both_ways(tmp_path: Path, deep: bool) -> None:
    # deep: a root whose socket paths are longer than sun_path (reached via /proc/self/fd).
    root = tmp_path / ("d" * 120 if deep else "v")
    parent, enclave = EmulatedVsock(root, 3), EmulatedVsock(root, 16)
    assert len(str(parent.path(16, 5005))) > 108 if deep else True
    for server_side, client_side, cid in ((enclave, parent, 16), (parent, enclave, 3)):
        server = server_side.listen(5005)
        with server:
            t = threading.Thread(target=_echo_once, args=(server,))
            t.start()
            with client_side.connect(cid, 5005) as c:
                c.sendall(b"ping")
                assert c.recv(100) == b"gnip"
            t.join()


def test_emulated_vsock_refusal_stale_socket_and_port_in_use(tmp_path: Path) -> None:
    v = EmulatedVsock(tmp_path, 3)
    with pytest.raises(ConnectionRefusedError):
        v.connect(16, 5005)
    dead = v.listen(7000)
    dead.close()  # leaves a stale socket file behind, like a crashed listener
    assert v.path(3, 7000).exists()
    live = v.listen(7000)
    with live, pytest.raises(OSError, match="in use"):
        v.listen(7000)
    with pytest.raises(ValueError, match="vsock port"):
        v.connect(3, -1)


def test_open_vsock_picks_the_emulator_mount(tmp_path: Path) -> None:
    (tmp_path / "self").write_text("17\n")
    transport = open_vsock(str(tmp_path))
    assert isinstance(transport, EmulatedVsock) and transport.own_cid == 17
    (tmp_path / "self").write_text("seventeen")
    with pytest.raises(EmulatorError, match="decimal CID"):
        open_vsock(str(tmp_path))
    if not os.path.exists("/dev/vsock"):
        with pytest.raises(EmulatorError, match="found neither"):
            open_vsock(str(tmp_path / "none"))
