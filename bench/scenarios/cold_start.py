"""Cold start: import time of each function's handler module, and each package's size.

Import time: `python -X importtime -c "import app"` in a fresh interpreter with the
function's CodeUri and the layer source on sys.path (as Lambda lays them out), median of
5 runs, cumulative microseconds of the `app` module. Package size: `sam build` output,
unzipped and zipped (what Lambda stores), per function and for the layer.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import zipfile
from pathlib import Path

from bench.report import ROOT, Figure
from localcloud import template

LAYER = ROOT / "layers" / "engage" / "python"
RUNS = 5


def import_ms(code_dir: Path) -> float:
    # The variables Lambda sets: outside Lambda the X-Ray SDK builds a botocore client for
    # centralized sampling at import (~0.5 s) that a Lambda sandbox never builds.
    env = {**os.environ, "PYTHONPATH": f"{code_dir}{os.pathsep}{LAYER}", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_REGION": "us-east-1", "LAMBDA_TASK_ROOT": str(code_dir), "AWS_LAMBDA_FUNCTION_NAME": code_dir.name,
           "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512", "_HANDLER": "app.lambda_handler"}
    parameters = template.load().get("Parameters", {})
    for var, value in template.global_environment().items():
        if isinstance(value, dict):  # a Ref: the parameter's default, else a placeholder resource name
            value = parameters.get(value.get("Ref"), {}).get("Default", "bench")
        env.setdefault(var, str(value))
    samples = []
    for _ in range(RUNS):
        done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import app"], cwd=code_dir, env=env,
                              capture_output=True, text=True, check=True)
        for line in reversed(done.stderr.splitlines()):
            match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s*app$", line)
            if match:
                samples.append(int(match.group(1)) / 1000)
                break
    return statistics.median(samples)


def _sizes(path: Path) -> tuple[float, float]:
    raw = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in path.rglob("*"):
            if file.is_file():
                archive.write(file, file.relative_to(path))
    return raw / 1e6, len(buffer.getvalue()) / 1e6


def run(context) -> list[Figure]:
    figures = []
    functions = template.resources("AWS::Serverless::Function")
    for name, resource in sorted(functions.items()):
        code = ROOT / resource["Properties"]["CodeUri"]
        figures.append(Figure("Cold start", f"{name}: import of handler module", import_ms(code), "ms",
                              f"python -X importtime, cumulative for `app`, median of {RUNS} fresh interpreters"))
    sam = ROOT / ".venv-sam" / "bin" / "sam"
    if not sam.exists():
        context.notes.append("package sizes skipped: SAM CLI not installed (make install)")
        return figures
    build_dir = ROOT / ".aws-sam" / "bench"
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1",
           "PATH": f"{Path(shutil.which('python3.13') or sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    built = subprocess.run([str(sam), "build", "--template", str(ROOT / "template.yaml"), "--build-dir",
                            str(build_dir), "--cached", "--cache-dir", str(ROOT / ".aws-sam" / "cache")],
                           cwd=ROOT, env=env, check=False, capture_output=True, text=True)
    if built.returncode:  # keep the import times; say why the sizes are missing
        tail = " ".join((built.stderr or built.stdout).strip().splitlines()[-2:])[:300]
        context.notes.append(f"package sizes skipped: sam build failed in this run ({tail})")
        return figures
    for name in sorted([*functions, *template.resources("AWS::Serverless::LayerVersion")]):
        raw, zipped = _sizes(build_dir / name)
        figures.append(Figure("Package size (sam build)", f"{name}", zipped, "MB zipped",
                              f"sam build output zipped with deflate; {raw:.1f} MB unzipped"))
    return figures
