#!/usr/bin/env bash
# Render manifests/install.yaml from charts/corral with default values, for `kubectl apply`
# without Helm: the corral-system Namespace (Pod Security "restricted" enforced) followed by
# everything the chart installs into it.
#
#   scripts/render-manifests.sh            # rewrite manifests/install.yaml
#   scripts/render-manifests.sh --check    # exit 1 when manifests/install.yaml is stale
#   scripts/render-manifests.sh --stdout   # print the render
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HELM="${HELM:-$ROOT/.tools/bin/helm}"
TARGET="$ROOT/manifests/install.yaml"
NAMESPACE=corral-system
RELEASE=corral

render() {
  cat <<YAML
# corral, rendered from charts/corral (default values) by scripts/render-manifests.sh; do not
# edit. Install: kubectl apply --server-side -f install.yaml. Prefer the chart for anything
# but the defaults (see charts/corral/values.yaml).
apiVersion: v1
kind: Namespace
metadata:
  name: $NAMESPACE
  labels:
    app.kubernetes.io/part-of: corral
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/warn: restricted
YAML
  "$HELM" template "$RELEASE" "$ROOT/charts/corral" --namespace "$NAMESPACE"
}

case "${1:-}" in
  "")
    render > "$TARGET.tmp"
    mv "$TARGET.tmp" "$TARGET"
    ;;
  --stdout)
    render
    ;;
  --check)
    if ! diff -u "$TARGET" <(render) > /dev/null; then
      echo "render-manifests: manifests/install.yaml is stale; run scripts/render-manifests.sh" >&2
      exit 1
    fi
    ;;
  *)
    echo "usage: $0 [--check|--stdout]" >&2
    exit 2
    ;;
esac
