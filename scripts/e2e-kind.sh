#!/usr/bin/env bash
# The e2e_kind test tier on a throwaway kind cluster (needs Docker and kind; the cluster needs
# Internet access to pull gemma3:270m from the Ollama registry):
#   1. create the kind cluster "corral-e2e" (reused when it already exists),
#   2. build the runtime and operator images from this checkout and load them into it,
#   3. helm install charts/corral with those images into corral-system,
#   4. run `pytest -m e2e_kind` with CORRAL_E2E_KUBECONFIG pointing at the cluster.
# The cluster is deleted afterwards unless CORRAL_KIND_KEEP=1 (then its kubeconfig stays in
# .kind/kubeconfig). Extra arguments go to pytest.
#
#   scripts/e2e-kind.sh                     # or: make e2e-kind
#   CORRAL_KIND_KEEP=1 scripts/e2e-kind.sh -x
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CLUSTER="${CORRAL_KIND_CLUSTER:-corral-e2e}"
TAG="${CORRAL_KIND_TAG:-e2e}"
NAMESPACE=corral-system
STATE="$ROOT/.kind"
KUBECONFIG_FILE="$STATE/kubeconfig"
PY="$ROOT/.venv/bin/python"

fail() { echo "e2e-kind: $*" >&2; exit 1; }
tool() { # the project's copy under .tools/bin, else one on PATH
  if [[ -x "$ROOT/.tools/bin/$1" ]]; then echo "$ROOT/.tools/bin/$1"; else command -v "$1" || true; fi
}

command -v docker >/dev/null || fail "docker is not installed (https://docs.docker.com/engine/install/)"
docker info >/dev/null 2>&1 || fail "docker is installed but its daemon does not answer (docker info)"
command -v kind >/dev/null || fail "kind is not installed (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
HELM="$(tool helm)"; [[ -n "$HELM" ]] || fail "helm not found: run make install"
[[ -n "$(tool kubectl)" ]] || fail "kubectl not found: run make install"
[[ -x "$PY" ]] || fail ".venv is missing: run make install"

mkdir -p "$STATE"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  kind export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG_FILE"
else
  kind create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG_FILE" --wait 180s
fi
if [[ "${CORRAL_KIND_KEEP:-0}" != 1 ]]; then
  trap 'kind delete cluster --name "$CLUSTER"; rm -f "$KUBECONFIG_FILE"' EXIT
fi

docker build -f "$ROOT/runtime/Dockerfile" -t "corral-runtime:$TAG" "$ROOT"
docker build -f "$ROOT/operator/Dockerfile" -t "corral-operator:$TAG" "$ROOT"
kind load docker-image --name "$CLUSTER" "corral-runtime:$TAG" "corral-operator:$TAG"

# kind's default StorageClass provisions ReadWriteOnce volumes only; one node makes that enough.
"$HELM" upgrade --install corral "$ROOT/charts/corral" \
  --kubeconfig "$KUBECONFIG_FILE" --namespace "$NAMESPACE" --create-namespace \
  --set image.repository=corral-operator --set image.tag="$TAG" \
  --set runtime.image.repository=corral-runtime --set runtime.image.tag="$TAG" \
  --set cacheProfiles.default.accessMode=ReadWriteOnce --set cacheProfiles.default.size=5Gi \
  --wait --timeout 5m

cd "$ROOT"
CORRAL_E2E_KUBECONFIG="$KUBECONFIG_FILE" CORRAL_E2E_GATEWAY_NAMESPACE="$NAMESPACE" \
  "$PY" -m pytest -m e2e_kind tests/e2e_kind "$@"
