#!/usr/bin/env bash
# Idempotent set-up: a project-local Python venv and a project-local Node.js 22 + CDK CLI.
# Nothing is installed outside this folder; re-running is cheap when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

nstamp=node_modules/.enclavekit-installed
if [ ! -x node_modules/node/bin/node ] || [ ! -f "$nstamp" ] || [ package-lock.json -nt "$nstamp" ]; then
  echo "==> Node.js 22 + AWS CDK CLI (node_modules): installing from package-lock.json"
  npm ci --no-audit --no-fund --loglevel=error
  touch "$nstamp"
else
  echo "==> Node.js 22 + AWS CDK CLI (node_modules): up to date"
fi
# npm may skip a dependency's install scripts; check what they should have done.
[ -x node_modules/@microsoft/sarif-multitool-linux/Sarif.Multitool ] || chmod u+x node_modules/@microsoft/sarif-multitool-linux/Sarif.Multitool
"$root/node_modules/node/bin/node" --version | grep -q '^v22\.' || { echo "setup: node_modules/node is not Node.js 22" >&2; exit 1; }
export PATH="$root/node_modules/node/bin:$PATH"

py=${PYTHON:-python3}
stamp=.venv/.enclavekit-installed
if [ ! -x .venv/bin/python ] || [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements.lock -nt "$stamp" ]; then
  echo "==> Python environment (.venv): installing pinned packages"
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  # pip's own chatter (build-backend notices) goes to a log; it is shown only if pip fails.
  log=.venv/pip-install.log
  if ! { .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade "pip==26.3" \
         && .venv/bin/python -m pip install --quiet --disable-pip-version-check \
              -c requirements.lock -e ".[test]"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup: pip install failed (log above, also in $log)" >&2
    exit 1
  fi
  .venv/bin/python -c "import enclavekit, aws_cdk, moto, cbor2, cryptography"
  touch "$stamp"
else
  echo "==> Python environment (.venv): up to date"
fi


# The wheelhouse: the parent agent's pinned boto3 tree as wheels from PyPI, the local package
# index `pip install` resolves from inside instance hosts (they have no route out).
wstamp=.wheelhouse/.enclavekit-fetched
if [ ! -f "$wstamp" ] || [ requirements.lock -nt "$wstamp" ]; then
  echo "==> Wheelhouse (.wheelhouse): fetching the parent agent's pinned wheels"
  mkdir -p .wheelhouse
  .venv/bin/python -c "from enclavekit.agent_bundle import runtime_requirements as r; print('\n'.join(r()))" \
    > .wheelhouse/requirements.txt
  if ! .venv/bin/python -m pip download --quiet --disable-pip-version-check --no-deps \
         --only-binary=:all: -d .wheelhouse -r .wheelhouse/requirements.txt >.wheelhouse/download.log 2>&1; then
    cat .wheelhouse/download.log >&2
    echo "setup: pip download of the wheelhouse failed (log above)" >&2
    exit 1
  fi
  touch "$wstamp"
else
  echo "==> Wheelhouse (.wheelhouse): up to date"
fi

# Set-up A's parts: Debian's nginx, p11-kit, libp11 and SoftHSMv2 unpacked into .system/ (or
# the tree ENCLAVEKIT_SYSTEM_ROOT names), then ACM's enclave image built from them (gcc) —
# here, with progress, rather than inside the first certificate association of a deploy.
if [ -z "${ENCLAVEKIT_SYSTEM_ROOT:-}" ]; then
  bash scripts/system-packages.sh
fi
echo "==> ACM enclave image (.system/p11ne): build or reuse"
.venv/bin/python -c "from local_backend.host.catalog_acm import ensure_acm_image as e; print('    ' + str(e()))"

# The agent venv of our hosts' user data (`python3.11 -m venv`, the pinned `pip install`), run
# once in a host and kept for every host to replay (local_backend.host.prepared); without it
# the hosts run both for real (correct, ~10 s of CPU each).
echo "==> Host prepared results (.enclavekit/host-prepared): build or reuse"
.venv/bin/python -m local_backend.host.prepared \
  || echo "setup: no prepared results; hosts run venv and pip for real" >&2
