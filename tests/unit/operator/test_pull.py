from __future__ import annotations

import json
from typing import Any

import pytest

from corral_operator.pull import (
    PullProgress,
    job_phase,
    latest_result,
    parse_progress,
    parse_pull_result,
    pull_spec_hash,
    running_pod,
)

pytestmark = pytest.mark.unit


def test_parses_a_result_and_drops_bad_fields() -> None:
    result = parse_pull_result(
        json.dumps(
            {
                "name": "gemma3:270m",
                "digest": "sha256:ab",
                "sizeBytes": 5,
                "contextLength": -1,
                "family": 3,
                "newField": "ignored",
            }
        )
    )
    assert result is not None
    assert result.as_status() == {"digest": "sha256:ab", "sizeBytes": 5}
    assert result.name == "gemma3:270m"


def test_a_model_files_numbers_beyond_int64_are_dropped() -> None:
    # A hostile GGUF's u64 head count must not make the Model's status patch fail at every retry.
    result = parse_pull_result(
        json.dumps({"headCount": 2**64 - 1, "blockCount": 2**63, "vocabSize": 2**63 - 1})
    )
    assert result is not None
    assert result.as_status() == {"vocabSize": 2**63 - 1}


@pytest.mark.parametrize("message", [None, "", "not json", "[1, 2]"])
def test_no_result(message: str | None) -> None:
    assert parse_pull_result(message) is None


def test_latest_result_prefers_the_last_finished_pod() -> None:
    def pod(finished: str, message: str) -> dict[str, object]:
        return {
            "metadata": {},
            "status": {
                "containerStatuses": [
                    {
                        "name": "pull",
                        "state": {"terminated": {"finishedAt": finished, "message": message}},
                    }
                ]
            },
        }

    pods = [
        pod("2024-01-01T00:00:02Z", '{"name": "new"}'),
        pod("2024-01-01T00:00:01Z", '{"error": "old"}'),
    ]
    result = latest_result(pods, "pull")
    assert result is not None and result.name == "new"


@pytest.mark.parametrize(
    ("status", "phase"),
    [
        ({}, "Pending"),
        ({"active": 1}, "Running"),
        ({"conditions": [{"type": "Complete", "status": "True"}]}, "Succeeded"),
        ({"conditions": [{"type": "Failed", "status": "True"}]}, "Failed"),
    ],
)
def test_job_phase(status: dict[str, object], phase: str) -> None:
    assert job_phase({"status": status}) == phase


def test_spec_hash_follows_pull_inputs_only() -> None:
    base = {"source": "gemma3:270m", "cache": "default"}
    assert pull_spec_hash(base) == pull_spec_hash({**base, "unrelated": 1})
    assert pull_spec_hash(base) != pull_spec_hash({**base, "source": "qwen3:0.6b"})
    assert pull_spec_hash(base) != pull_spec_hash({**base, "system": "be brief"})


# -- progress from the pull pod's log --------------------------------------------------------


def test_progress_is_the_last_progress_line() -> None:
    tail = "\n".join(
        [
            "ng 1a2b3c4d5e6f  12% [===   ] 30.0 MB/253.1 MB  [pull 30000000/253113024 bytes]",
            "pulling 1a2b3c4d5e6f  45% [=== ] 114.0 MB/253.1 MB  [pull 114000000/253113024 bytes]",
            "pulling 0f9e8d7c6b5a 100% [======] 8 B/8 B  [pull 253113032/253113032 bytes]",
            "verifying sha256 digest",
            "writing manifest",
        ]
    )
    assert parse_progress(tail) == PullProgress(253113032, 253113032)
    assert parse_progress(tail).as_status() == {  # type: ignore[union-attr]
        "completedBytes": 253113032,
        "totalBytes": 253113032,
        "progress": "253 MB / 253 MB (100%)",
    }


@pytest.mark.parametrize(
    "tail",
    [
        "",
        "pulling manifest\n",
        # Cut short by the byte limit: no longer ends like a progress line.
        "pulling 1a2b3c4d5e6f  45% [===   ] 114.0 MB/253.1 MB  [pull 114000000/2531",
        "Error: [pull 1/2 bytes] is not at the end here",
    ],
)
def test_no_progress(tail: str) -> None:
    assert parse_progress(tail) is None


def test_progress_never_passes_its_total() -> None:
    assert parse_progress("x  [pull 12/10 bytes]") == PullProgress(10, 10)


def test_progress_line_format_matches_the_pull_cli() -> None:
    # The runtime prints what the operator parses; both sides of the contract in one test.
    from corral_runtime.commands.models import pull_bytes_suffix

    assert parse_progress(f"pulling x  {pull_bytes_suffix(5, 9)}\n") == PullProgress(5, 9)


def test_running_pod_is_the_one_whose_puller_runs() -> None:
    def pod(name: str, phase: str, state: str) -> dict[str, Any]:
        statuses = [{"name": "pull", "state": {state: {}}}]
        return {
            "metadata": {"name": name},
            "status": {"phase": phase, "containerStatuses": statuses},
        }

    pods = [
        pod("a", "Failed", "terminated"),
        pod("b", "Pending", "waiting"),
        pod("c", "Running", "running"),
    ]
    assert running_pod(pods, "pull") == "c"
    assert running_pod(pods[:2], "pull") is None
    assert running_pod(pods, "gc") is None
