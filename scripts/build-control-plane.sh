#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager and kube-scheduler from Debian bookworm's
# `kubernetes` source package, and install etcd from Debian, for the test control plane.
#
# The binaries are cached outside the checkout, keyed by the Debian version, so only the first
# run on a machine pays for the build (about 7 minutes on 2 cores).
set -euo pipefail

KUBE_DEB_VERSION="${KUBE_DEB_VERSION:-1.20.5+really1.20.2-1.1+deb12u1}"
CACHE_ROOT="${CORRAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/corral}"
OUT="$CACHE_ROOT/kube/$KUBE_DEB_VERSION"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler)

have_all() {
  for b in "${BINARIES[@]}"; do [ -x "$OUT/bin/$b" ] || return 1; done
  command -v etcd >/dev/null || [ -x /usr/bin/etcd ] || return 1
}

if have_all; then
  echo "control plane binaries cached in $OUT/bin"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

echo "==> installing build dependencies and etcd from Debian"
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
  golang-go rsync jq etcd-server golang-github-modern-go-reflect2-dev dpkg-dev >/dev/null

for b in "${BINARIES[@]}"; do [ -x "$OUT/bin/$b" ] || missing=1; done
if [ -z "${missing:-}" ]; then exit 0; fi

WORK="$CACHE_ROOT/kube/build-$KUBE_DEB_VERSION"
rm -rf "$WORK"
mkdir -p "$WORK/lists/partial" "$WORK/archives/partial"

# A deb-src entry for bookworm, using the mirror this machine is already configured with.
MIRROR="$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)"
if [ -z "$MIRROR" ]; then
  MIRROR="$(grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)"
fi
[ -n "$MIRROR" ] || { echo "no Debian mirror found in the apt sources" >&2; exit 1; }
echo "deb-src $MIRROR bookworm main" > "$WORK/sources.list"
echo "deb-src $MIRROR bookworm-updates main" >> "$WORK/sources.list"
SEC="$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep security | head -n1 || true)"
[ -z "$SEC" ] || echo "deb-src $SEC bookworm-security main" >> "$WORK/sources.list"

APT_OPTS=(-o "Dir::Etc::SourceList=$WORK/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
          -o "Dir::State::Lists=$WORK/lists" -o "Dir::Cache::Archives=$WORK/archives")
echo "==> fetching the kubernetes source package $KUBE_DEB_VERSION"
apt-get "${APT_OPTS[@]}" update -qq
(cd "$WORK" && apt-get "${APT_OPTS[@]}" source --download-only "kubernetes=$KUBE_DEB_VERSION")

ORIG="$(ls "$WORK"/kubernetes_*.orig.tar.* | head -n1)"
mkdir -p "$WORK/src"
tar -xf "$ORIG" -C "$WORK/src" --strip-components=1

# The vendored reflect2 v1.0.1 segfaults under Go 1.19 as soon as a custom resource is created.
echo "==> replacing vendor/github.com/modern-go/reflect2 with Debian's 1.0.2"
rm -rf "$WORK/src/vendor/github.com/modern-go/reflect2"
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$WORK/src/vendor/github.com/modern-go/reflect2"
rm -f "$WORK/src/vendor/github.com/modern-go/reflect2/go.mod"

echo "==> building (several minutes)"
(cd "$WORK/src" && CGO_ENABLED=0 make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler")

mkdir -p "$OUT/bin"
for b in "${BINARIES[@]}"; do
  install -m 0755 "$WORK/src/_output/bin/$b" "$OUT/bin/$b.tmp"
  mv "$OUT/bin/$b.tmp" "$OUT/bin/$b"
done
rm -rf "$WORK"
echo "control plane binaries cached in $OUT/bin"
