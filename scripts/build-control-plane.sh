#!/usr/bin/env bash
# Build the local cluster's Kubernetes binaries from Debian bookworm's `kubernetes` source
# package, and install etcd from Debian:
# - the control plane: kube-apiserver, kube-controller-manager, kube-scheduler;
# - the node (devstack/node.py): kubelet, kube-proxy, the pause binary (build/pause/linux/pause.c,
#   static) and corral-fake-gpu (devstack/fakegpu, a device plugin built against the tree's
#   vendored device-plugin API).
#
# The binaries are cached outside the checkout, keyed by the Debian version (the device plugin
# also by the hash of its source), so only the first run on a machine pays for the build (about
# 10 minutes on 2 cores).
set -euo pipefail

KUBE_DEB_VERSION="${KUBE_DEB_VERSION:-1.20.5+really1.20.2-1.1+deb12u1}"
CACHE_ROOT="${CORRAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/corral}"
OUT="$CACHE_ROOT/kube/$KUBE_DEB_VERSION"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PLUGIN_SRC="$ROOT/devstack/fakegpu/main.go"
PLUGIN_KEY="$(sha256sum "$PLUGIN_SRC" | cut -c1-16)"

plugin_ok() { [ -x "$OUT/bin/corral-fake-gpu" ] && [ "$(cat "$OUT/bin/corral-fake-gpu.key" 2>/dev/null)" = "$PLUGIN_KEY" ]; }

have_all() {
  for b in "${BINARIES[@]}" pause; do [ -x "$OUT/bin/$b" ] || return 1; done
  plugin_ok || return 1
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
  golang-go rsync jq etcd-server golang-github-modern-go-reflect2-dev dpkg-dev gcc libc6-dev >/dev/null

WHAT=()
for b in "${BINARIES[@]}"; do [ -x "$OUT/bin/$b" ] || WHAT+=("cmd/$b"); done
if [ ${#WHAT[@]} -eq 0 ] && [ -x "$OUT/bin/pause" ] && plugin_ok; then exit 0; fi

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

mkdir -p "$OUT/bin"
put() { install -m 0755 "$1" "$OUT/bin/$2.tmp" && mv "$OUT/bin/$2.tmp" "$OUT/bin/$2"; }

if [ ${#WHAT[@]} -gt 0 ]; then
  echo "==> building ${WHAT[*]} (several minutes)"
  (cd "$WORK/src" && CGO_ENABLED=0 make WHAT="${WHAT[*]}")
  for w in "${WHAT[@]}"; do put "$WORK/src/_output/bin/${w#cmd/}" "${w#cmd/}"; done
fi

if [ ! -x "$OUT/bin/pause" ]; then
  echo "==> building the pause binary"
  gcc -Os -static -Wall -Werror -o "$WORK/pause" "$WORK/src/build/pause/linux/pause.c"
  strip "$WORK/pause" 2>/dev/null || true
  put "$WORK/pause" pause
fi

if ! plugin_ok; then
  echo "==> building corral-fake-gpu (the node's device plugin)"
  mkdir -p "$WORK/src/cmd/corral-fake-gpu"
  cp "$PLUGIN_SRC" "$WORK/src/cmd/corral-fake-gpu/main.go"
  (cd "$WORK/src" && CGO_ENABLED=0 make WHAT=cmd/corral-fake-gpu)
  put "$WORK/src/_output/bin/corral-fake-gpu" corral-fake-gpu
  echo "$PLUGIN_KEY" > "$OUT/bin/corral-fake-gpu.key"
fi
rm -rf "$WORK"
echo "control plane binaries cached in $OUT/bin"
