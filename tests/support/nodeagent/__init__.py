"""A node agent that plays the kubelet for a real control plane on a machine without containers.

It registers Nodes, keeps their heartbeat, and runs every pod bound to them as local processes:
each pod gets its own network namespace joined to the host by a veth pair, so its IP is real,
reachable from the host and accepted by Endpoints. Images map to commands through a small file
(see ``imagemap``). Pure decisions live in ``imagemap``, ``podspec``, ``status``, ``decisions`` and
``nodeobj``; ``network``, ``kube``, ``worker`` and ``agent`` are the thin I/O around them.

Run it with ``python -m tests.support.nodeagent --kubeconfig FILE --node NAME --image-map FILE``.
It is test and development tooling, not part of the operator.
"""
