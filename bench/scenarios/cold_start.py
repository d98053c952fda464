"""Cold start: each handler's import against the `import boto3` yardstick, and the layer's size.

Import: for every function in template.yaml, N interleaved pairs of fresh interpreters (same
Python): one runs `import app` (the handler module) with the layer on its path, the other only
`import boto3`, which every Python Lambda pays (the runtime's boto3, with its bytecode). The order
inside a pair alternates, so drift in the machine's load hits both sides alike. Each process is
timed from spawn to exit (interpreter start-up included on both sides). The layer is the one the
template deploys, built by its own recipe (layers/engage/python/Makefile, `build-EngageLayer`) for
this machine's platform, and read as Lambda reads a layer: read-only (PYTHONDONTWRITEBYTECODE), so
what the build ships is what every cold start gets: a module without a .pyc is compiled from source
each time. The environment is the rest of what Lambda gives the function: its CodeUri, the runtime's
variables and the template's Globals plus the function's own variables, its parameters at their defaults
(Tracing: Disabled; one handler is measured again with Tracing: Active, the X-Ray SDK's share). One
unmeasured pair first reads the files into the page cache. The guarded figure is
the median of the per-pair ratios (target 1.5x; see docs/benchmarks.md for the guard's tolerance);
the medians of the absolute times stand beside it. A further `-X importtime` run per handler gives
the time beyond boto3 by top-level package (a table after the figures). One handler is measured a
second time against the same layer with its bytecode removed: what a layer without it costs.

Layer: `sam build` of EngageLayer (what Lambda stores), unzipped and zipped, and each
distribution's share of it (files listed by its dist-info RECORD).
"""
from __future__ import annotations

import io
import os
import re
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from bench.report import ROOT, Figure
from localcloud import template

LAYER = ROOT / "layers" / "engage" / "python"
NATIVE_LAYER = ROOT / ".aws-sam" / "bench-native"  # the layer's recipe, built for this machine
TARGET = 1.5  # handler process / yardstick process
# A timed ratio jitters from run to run (about +-5% on an idle machine, more on a shared one); the
# guard fails only above baseline x (1 + TOLERANCE). bench/report.py applies it.
TOLERANCE = 0.15


def lambda_environment(resource: dict, code_dir: Path, layer: Path = LAYER) -> dict[str, str]:
    """What Lambda sets for this function: its runtime variables and the template's, with `layer` (a
    directory of packages, as the layer's python/ folder) after the function's code on the path."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "AWS_", "POWERTOOLS_"))}
    env.update({
        "PYTHONPATH": f"{code_dir}{os.pathsep}{layer}", "LAMBDA_TASK_ROOT": str(code_dir),
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
        "AWS_LAMBDA_FUNCTION_NAME": code_dir.name, "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "_HANDLER": resource["Properties"].get("Handler", "app.lambda_handler"),
        # For Tracing=Active (one row). Without LAMBDA_TASK_ROOT the X-Ray SDK would build a sampling client at import.
        "AWS_XRAY_DAEMON_ADDRESS": "169.254.79.129:2000", "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
    })
    parameters = template.load().get("Parameters", {})
    own = resource["Properties"].get("Environment", {}).get("Variables", {})
    for var, value in {**template.global_environment(), **own}.items():
        if isinstance(value, dict):  # a Ref to a parameter: its default; any other reference: a placeholder name
            value = parameters.get(value.get("Ref"), {}).get("Default", "bench")
        env[var] = str(value)
    return env


def as_lambda_reads(env: dict[str, str]) -> dict[str, str]:
    """Lambda mounts code and layers read-only: nothing a cold start compiles is kept for the next."""
    return {**env, "PYTHONDONTWRITEBYTECODE": "1"}


def yardstick_environment(env: dict[str, str], code_dir: Path) -> dict[str, str]:
    """The yardstick's process: the runtime's boto3 (this interpreter's, with its bytecode), no layer."""
    return {**env, "PYTHONPATH": str(code_dir)}


def build_native_layer(out: Path = NATIVE_LAYER) -> Path:
    """The layer as `sam build` makes it (layers/engage/python/Makefile), with this machine's wheels so it
    imports here: the same packages, the same pruning, the same bytecode. Returns its python/ folder."""
    import platform
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    machine = {"x86_64": "x86_64", "AMD64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}[platform.machine()]
    env = {**os.environ, "PATH": f"{Path(sys.executable).resolve().parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["make", "--no-print-directory", "-C", str(LAYER), "build-EngageLayer", f"ARTIFACTS_DIR={out}",
                    f"PLATFORM=manylinux2014_{machine}"], env=env, check=True, capture_output=True, text=True)
    return out / "python"


def strip_bytecode(layer: Path, out: Path) -> Path:
    """A copy of `layer` without its .pyc files: the layer as it was shipped before it carried them."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(layer, out, ignore=shutil.ignore_patterns("__pycache__"))
    return out


def _process_seconds(code: str, code_dir: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=code_dir, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def pairs(code_dir: Path, env: dict[str, str], count: int,
          yardstick_env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """(median handler seconds, median yardstick seconds, median of per-pair ratios)."""
    base_env = yardstick_env or env
    _process_seconds("import app", code_dir, env)  # reads the files into the page cache; not measured
    handler, yardstick, ratios = [], [], []
    for index in range(count):
        if index % 2:
            own = _process_seconds("import app", code_dir, env)
            base = _process_seconds("import boto3", code_dir, base_env)
        else:
            base = _process_seconds("import boto3", code_dir, base_env)
            own = _process_seconds("import app", code_dir, env)
        handler.append(own)
        yardstick.append(base)
        ratios.append(own / base)
    return statistics.median(handler), statistics.median(yardstick), statistics.median(ratios)


def beyond_boto3(code_dir: Path, env: dict[str, str]) -> dict[str, float]:
    """ms of import self time after `import boto3`, by top-level package (one -X importtime run)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import boto3; import app"], cwd=code_dir,
                          env=env, capture_output=True, text=True, check=True)
    lines = done.stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if re.search(r"\|\s*boto3$", line))
    shares: dict[str, float] = {}
    for line in lines[start + 1:]:
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*([\w.]+)$", line)
        if match:
            package = match.group(2).split(".")[0]
            shares[package] = shares.get(package, 0.0) + int(match.group(1)) / 1000
    return shares


