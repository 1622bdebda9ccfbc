"""A real Kubernetes control plane on one machine, for tests, benchmarks and the cluster demo.

`controlplane` starts etcd (embedded), kube-apiserver and kube-controller-manager built from Go
modules by `make controlplane` (hack/controlplane); `node` plays the only part that has no
binary here, the kubelet: it binds pods, runs them as local processes and reports how their
containers ended. Everything else (Job status, retries, podFailurePolicy, suspend, deadlines,
garbage collection, RBAC) is the real Kubernetes code.
"""
