"""The contract between the operator and the pull Job it runs for a Model.

A pull Job runs the runtime image's ``corral pull SOURCE --models /models`` against the cache
PVC. The Job reports back through the mechanism Kubernetes already has for a finished
container: its **termination message**. With ``CORRAL_PULL_RESULT_FILE=/dev/termination-log``
in its environment the puller writes, when it succeeds, one JSON object there::

    {"name": "gemma3:270m", "digest": "sha256:<hex>", "sizeBytes": 253113024,
     "format": "gguf", "family": "gemma3", "parameterSize": "268.10M",
     "quantization": "Q4_K_M", "contextLength": 32768, "blockCount": 18, "headCount": 4,
     "headCountKV": 1, "keyLength": 256, "valueLength": 256, "weightsBytes": 241410624, ...}

and when it fails, ``{"error": "<message>"}``. The kubelet copies the file (at most 4 KiB) into
the pod's ``status.containerStatuses[].state.terminated.message``; the operator reads it from the
Job's pods. This needs no API credentials in the pull pod (its service-account token is not
mounted) and works on any conforming cluster. Whoever plays the kubelet (a real one, or a
test) reports the pull result the same way.

While it runs, the puller prints progress lines to its log; each plain line ends with the bytes
of the whole pull so far, every layer together::

    pulling 1a2b3c4d5e6f  45% [===   ] 114.0 MB/253.1 MB  [pull 114000000/253113024 bytes]

The operator reads the tail of the running pod's log through the API (``pods/log``, the
standard way to see a container's output) and reports the last such line as the Model's
``status.completedBytes``/``totalBytes``.

Everything that changes what ends up in the store (source, name, pinned digest, template,
system, parameters, messages, license, cache) is hashed into the Job's name, so a change starts a
new Job (a re-pull) and an unchanged Model never pulls twice. A field a Model leaves unset is left
out of the hash, so Models from before a field existed keep their hash and are not pulled again.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from corral_operator.status.sizes import format_progress

RESULT_FILE_ENV = "CORRAL_PULL_RESULT_FILE"
TERMINATION_LOG = "/dev/termination-log"
PULL_CONTAINER = "pull"
GC_CONTAINER = "gc"

JobPhase = Literal["Pending", "Running", "Succeeded", "Failed"]

_PULL_FIELDS = (
    "source",
    "name",
    "digest",
    "template",
    "system",
    "parameters",
    "messages",
    "license",
    "cache",
)
# The end of a progress line (corral_runtime.commands.models.pull_bytes_suffix).
_PROGRESS = re.compile(r"\[pull (\d+)/(\d+) bytes\]\s*$")
# How much of a pull pod's log is read per look: a few lines (one is printed every few seconds).
LOG_TAIL_LINES = 20
LOG_LIMIT_BYTES = 16 * 1024
# What the puller reports of a GGUF's shape and weights (corral_runtime.commands.models
# .pull_result), kept as they are in the Model's status: the operator sizes pods from them.
SIZING_FACTS = (
    "parameterCount",
    "blockCount",
    "embeddingLength",
    "headCount",
    "headCountKV",
    "keyLength",
    "valueLength",
    "feedForwardLength",
    "vocabSize",
    "weightsBytes",
    "layerBytes",
    "outputBytes",
)


@dataclass(frozen=True, slots=True)
class PullResult:
    """What a finished pull reported about the model it stored."""

    name: str | None = None
    digest: str | None = None
    size_bytes: int | None = None
    format: str | None = None
    family: str | None = None
    parameter_size: str | None = None
    quantization: str | None = None
    context_length: int | None = None
    error: str | None = None
    facts: Mapping[str, int] = field(default_factory=dict)  # SIZING_FACTS that were reported

    def as_status(self) -> dict[str, Any]:
        """Model status fields (camelCase), without the ones the puller did not report."""
        fields = {
            "digest": self.digest,
            "sizeBytes": self.size_bytes,
            "format": self.format,
            "family": self.family,
            "parameterSize": self.parameter_size,
            "quantization": self.quantization,
            "contextLength": self.context_length,
            **self.facts,
        }
        return {key: value for key, value in fields.items() if value is not None}


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


# The largest integer a Kubernetes object holds (int64): a model file may claim more (a u64 head
# count), which the API server would refuse in the status patch, again at every retry.
_INT64_MAX = 2**63 - 1


def _opt_int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    return value if 0 <= value <= _INT64_MAX else None


def parse_pull_result(message: str | None) -> PullResult | None:
    """Parse a termination message; None when there is none or it is not a JSON object.

    Unknown keys are ignored and malformed values dropped, so a newer puller can add fields.
    """
    if not message or not message.strip():
        return None
    try:
        data = json.loads(message)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    return PullResult(
        name=_opt_str(data, "name"),
        digest=_opt_str(data, "digest"),
        size_bytes=_opt_int(data, "sizeBytes"),
        format=_opt_str(data, "format"),
        family=_opt_str(data, "family"),
        parameter_size=_opt_str(data, "parameterSize"),
        quantization=_opt_str(data, "quantization"),
        context_length=_opt_int(data, "contextLength"),
        error=_opt_str(data, "error"),
        facts={key: value for key in SIZING_FACTS if (value := _opt_int(data, key)) is not None},
    )


def pull_spec_hash(spec: Mapping[str, Any]) -> str:
    """A short stable hash of everything in a Model's spec that a pull depends on."""
    relevant = {key: spec.get(key) for key in _PULL_FIELDS if spec.get(key) is not None}
    encoded = json.dumps(relevant, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()[:10]


def job_phase(job: Mapping[str, Any]) -> JobPhase:
    """Where a batch/v1 Job stands, from its conditions and counters."""
    status = job.get("status") or {}
    for cond in status.get("conditions") or ():
        if cond.get("status") == "True" and cond.get("type") == "Complete":
            return "Succeeded"
        if cond.get("status") == "True" and cond.get("type") == "Failed":
            return "Failed"
    if status.get("active"):
        return "Running"
    return "Pending"


def job_failure_message(job: Mapping[str, Any]) -> str:
    for cond in (job.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".strip(": ")
    return "the pull Job failed"


def termination_message(pod: Mapping[str, Any], container: str) -> str | None:
    """The termination message of ``container`` in a pod, if it has terminated."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or ()
    for cs in statuses:
        if cs.get("name") != container:
            continue
        for state_key in ("state", "lastState"):
            terminated = (cs.get(state_key) or {}).get("terminated")
            if terminated and terminated.get("message"):
                return str(terminated["message"])
    return None


def latest_result(pods: Sequence[Mapping[str, Any]], container: str) -> PullResult | None:
    """The result reported by the most recently finished pod of a Job (retries leave several)."""

    def finished_at(pod: Mapping[str, Any]) -> str:
        for cs in (pod.get("status") or {}).get("containerStatuses") or ():
            terminated = (cs.get("state") or {}).get("terminated") or {}
            if terminated.get("finishedAt"):
                return str(terminated["finishedAt"])
        return str((pod.get("metadata") or {}).get("creationTimestamp") or "")

    for pod in sorted(pods, key=finished_at, reverse=True):
        result = parse_pull_result(termination_message(pod, container))
        if result is not None:
            return result
    return None


@dataclass(frozen=True, slots=True)
class PullProgress:
    """Bytes of a running pull: all its layers together."""

    completed: int
    total: int

    def as_status(self) -> dict[str, int | str]:
        """The byte fields tools read, and ``progress`` for ``kubectl get -o wide``."""
        return {
            "completedBytes": self.completed,
            "totalBytes": self.total,
            "progress": format_progress(self.completed, self.total),
        }


def parse_progress(log_tail: str) -> PullProgress | None:
    """The last progress line in a piece of a pull pod's log; None when it holds none.

    A line cut short (by a byte limit) no longer ends like a progress line, so it never counts.
    """
    for line in reversed(log_tail.splitlines()):
        match = _PROGRESS.search(line)
        if match:
            completed, total = int(match[1]), int(match[2])
            return PullProgress(min(completed, total), total)
    return None


def running_pod(pods: Sequence[Mapping[str, Any]], container: str) -> str | None:
    """The pod whose ``container`` is running now (a Job retries one pod at a time)."""
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Running":
            continue
        for cs in (pod.get("status") or {}).get("containerStatuses") or ():
            if cs.get("name") == container and "running" in (cs.get("state") or {}):
                return str(pod["metadata"]["name"])
    return None
