"""`engage invoke FUNCTION -e events/FILE.json` on the local cloud: every sample event in events/ runs
as it is against the default space `local`, after the samples' world is seeded."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from localcloud import invoke, template
from tests.e2e.conftest import ROOT, start_cloud, stop_cloud

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("localcloud")]

SAMPLES = sorted((ROOT / "events").glob("*.json"))


def function_of(sample: Path) -> str:
    """The function a sample belongs to: events/<folder>_*.json for functions/<folder> (template CodeUri)."""
    owners = [logical_id for logical_id, folder in template.code_dirs().items()
              if folder.parent.name == "functions" and sample.name.startswith(folder.name + "_")]
    assert len(owners) == 1, f"{sample.name} must start with one function folder name, not {owners}"
    return owners[0]


@pytest.fixture(scope="module")
def cloud():
    """A local cloud of its own: seeding and the samples change the default space's data."""
    running = start_cloud()
    yield running
    assert stop_cloud(running) == 0, "".join(running.output[-40:])


def test_every_sample_event_runs_against_the_default_space(cloud):
    # Given the samples' world seeded into space `local` (seeding twice changes nothing and does not fail)
    invoker = invoke.Invoker(cloud.aws_endpoint)
    invoke.seed(invoker)
    again = invoke.seed(invoker)
    assert [r.http_status for r in again[1:]] == [409, 409]  # the audiences were already there
    assert again[0].payload == {"batchItemFailures": []}
    cloud.settle()
    # When every file in events/ is invoked on its function
    answers = {}
    for sample in SAMPLES:
        result = invoker.invoke(function_of(sample), invoke.load_event(sample))
        # Then no function raised, HTTP events answered 2xx and stream batches reported no failed record
        assert not result.error, f"{sample.name}: {result.payload}"
        if result.http_status is not None:
            assert 200 <= result.http_status < 300, f"{sample.name}: {result.payload}"
        if isinstance(result.payload, dict) and "batchItemFailures" in result.payload:
            assert result.payload["batchItemFailures"] == [], sample.name
        answers[sample.stem] = result
    assert {function_of(s) for s in SAMPLES} >= {
        "IngestFunction", "ProfileApiFunction", "ManagementApiFunction", "ProfileProcessorFunction",
        "AudienceEvaluatorFunction"}
    # And the answers are the samples' own world: the seeded user's traits, the ingest samples stored
    traits = json.loads(answers["profile_api_traits"].payload["body"])["traits"]
    assert traits["email"] == "ann@example.com" and traits["plan"] == "pro"
    assert json.loads(answers["ingest_track"].payload["body"]) == {"success": True}
    imported = json.loads(answers["management_api_import_members"].payload["body"])
    # (the seeded ann by email; user 42 of ingest_batch.json too once its events have been processed)
    assert imported["added"] >= 1 and "ann@example.com" not in json.dumps(imported.get("unknown", []))


def test_the_command_prints_the_response_and_fails_on_an_unknown_function(cloud):
    # Given the running local cloud's AWS endpoint
    command = [sys.executable, "-m", "engage.cli", "invoke", "--endpoint-url", cloud.aws_endpoint]
    # When a sample is invoked by the command line
    run = subprocess.run([*command, "IngestFunction", "-e", "events/ingest_identify.json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=False)
    # Then stdout is the function's response alone, as with sam local invoke
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["statusCode"] == 200
    # And an unknown function is an error that lists the real ones
    run = subprocess.run([*command, "NoSuchFunction", "-e", "events/ingest_identify.json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 2 and "IngestFunction" in run.stderr and run.stdout == ""


def test_with_no_local_cloud_running_it_starts_a_throwaway_one(tmp_path):
    # Given no AWS endpoint configured and nothing listening on the default port chosen here
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ENGAGE_AWS_PORT": "9"}  # port 9: discard, closed
    # When a Profile API sample is invoked
    run = subprocess.run([sys.executable, "-m", "engage.cli", "invoke", "ProfileApiFunction", "-e",
                          "events/profile_api_metadata.json"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600, check=False)
    # Then a throwaway local cloud ran it, seeded, and the profile the sample names was found
    assert run.returncode == 0, run.stderr[-3000:]
    assert "starting a throwaway one" in run.stderr
    assert json.loads(run.stdout)["statusCode"] == 200