def _zipped_size(files: list[Path], root: Path) -> int:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in files:
            archive.write(file, file.relative_to(root))
    return len(buffer.getvalue())


def layer_shares(built: Path) -> list[tuple[str, int, int]]:
    """(distribution, bytes unzipped, bytes zipped) for every distribution in a built layer, largest first."""
    site = built / "python"
    owned: dict[Path, str] = {}
    for record in site.glob("*.dist-info/RECORD"):
        name = record.parent.name.split("-")[0]
        for row in record.read_text().splitlines():
            path = (site / row.split(",")[0]).resolve()
            if path.is_file():
                owned[path] = name
    groups: dict[str, list[Path]] = {}
    for file in built.rglob("*"):
        if file.is_file():
            groups.setdefault(owned.get(file.resolve(), "engage (own code) and other files"), []).append(file)
    shares = [(name, sum(f.stat().st_size for f in files), _zipped_size(files, built)) for name, files in groups.items()]
    return sorted(shares, key=lambda share: -share[1])


def _sam_build_layer(context) -> Path | None:
    sam = ROOT / ".venv-sam" / "bin" / "sam"
    if not sam.exists():
        context.notes.append("layer size skipped: SAM CLI not installed (make install)")
        return None
    build_dir = ROOT / ".aws-sam" / "bench"
    # sam build wants a real python3.13 on PATH (the runtime's), not a pyenv shim: this run's own interpreter.
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1",
           "PATH": f"{Path(sys.executable).resolve().parent}{os.pathsep}{os.environ['PATH']}"}
    built = subprocess.run([str(sam), "build", "EngageLayer", "--template", str(ROOT / "template.yaml"),
                            "--build-dir", str(build_dir), "--cached", "--cache-dir", str(ROOT / ".aws-sam" / "cache")],
                           cwd=ROOT, env=env, check=False, capture_output=True, text=True)
    if built.returncode:
        tail = " ".join((built.stderr or built.stdout).strip().splitlines()[-2:])[:300]
        context.notes.append(f"layer size skipped: sam build failed in this run ({tail})")
        return None
    return build_dir / "EngageLayer"


