"""What each handler module imports on a cold start, checked in a fresh interpreter laid out as
Lambda lays it out (CodeUri and the layer on the path, Lambda's variables, tracing on).

These guard structure, not time (bench/scenarios/cold_start.py measures the time): a module
that crept back into a handler's import graph shows up here as a name in sys.modules.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYER = ROOT / "layers" / "engage" / "python"
FUNCTIONS = sorted(path.parent.name for path in (ROOT / "functions").glob("*/app.py"))
# X-Ray's patch_all imports every library it can instrument; Engage only calls AWS (botocore, pynamodb).
OPENAPI_GENERATION = ("engage.openapi.build", "engage.openapi.components",
                      "aws_lambda_powertools.event_handler.openapi.schema_generator")
UNUSED_BY_ANY_HANDLER = ("requests", "sqlite3", "aws_xray_sdk.ext.requests", "aws_xray_sdk.ext.sqlite3")
# Only what some paths need, loaded on those paths: python-liquid (and babel) when a template is first
# parsed or rendered (engage.messaging.templates), never by importing a handler.
ON_FIRST_USE = ("liquid", "babel")


def imported_by(code_dir: Path, statement: str) -> set[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("POWERTOOLS_TRACE")}
    env.update(PYTHONPATH=f"{code_dir}{os.pathsep}{LAYER}", LAMBDA_TASK_ROOT=str(code_dir),
               AWS_LAMBDA_FUNCTION_NAME=code_dir.name, AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1")
    script = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], cwd=code_dir, env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("function", FUNCTIONS)
def test_handler_traces_aws_calls_without_importing_unused_libraries(function):
    modules = imported_by(ROOT / "functions" / function, "import app")
    # Tracing is on (Lambda's environment) and AWS calls are instrumented ...
    assert {"aws_xray_sdk.ext.botocore.patch", "aws_xray_sdk.ext.pynamodb.patch"} <= modules
    # ... but nothing else X-Ray could patch is imported for it.
    assert not modules.intersection(UNUSED_BY_ANY_HANDLER)
    # The OpenAPI document is generated ahead (engage openapi), never built on a cold start.
    assert not modules.intersection(OPENAPI_GENERATION)
    assert not modules.intersection(ON_FIRST_USE)


def test_templates_load_liquid_when_first_used():
    modules = imported_by(ROOT / "functions" / "message_sender",
                          "import app\nfrom engage.messaging import templates\n"
                          "templates.check_liquid('{{ x | json }}', field='body')")
    assert {"liquid", "babel"} <= modules


def test_settings_do_not_need_pydantic():
    # Every function imports engage.config; it must stay cheap (a dataclass, no validator to build).
    modules = imported_by(ROOT / "functions" / "ingest", "from engage.config import settings\nsettings()")
    assert "pydantic" not in modules
