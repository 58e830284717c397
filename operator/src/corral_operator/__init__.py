"""corral's Kubernetes operator (kopf) and gateway."""

__version__ = "0.1.0"
