"""Status helpers: Kubernetes-style conditions and status comparisons."""
