"""Fast checks of the host's parts without booting a host: user data formats, unit files,
the allocator's rules and messages, IMDS, security-group forwarding."""

from __future__ import annotations

import gzip
import http.client
import socket
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest

from enclavekit.errors import InvalidInput
from local_backend.host import cloudinit, imds, nitro, systemd
from local_backend.host.boot import forwarded_ports


def test_user_data_formats() -> None:
    assert [p.kind for p in cloudinit.parse(b"#!/bin/bash\necho hi\n")] == ["script"]
    assert [p.kind for p in cloudinit.parse(b"#cloud-config\nruncmd: [ls]\n")] == ["cloud-config"]
    assert [p.kind for p in cloudinit.parse(gzip.compress(b"#!/bin/sh\ntrue\n"))] == ["script"]
    assert [p.kind for p in cloudinit.parse(b"echo not a script\n")] == ["unhandled"]
    msg = MIMEMultipart()
    msg.attach(MIMEText("#cloud-config\npackages: [jq]\n", "cloud-config"))
    part = MIMEText("#!/bin/bash\necho two\n", "x-shellscript")
    part.add_header("Content-Disposition", "attachment", filename="second.sh")
    msg.attach(part)
    parts = cloudinit.parse(msg.as_bytes())
    assert [(p.kind, p.filename) for p in parts] == [
        ("cloud-config", "part-001"),
        ("script", "second.sh"),
    ]
    assert parts[1].content == b"#!/bin/bash\necho two\n"


def test_runcmd_script_quotes_argv_entries() -> None:
    script = cloudinit._runcmd_script(["echo a b > /tmp/x", ["touch", "with space"]])
    assert script == "#!/bin/sh\necho a b > /tmp/x\ntouch 'with space'\n"


def test_systemd_command_lines_follow_systemd_rules() -> None:
    env = {"REGION": "us-east-1", "OPTS": "-a -b"}
    assert systemd.split_command('/bin/echo "a b" c\\ d', env) == ["/bin/echo", "a b", "c d"]
    assert systemd.split_command("/bin/x ${REGION} $OPTS", env) == [
        "/bin/x",
        "us-east-1",
        "-a",
        "-b",
    ]
    line = '/bin/bash -ce "R=$(echo x); echo kms.$${REGION}.amazonaws.com $R"'
    assert systemd.split_command(line, env) == [
        "/bin/bash",
        "-ce",
        "R=$(echo x); echo kms.${REGION}.amazonaws.com $R",
    ]
    unit = systemd.parse_unit(
        "[Service]\nExecStartPre=/bin/a\nExecStartPre=/bin/b\nEnvironment=A=1\n"
        "Environment=\nEnvironment=B=2\nExecStart=/bin/long \\\n  --flag\n"
    )
    assert unit["Service"]["ExecStartPre"] == ["/bin/a", "/bin/b"]
    assert unit["Service"]["Environment"] == ["B=2"]  # an empty assignment resets the list
    assert unit["Service"]["ExecStart"] == ["/bin/long  --flag"]


STOCK = "---\n# Enclave configuration file.\nmemory_mib: {m}\n#\ncpu_count: {c}\n"


@pytest.mark.parametrize(
    ("type_name", "text", "message"),
    [
        (
            "m5.xlarge",
            STOCK.format(m=512, c=3),
            "Error: The CPU count is not multiple of 2 (threads per core).",
        ),
        (
            "m5.xlarge",
            STOCK.format(m=512, c=4),
            "Error: Failed to find suitable CPUs for the Nitro Enclaves CPU pool after checking "
            "all NUMA nodes.",
        ),
        (
            "m5.xlarge",
            STOCK.format(m=512, c=8),
            "Error: Provided CPU count is higher than available CPUs - 4.",
        ),
        (
            "m5.xlarge",
            STOCK.format(m=15872, c=2),
            "Error: Failed to configure entire amount of requested memory. This indicates "
            "insufficient system resources.",
        ),
        (
            "m5.xlarge",
            "memory_mib: 512\ncpu_count: 2\n",  # no `---`: the script reads nothing
            "Error: Config error: missing memory reservation (`memory_mib`).",
        ),
        (
            "m5.xlarge",
            "---\nmemory_mib: 512\ncpu_count: 2\ncpu_pool: 1,3\n",
            "Error: Config error: `cpu_count` conflicts with `cpu_pool`.",
        ),
        (
            "m5.xlarge",
            "---\nmemory_mib: 512\ncpus: 2\n",
            "Error: Error in /etc/nitro_enclaves/allocator.yaml:3 - unexpected: cpus",
        ),
    ],
)
def test_allocator_refuses_what_the_real_one_refuses(
    type_name: str, text: str, message: str
) -> None:
    with pytest.raises(nitro.AllocatorError) as err:
        nitro.allocate(nitro.parse_allocator_config(text), type_name, True)
    assert str(err.value) == message