def run(context) -> list[Figure]:
    count = 15 if context.full else 7
    figures, table = [], {}
    try:
        layer = build_native_layer()
    except subprocess.CalledProcessError as failed:
        tail = " ".join((failed.stderr or failed.stdout or "").strip().splitlines()[-2:])[:300]
        context.notes.append(f"cold start skipped: the layer's recipe failed for this machine ({tail})")
        return figures
    method = (f"fresh processes, median of {count} interleaved pairs' ratios; the layer as its recipe builds it, "
              "read-only as Lambda mounts it; handler {own:,.0f} ms, yardstick {base:,.0f} ms (medians, spawn to exit)")
    for name, resource in sorted(template.resources("AWS::Serverless::Function").items()):
        code = ROOT / resource["Properties"]["CodeUri"]
        env = as_lambda_reads(lambda_environment(resource, code, layer))
        own, base, ratio = pairs(code, env, count, yardstick_environment(env, code))
        figures.append(Figure("Cold start", f"{name}: handler import / `import boto3` yardstick", round(ratio, 2), "x",
                              method.format(own=own * 1000, base=base * 1000),
                              counted=True, tolerance=TOLERANCE, floor=TARGET, floor_method="target"))
        table[name] = beyond_boto3(code, env)
    # What shipping the bytecode saves: one handler again, against the same layer without its .pyc files.
    resource = template.resources("AWS::Serverless::Function")["IngestFunction"]
    code = ROOT / resource["Properties"]["CodeUri"]
    bare = strip_bytecode(layer, NATIVE_LAYER / "without-bytecode")
    env = as_lambda_reads(lambda_environment(resource, code, bare))
    own, base, ratio = pairs(code, env, count, yardstick_environment(env, code))
    figures.append(Figure("Cold start", "IngestFunction, layer without bytecode: handler import / `import boto3` "
                          "yardstick", round(ratio, 2), "x", method.format(own=own * 1000, base=base * 1000)
                          + "; the same layer with every __pycache__ removed, as it shipped before session 14"))
    # What X-Ray tracing costs (the stack's Tracing parameter, Disabled by default): the same handler traced.
    env = as_lambda_reads({**lambda_environment(resource, code, layer), "TRACING": "Active"})
    own, base, ratio = pairs(code, env, count, yardstick_environment(env, code))
    figures.append(Figure("Cold start", "IngestFunction, Tracing=Active: handler import / `import boto3` yardstick",
                          round(ratio, 2), "x", method.format(own=own * 1000, base=base * 1000)
                          + "; the stack deployed with Tracing=Active (powertools Tracer with the X-Ray SDK)"))
    packages = sorted({p for shares in table.values() for p in shares},
                      key=lambda p: -max(shares.get(p, 0) for shares in table.values()))
    top = [p for p in packages if max(shares.get(p, 0) for shares in table.values()) >= 5][:10]
    context.extra.append(("Cold start: import time beyond `import boto3`, by package (ms, one -X importtime run)", [
        "| function | total | " + " | ".join(top) + " | other |", "| --- |" + " ---: |" * (len(top) + 2),
        *(f"| {name} | {sum(shares.values()):,.0f} | " + " | ".join(f"{shares.get(p, 0):,.0f}" for p in top)
          + f" | {sum(v for p, v in shares.items() if p not in top):,.0f} |" for name, shares in table.items())]))
    built = _sam_build_layer(context)
    if built is None:
        return figures
    shares = layer_shares(built)
    raw, zipped = sum(s[1] for s in shares), _zipped_size([f for f in built.rglob("*") if f.is_file()], built)
    figures.append(Figure("Layer size (sam build)", "EngageLayer", round(zipped / 1e6, 2), "MB zipped",
                          f"sam build output zipped with deflate (what Lambda stores); {raw / 1e6:.1f} MB unzipped"))
    figures.append(Figure("Layer size (sam build)", "EngageLayer unzipped", round(raw / 1e6, 2), "MB",
                          "sam build output on disk (Lambda's limit: 250 MB unzipped, function and layers)"))
    context.extra.append(("Layer size by distribution (sam build of EngageLayer)", [
        "| distribution | MB unzipped | MB zipped | share of unzipped |", "| --- | ---: | ---: | ---: |",
        *(f"| {name} | {size / 1e6:.2f} | {packed / 1e6:.2f} | {size / raw:.0%} |" for name, size, packed in shares)]))
    return figures
