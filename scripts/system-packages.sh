#!/usr/bin/env bash
# Debian's nginx, p11-kit (server, client module), libp11 (OpenSSL's pkcs11 engine), SoftHSMv2
# and skopeo,
# fetched and unpacked into .system/ without root and without touching the machine's packages:
# apt-get with a project-local state and cache directory, `apt-get download`, `dpkg-deb -x`.
# Pinned by version below; idempotent (a stamp records what was unpacked).
#
# Needs a Debian 12 (bookworm) host with apt-get and dpkg-deb; the shared libraries these link
# against (libssl3, libp11-kit0, libffi8, libsqlite3 ...) come from the host. On another
# distribution, install the same programs from its packages and point ENCLAVEKIT_SYSTEM_ROOT at
# a tree laid out like .system/root (usr/sbin/nginx, usr/libexec/p11-kit/, usr/lib/<triplet>/).
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(
  "nginx=1.22.1-9+deb12u11"
  "nginx-common=1.22.1-9+deb12u11"
  "p11-kit=0.24.1-2"
  "p11-kit-modules=0.24.1-2"
  "libengine-pkcs11-openssl=0.4.12-0.1"
  "softhsm2=2.6.1-2.1"
  "softhsm2-common=2.6.1-2.1"
  "libsofthsm2=2.6.1-2.1"
  # skopeo: the OCI client the image registry's tests push and pull with (libgpgme11: its
  # one library a minimal host lacks)
  "skopeo=1.9.3+ds1-1+b10"
  "libgpgme11=1.18.0-3+b1"
)
sys=.system
stamp=$sys/root/.enclavekit-unpacked
want=$(printf '%s\n' "${PACKAGES[@]}")
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "==> system packages (.system): up to date"
  exit 0
fi
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || {
  echo "system-packages: expected apt-get and dpkg-deb (a Debian host); see the comment at the top of $0" >&2
  exit 2
}
echo "==> system packages (.system): fetching ${#PACKAGES[@]} Debian packages"
mkdir -p "$sys"/apt/state/lists/partial "$sys"/apt/cache/archives/partial "$sys"/debs
apt=(apt-get -q -o "Dir::State=$PWD/$sys/apt/state" -o "Dir::Cache=$PWD/$sys/apt/cache"
     -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
log=$sys/apt.log
if ! { "${apt[@]}" update && (cd "$sys/debs" && "${apt[@]}" download "${PACKAGES[@]}"); } >"$log" 2>&1; then
  cat "$log" >&2
  echo "system-packages: apt-get failed (log above, also in $log)" >&2
  exit 1
fi
rm -rf "$sys/root.new" && mkdir -p "$sys/root.new"
for deb in "$sys"/debs/*.deb; do dpkg-deb -x "$deb" "$sys/root.new"; done
rm -rf "$sys/root" && mv "$sys/root.new" "$sys/root"
echo "$want" >"$stamp"
echo "==> system packages (.system): $(du -sh "$sys/root" | cut -f1) unpacked"