def test_allocator_accepts_the_largest_pool_the_type_gives(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = nitro.parse_allocator_config(STOCK.format(m=15360, c=2))
    assert nitro.allocate(config, "m5.xlarge", True) == {
        "cpu_count": 2,
        "cpu_ids": [1, 3],
        "memory_mib": 15360,
    }
    assert capsys.readouterr().out.endswith(
        "Successfully allocated Nitro Enclaves resources: 15360 MiB, 2 CPUs\n"
    )
    with pytest.raises(nitro.AllocatorError, match="CPU pool file is missing"):
        nitro.allocate(config, "m5.xlarge", False)  # EnclaveOptions not enabled: no driver


def _imds(tokens: str) -> tuple[http.client.HTTPConnection, object]:
    listener = socket.create_server(("127.0.0.1", 0))
    info = {
        "instance_id": "i-0abc",
        "region": "eu-west-1",
        "instance_type": "c5.xlarge",
        "user_data": "IyEvYmluL3NoCg==",
        "metadata_options": {"HttpTokens": tokens},
        "endpoint": "http://localhost:1",
        "role_arns": [],
    }
    server = imds.serve(listener, info)
    return http.client.HTTPConnection("127.0.0.1", listener.getsockname()[1], timeout=5), server


def _get(
    conn: http.client.HTTPConnection,
    path: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
) -> tuple[int, str]:
    conn.request(method, path, headers=headers or {})
    r = conn.getresponse()
    return r.status, r.read().decode()


def test_imds_v2_tokens_and_v1_refused_when_required() -> None:
    conn, server = _imds("required")
    try:
        assert _get(conn, "/latest/meta-data/instance-id")[0] == 401  # IMDSv1
        assert _get(conn, "/latest/api/token", method="PUT")[0] == 400  # no TTL header
        status, token = _get(
            conn, "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"}, "PUT"
        )
        assert status == 200
        auth = {"X-aws-ec2-metadata-token": token}
        assert _get(conn, "/latest/meta-data/instance-id", auth) == (200, "i-0abc")
        assert _get(conn, "/latest/meta-data/placement/region", auth) == (200, "eu-west-1")
        assert _get(conn, "/latest/user-data", auth) == (200, "#!/bin/sh\n")
        bad = {"X-aws-ec2-metadata-token": "forged"}
        assert _get(conn, "/latest/meta-data/instance-id", bad)[0] == 401
    finally:
        server.shutdown()  # type: ignore[attr-defined]
    conn, server = _imds("optional")
    try:
        assert _get(conn, "/latest/meta-data/instance-type") == (200, "c5.xlarge")
    finally:
        server.shutdown()  # type: ignore[attr-defined]


def test_only_listed_tcp_ports_are_forwarded() -> None:
    ports, notes = forwarded_ports(
        [
            {"protocol": "tcp", "from": 443, "to": 443},
            {"protocol": "udp", "from": 53, "to": 53},
            {"protocol": "tcp", "from": 8000, "to": 8001},
            {"protocol": "-1", "from": None, "to": None},
            {"protocol": "tcp", "from": 1024, "to": 65535},
        ]
    )
    assert ports == [443, 8000, 8001]
    assert len(notes) == 2


def _namespaces_with_refused(refused: int) -> tuple[dict[str, bool], list[str]]:
    """enter_namespaces in a forked child whose kernel refuses the `refused` flags."""
    import errno
    import json
    import os

    from local_backend.emulator import isolation as iso
    from local_backend.host import sandbox

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            real = iso.unshare

            def unshare(flags: int) -> None:
                if flags & refused:
                    raise iso._Refused(errno.EPERM, "unshare: Operation not permitted")
                real(flags)

            iso.unshare = unshare  # type: ignore[assignment]
            warnings: list[str] = []
            ns = sandbox.enter_namespaces(warnings.append)
            os.write(w, json.dumps([ns.__dict__, warnings]).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    flags, warnings = json.loads(data)
    return flags, warnings


def test_refused_namespaces_are_one_line_warnings_and_no_mount_namespace_no_boot() -> None:
    from local_backend.emulator import isolation as iso

    flags, warnings = _namespaces_with_refused(iso.CLONE_NEWNET | iso.CLONE_NEWPID)
    assert flags == {"mount": True, "net": False, "pid": False, "uts": True}
    assert warnings == [
        "network namespace not permitted (unshare: Operation not permitted): the host shares the "
        "machine's network and has no IMDS address",
        "PID namespace not permitted (unshare: Operation not permitted): the host sees "
        "machine processes",
    ]
    flags, warnings = _namespaces_with_refused(iso.CLONE_NEWNS)
    assert flags["mount"] is False  # the launcher then refuses to run the user data at all
    assert warnings == ["mount namespace not permitted (unshare: Operation not permitted)"]


def test_socat_refuses_an_address_it_does_not_know(capsys: pytest.CaptureFixture[str]) -> None:
    """socat's bad address is bad input (InvalidInput, in the errors tree): one line, status 1."""
    from local_backend.host import socat

    assert socat.main(["UDP-LISTEN:9", "TCP:127.0.0.1:9"]) == 1
    assert capsys.readouterr().err == "socat: expected a listening address, found UDP-LISTEN\n"
    with pytest.raises(InvalidInput, match="expected a connecting address, found UNIX-CONNECT"):
        socat._connector("UNIX-CONNECT", ["/x"])  # (main would first listen on 0.0.0.0)
