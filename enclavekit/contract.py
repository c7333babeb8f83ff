"""The contract between the parts: every value that crosses a boundary, defined once.

The constructs write a host description that the parent agent (real or emulated), the local
backend, verify, lint and the demo read; the parent and the enclave talk over vsock CIDs and
ports; the backend, `up`, verify and the pytest plugin share one state directory. Each of those
names and numbers lives here and nowhere else, so a change moves every side together.

Pure (stdlib only, vendored into enclave images with `transport` and `provisioning`): no
imports from the rest of enclavekit.
"""

from __future__ import annotations

from pathlib import Path

# ------------------------------------------------------------------ host description
# `Metadata[HOST_METADATA_KEY]` of an AWS::EC2::Instance / LaunchTemplate (constructs/spec.py
# renders it; docs/ARCHITECTURE.md "Host Metadata" lists its fields). The real user data writes
# the same dict, intrinsics resolved, to HOST_CONFIG_PATH for `enclavekit parent-agent`.
HOST_METADATA_KEY = "enclavekit:host"
HOST_METADATA_VERSION = 1
HOST_CONFIG_PATH = "/etc/enclavekit/host.json"
# The SSM value of an EnclaveSecret nobody has sealed yet (the agent skips it, `up` seals it).
UNSEALED = "enclavekit:unsealed"

# ------------------------------------------------------------------ vsock
PARENT_CID = 3  # the parent instance, as on EC2 (VMADDR_CID_PARENT)
DEFAULT_ENCLAVE_CID = 16  # a host's enclave CID unless its description says otherwise
CONTROL_PORT = 5005  # the enclave's provisioning listener (enclavekit.provisioning)
ENCLAVE_TLS_PORT = 8443  # the enclave's TLS listener, behind the host's service port
KMS_PROXY_PORT = 8000  # the parent's vsock-proxy to the region's KMS endpoint

# ------------------------------------------------------------------ local state directory
STATE_ENV = "ENCLAVEKIT_STATE_DIR"  # overrides DEFAULT_STATE_DIR where a command reads it
DEFAULT_STATE_DIR = Path(".enclavekit")
ENDPOINT_PORT = 4599  # the local endpoint's default port (local_backend.server, the CLI)
ENDPOINT_FILE = "endpoint.json"  # the running local endpoint (local_backend.server)
INSTANCES_DIR = "instances"  # one directory per emulated instance (local_backend.parent)
INSTANCE_FILE = "instance.json"  # what the instance boots: id, role, metadata, user data
PARENT_FILE = "parent.json"  # the parent agent's live state: booting/running/failed/stopped
ENCLAVES_DIR = "enclaves"  # the emulator's enclave slots under an (instance) state dir
VSOCK_DIR = "vsock"  # emulated vsock: one directory of Unix sockets per CID
