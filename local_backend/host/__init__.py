"""The host sandbox: each EC2 instance of the local endpoint as a small Amazon Linux host.

AWS runs an instance's *user data* at first boot (cloud-init); nothing reads our Metadata. So
the local EC2 boots every instance that has user data into a sandboxed host of its own and runs
that user data there, as root, the way cloud-init does on Amazon Linux 2023:

- `layout`    where an instance's files live under the state dir (its persistent root, console)
- `rootfs`    the first-boot "AMI": an Amazon Linux /etc, the shims of the AL commands in /usr
- `sandbox`   namespaces (mount, PID, UTS, IPC, network) and the root the host sees
- `boot`      the launcher process: sandbox + IMDS + endpoint relay + port forwards, status
- `init`      PID 1 inside the host: cloud-init once, then reaps and stops services on shutdown
- `cloudinit` user data formats (`#!` scripts, MIME multipart, `#cloud-config`) and their run
- `catalog`   `dnf`/`yum`: the packages the host can install and what each provides
- `systemd`   `systemctl`/`journalctl` over unit files
- `imds`      the instance metadata service (IMDSv1/v2) at 169.254.169.254 inside the host
- `tools`     the entry point of every command the packages put in the host (nitro-cli, ...)
"""
