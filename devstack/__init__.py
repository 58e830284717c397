"""corral's local cluster for developers and users: a real Kubernetes control plane and a real
node (containerd, kubelet, kube-proxy) on this machine, running the images built from this
repository. See devstack/README.md."""
