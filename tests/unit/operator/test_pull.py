from __future__ import annotations

import json

import pytest

from corral_operator.pull import job_phase, latest_result, parse_pull_result, pull_spec_hash

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
