"""engage.observability: the shared powertools objects."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_an_invocation_without_metrics_writes_no_warning():
    # powertools warned "No application metrics to publish" on stderr at every such invocation: a log line
    # each, billed by CloudWatch Logs, and most of `make dev`'s output
    code = ("from engage.observability import metrics\n"
            "@metrics.log_metrics\n"
            "def handler(event, context):\n"
            "    return 'done'\n"
            "print(handler({}, None))\n")
    done = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, check=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT / "layers" / "engage" / "python"),
                                         "AWS_REGION": "us-east-1", "POWERTOOLS_TRACE_DISABLED": "1",
                                         "PATH": "/usr/bin:/bin"})
    assert done.stdout.strip() == "done"
    assert "No application metrics" not in done.stderr, done.stderr
