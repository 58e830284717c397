#!/usr/bin/env bash
# Build corral's images (corral-runtime, corral-operator) from the project's Dockerfiles with
# buildah, without Docker and without a registry, as OCI archives a node's containerd imports.
#
#   scripts/build-images.sh [--import CONTAINERD_SOCKET]
#
# - The base is a Debian bookworm root filesystem made here by mmdebstrap (python3, venv,
#   CA certificates, libgomp1), imported into buildah as localhost/corral-base:<key> and passed as
#   the Dockerfiles' PYTHON_IMAGE build ARG (whose default stays the public python image).
# - The runtime installs the cached llama-cpp-python wheel (scripts/setup.sh builds it once) and
#   every other dependency from wheels collected here (<package>/wheels/ in the build context),
#   with PIP_NO_INDEX: nothing is compiled and no index is asked during the build.
# - Content-keyed: each image's key hashes its Dockerfile, the files it copies, the wheels and
#   the base; an archive for that key is reused, so a second run with nothing changed takes
#   seconds.
# - --import SOCKET: `ctr -n k8s.io images import` each archive into the containerd at SOCKET.
#
# The images are tagged with their full references (localhost/corral-runtime:<chart appVersion>,
# localhost/corral-operator:<...>), the names a kubelet normalises a pod's image to. The archives
# and the list of them (images.tsv: name, reference, archive) lie in $CACHE_ROOT/images.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
CACHE_ROOT="${CORRAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/corral}"
OUT="$CACHE_ROOT/images"
WHEELS="$CACHE_ROOT/wheels"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
SUITE=bookworm
BASE_PACKAGES="python3,python3-venv,python-is-python3,ca-certificates,libgomp1"
TAG="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/corral/Chart.yaml)"
IMPORT=""
if [ "${1:-}" = "--import" ]; then
  IMPORT="${2:?--import needs containerd socket}"
fi

missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v ctr >/dev/null || missing+=(containerd) # what runs them: a node, the image tests
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> installing ${missing[*]} (Debian packages)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9 # one build at a time: builds share the store and the contexts
STORE="$OUT/buildah"
buildah_() {
  buildah --root "$STORE/root" --runroot "$STORE/run" --storage-driver vfs "$@"
}
sha() { sha256sum | cut -c1-16; }

# 1. The base image: a minimal Debian root filesystem, keyed by suite and packages.
base_key="$(printf '%s %s\n' "$SUITE" "$BASE_PACKAGES" | sha)"
BASE="localhost/corral-base:$base_key"
if ! buildah_ inspect --type image "$BASE" >/dev/null 2>&1; then
  rootfs="$OUT/base-$base_key.tar"
  if [ ! -s "$rootfs" ]; then
    echo "==> making the base root filesystem (Debian $SUITE: $BASE_PACKAGES)"
    mmdebstrap --quiet --format=tar --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs.part"
    mv "$rootfs.part" "$rootfs"
  fi
  echo "==> importing the base as $BASE"
  ctr_id="$(buildah_ from scratch)"
  buildah_ add "$ctr_id" "$rootfs" / >/dev/null
  buildah_ config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 "$ctr_id"
  buildah_ commit --quiet --rm "$ctr_id" "$BASE" >/dev/null
fi

# 2. Wheels for each package's dependencies, keyed by its pyproject.toml (and the llama wheel).
collect_wheels() { # package -> directory of wheels
  local pkg="$1" key dir
  key="$( (cat "$pkg/pyproject.toml"; ls "$WHEELS" 2>/dev/null) | sha)"
  dir="$OUT/wheels-$pkg-$key"
  if [ ! -d "$dir" ]; then
    echo "==> collecting the wheels $pkg depends on" >&2
    rm -rf "$dir.part"
    { "$PYTHON" -m pip wheel --quiet --find-links "$WHEELS" --wheel-dir "$dir.part" "./$pkg" &&
      "$PYTHON" -m pip download --quiet --only-binary=:all: --dest "$dir.part" "setuptools>=77"; } \
      >"$OUT/pip.log" 2>&1 || { cat "$OUT/pip.log" >&2; exit 1; }
    rm -f "$dir.part"/corral_*.whl # the package itself is installed from its sources
    mv "$dir.part" "$dir"
  fi
  echo "$dir"
}

# 3. A build context as .dockerignore admits it (the package's sources), plus its wheels.
stage() { # package wheels-dir -> context directory
  local pkg="$1" wheels="$2" ctx="$OUT/context-$1"
  rm -rf "$ctx"
  mkdir -p "$ctx/$pkg/wheels"
  cp "$pkg/pyproject.toml" "$ctx/$pkg/"
  cp -r "$pkg/src" "$ctx/$pkg/src"
  find "$ctx/$pkg/src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
  find "$ctx/$pkg/src" -name '*.pyc' -delete
  cp "$wheels"/*.whl "$ctx/$pkg/wheels/"
  echo "$ctx"
}

printf '' >"$OUT/images.tsv.part"
for pkg in runtime operator; do
  name="corral-$pkg"
  ref="localhost/$name:$TAG"
  dockerfile="$pkg/Dockerfile"
  ctx="$(stage "$pkg" "$(collect_wheels "$pkg")")"
  key="$( (cat "$dockerfile"; echo "$BASE"; cd "$ctx" && find . -type f -print0 | sort -z |
    xargs -0 sha256sum) | sha)"
  archive="$OUT/$name-$key.tar"
  if [ -s "$archive" ]; then
    echo "==> $ref is up to date ($archive)"
  else
    echo "==> building $ref"
    start=$SECONDS
    buildah_ bud --quiet --isolation chroot --layers=false \
      --build-arg "PYTHON_IMAGE=$BASE" --build-arg PIP_NO_INDEX=1 \
      -f "$ROOT/$dockerfile" -t "$ref" "$ctx" >/dev/null
    buildah_ push --quiet "$ref" "oci-archive:$archive.part:$ref"
    mv "$archive.part" "$archive"
    buildah_ rmi "$ref" >/dev/null
    find "$OUT" -maxdepth 1 -name "$name-*.tar" ! -name "${archive##*/}" -delete # older keys
    echo "==> built $ref in $((SECONDS - start)) s ($archive)"
  fi
  printf '%s\t%s\t%s\n' "$name" "$ref" "$archive" >>"$OUT/images.tsv.part"
  if [ -n "$IMPORT" ]; then
    ctr --address "$IMPORT" -n k8s.io images import "$archive" >/dev/null
    echo "==> imported $ref into containerd at $IMPORT"
  fi
done
mv "$OUT/images.tsv.part" "$OUT/images.tsv"
