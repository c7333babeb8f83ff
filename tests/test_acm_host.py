"""ACM for Nitro Enclaves set-up A on the parent, up to the enclave: the `nginx` package with
AL2023's stock layout takes AWS's documented edits unchanged (the AL2023 `nginx-conf.sh` sed
lines and its openssl.d engine section) and serves TLS on 443 with libp11's engine loaded from
`/etc/pki/tls/openssl.cnf`; acm.yaml errors are one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from host_support import booted, console

from local_backend.host import acm_config, control

ROOT = Path(__file__).resolve().parent.parent
# The nginx.conf and OpenSSL lines of AWS's AL2023 script, verbatim (aws/aws-nitro-enclaves-acm
# 456d6a0, cdk/src/assets/user-data-scripts/AL2023/nginx-conf.sh).
AWS_NGINX_EDITS = (ROOT / "tests" / "fixtures" / "acm" / "aws-nginx-edits.sh").read_text()


def test_acm_yaml_errors_are_one_line_naming_the_key() -> None:
    example = (ROOT / "local_backend/host/data/aws-nitro-enclaves-acm/acm.example.yaml").read_text()
    cfg = acm_config.parse(example)
    assert cfg.enclave.cpu_count == 2 and cfg.enclave.memory_mib == 256
    assert cfg.enclave.p11kit_port == 9999 and cfg.enclave.rpc_port == 10000
    assert cfg.options.force_start is True and cfg.options.sync_interval_secs == 600
    tok = cfg.tokens[0]
    assert tok.label == "nginx-acm-token" and tok.source.kind == "Acm"
    assert tok.target == acm_config.Target("/etc/pki/nginx/nginx-acm.conf", user="nginx")
    assert tok.refresh_interval_secs == 43200
    cases = {
        example.replace("cpu_count: 2", "cpu_count: two"): (
            'enclave.cpu_count: invalid type: string "two", expected u64'
        ),
        example.replace("  memory_mib: 256\n", ""): "enclave: missing field `memory_mib`",
        example.replace("      Acm:\n", "      Acme:\n"): (
            "tokens[0].source: unknown variant `Acme`, expected one of `Acm`, `S3`, `FileDb`"
        ),
        example.replace("      NginxStanza:\n", "      Nginx:\n"): (
            "tokens[0].target: unknown variant `Nginx`, expected one of `Conf`, `NginxStanza`"
        ),
        example.replace("nginx_force_start: true", "nginx_force_start: yes please"): (
            'options.force_start: invalid type: string "yes please", expected a boolean'
        ),
        example + "log:\n  level: Loud\n": (
            "log.level: unknown variant `Loud`, expected one of `Error`, `Warn`, `Info`, "
            "`Debug`, `Trace`"
        ),
        "enclave: [\n": "YAML syntax error at line 2 column 1",
    }
    for text, want in cases.items():
        with pytest.raises(acm_config.ConfigError) as err:
            acm_config.parse(text)
        message = str(err.value)
        assert message.startswith("/etc/nitro_enclaves/acm.yaml: ") and want in message, message
        assert "\n" not in message


@pytest.mark.slow
def test_stock_nginx_takes_aws_edits_and_loads_the_pkcs11_engine(tmp_path: Path) -> None:
    script = (
        "#!/bin/bash\nset -euxo pipefail\ndnf install nginx openssl-pkcs11 -y\n"
        "cp /etc/nginx/nginx.conf /root/nginx.conf.stock\n"
        + AWS_NGINX_EDITS
        + "mkdir -p /etc/pki/nginx/private\n"
        "export OPENSSL_CONF=/etc/pki/tls/openssl.cnf\n"
        "openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost -days 1 "
        "-keyout /etc/pki/nginx/private/k.pem -out /etc/pki/nginx/c.pem\n"
        "printf 'ssl_certificate_key /etc/pki/nginx/private/k.pem;\\n"
        "ssl_certificate /etc/pki/nginx/c.pem;\\n' > /etc/pki/nginx/nginx-acm.conf\n"
        "nginx -t\n"
        "openssl engine -t pkcs11\n"
        "systemctl start nginx || { journalctl -u nginx; exit 1; }\n"
        "curl -s http://localhost/ | head -3\ncurl -sk https://localhost/ | head -3\n"
        "echo | openssl s_client -connect localhost:443 2>/dev/null | grep Protocol\n"
        "id nginx\n"
    )
    with booted(tmp_path, script) as (layout, host):
        out = console(layout)
        assert control.boot_error(host) is None, out[-4000:]
        conf = layout.inside("/etc/nginx/nginx.conf").read_text()
        stock = layout.inside("/root/nginx.conf.stock").read_text()
        assert "ssl_engine pkcs11;" not in stock and "#        listen       443 ssl" in stock
        assert "pid /run/nginx.pid;\nssl_engine pkcs11;\n" in conf
        assert "\n        listen       443 ssl http2;" in conf
        assert 'include "/etc/pki/nginx/nginx-acm.conf";' in conf
        assert "ssl_protocols TLSv1.2;" in conf
        assert "syntax is ok" in out and "test is successful" in out, out[-3000:]
        assert "(pkcs11) pkcs11 engine" in out and "[ available ]" in out, out[-3000:]
        assert "Welcome to nginx!" in out and "TLSv1.2" in out, out[-3000:]
        assert "uid=" in out and "(nginx)" in out
        workers = control.host_exec(layout, ["ps", "-o", "user=,args=", "-C", "nginx"])
        assert "nginx: worker process" in workers.stdout, workers


def test_the_renewal_verdict() -> None:
    """verify's `renewal` judgement: it passes only when the renewed certificate was served
    and no request failed or got another certificate."""
    from local_backend.verify import Request, judge_renewal

    old, new = b"old", b"new"
    clean = [Request(-0.5, old, None), Request(1.0, old, None), Request(2.0, new, None)]
    ok, detail = judge_renewal(clean, old, new, 65, "")
    assert ok and "from +2.0 s" in detail and "none failed" in detail
    gap = [*clean[:2], Request(1.5, None, "ConnectionResetError: reset"), clean[2]]
    ok, detail = judge_renewal(gap, old, new, 65, "")
    assert not ok and detail.startswith("1 of 4 HTTPS requests failed") and "reset" in detail
    ok, detail = judge_renewal(clean[:2], old, new, 65, "sync_interval_secs 600")
    assert not ok and detail.startswith("the renewed certificate was not served within 65 s")
    ok, detail = judge_renewal([*clean, Request(3.0, b"x", None)], old, new, 65, "")
    assert not ok and "neither the old nor new" in detail
