"""The in-process Lambda runtime on its own: module isolation, environment, errors, code reload."""
from __future__ import annotations

import os
import textwrap

from localcloud.runtime import FunctionSpec, Runtime


def function(tmp_path, name: str, files: dict[str, str], env: dict[str, str] | None = None) -> FunctionSpec:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    for filename, text in files.items():
        (folder / filename).write_text(textwrap.dedent(text))
    return FunctionSpec(logical_id=name, name=f"stack-{name}-X", arn=f"arn:aws:lambda:us-east-1:1:function:stack-{name}-X",
                        handler="app.handler", code_dir=folder, layer_dirs=[], environment=env or {},
                        memory_mb=256, timeout_s=5)


def test_same_named_modules_of_two_functions_never_collide(tmp_path):
    # Given two functions that each import their own `helper` module
    runtime = Runtime({})
    for name, word in (("one", "uno"), ("two", "dos")):
        runtime.add(function(tmp_path, name, {
            "app.py": "from helper import WORD\ndef handler(event, context):\n    return WORD\n",
            "helper.py": f"WORD = {word!r}\n"}))
    # When both are invoked, in turn and again
    results = [runtime.invoke(f"stack-{n}-X", {}).payload for n in ("one", "two", "one", "two")]
    # Then each saw its own module, and neither leaked into the process
    assert results == ["uno", "dos", "uno", "dos"]
    assert "helper" not in __import__("sys").modules


def test_invocation_sees_exactly_its_environment_and_the_process_gets_its_own_back(tmp_path):
    # Given a function with its own environment
    runtime = Runtime({"AWS_ENDPOINT_URL": "http://127.0.0.1:1"})
    runtime.add(function(tmp_path, "env", {"app.py": """
        import os
        def handler(event, context):
            return {k: os.environ.get(k) for k in ("ONLY_HERE", "AWS_ENDPOINT_URL", "AWS_LAMBDA_FUNCTION_NAME")}
        """}, env={"ONLY_HERE": "yes"}))
    before = dict(os.environ)
    # When it runs
    result = runtime.invoke("arn:aws:lambda:us-east-1:1:function:stack-env-X", {})
    # Then it saw its variables and the runtime's, and the process environment is unchanged after
    assert result.payload == {"ONLY_HERE": "yes", "AWS_ENDPOINT_URL": "http://127.0.0.1:1",
                              "AWS_LAMBDA_FUNCTION_NAME": "stack-env-X"}
    assert dict(os.environ) == before


def test_handler_errors_and_unserializable_results_are_lambda_errors(tmp_path):
    runtime = Runtime({})
    runtime.add(function(tmp_path, "boom", {"app.py": "def handler(event, context):\n    raise KeyError('k')\n"}))
    runtime.add(function(tmp_path, "odd", {"app.py": "def handler(event, context):\n    return {1, 2}\n"}))
    boom = runtime.invoke("stack-boom-X", {})
    assert boom.error["errorType"] == "KeyError" and not boom.ok
    assert runtime.invoke("stack-odd-X", {}).error["errorType"] == "Runtime.MarshalError"


def test_edited_code_is_loaded_again_on_the_next_call(tmp_path):
    # Given a function invoked once
    runtime = Runtime({})
    spec = function(tmp_path, "live", {"app.py": "from helper import V\ndef handler(event, context):\n    return V\n",
                                       "helper.py": "V = 1\n"})
    runtime.add(spec)
    assert runtime.invoke(spec.name, {}).payload == 1
    # When its sibling module is edited (as during `make dev`)
    helper = spec.code_dir / "helper.py"
    helper.write_text("V = 2\n")
    stat = helper.stat()
    os.utime(helper, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    # Then the next call runs the new code
    assert runtime.invoke(spec.name, {}).payload == 2
