"""The cold-start scenario's environment is the function's Lambda environment, and the layer's
size is split by the distribution that owns each file."""
from bench.report import ROOT
from bench.scenarios import cold_start
from localcloud import template


def test_environment_is_lambdas_with_the_templates_globals_and_the_functions_own_variables():
    resource = template.resources("AWS::Serverless::Function")["ManagementApiFunction"]
    code = ROOT / resource["Properties"]["CodeUri"]
    env = cold_start.lambda_environment(resource, code)
    # Lambda's own variables (tracing on) and the code laid out as Lambda lays it out
    assert env["LAMBDA_TASK_ROOT"] == str(code) and env["PYTHONPATH"].split(":") == [str(code), str(cold_start.LAYER)]
    assert env["AWS_XRAY_DAEMON_ADDRESS"] and env["AWS_LAMBDA_FUNCTION_NAME"] == "management_api"
    # Globals (a parameter's default for a Ref) and the function's own variables (placeholders for resources)
    assert env["POWERTOOLS_SERVICE_NAME"] == "engage" and env["POWERTOOLS_LOG_LEVEL"] == "INFO"
    assert env["JOURNEYS_TABLE"] == "bench" and env["JOURNEY_STEPS_FUNCTION_ARN"] == "bench"
    assert not any(key.startswith("POWERTOOLS_TRACE") for key in env)


def test_layer_shares_attribute_each_file_to_its_distribution(tmp_path):
    site = tmp_path / "python"
    (site / "liquid").mkdir(parents=True)
    (site / "liquid" / "__init__.py").write_text("x" * 1000)
    (site / "python_liquid-2.3.6.dist-info").mkdir()
    (site / "python_liquid-2.3.6.dist-info" / "RECORD").write_text("liquid/__init__.py,sha256=,1000\n")
    (site / "engage").mkdir()
    (site / "engage" / "__init__.py").write_text("y" * 300)
    shares = {name: size for name, size, _ in cold_start.layer_shares(tmp_path)}
    assert shares["python_liquid"] == 1000
    assert shares["engage (own code) and other files"] == 300 + len("liquid/__init__.py,sha256=,1000\n")


def test_the_handlers_process_reads_the_layer_read_only_and_the_yardstick_has_no_layer(tmp_path):
    resource = template.resources("AWS::Serverless::Function")["IngestFunction"]
    code = ROOT / resource["Properties"]["CodeUri"]
    layer = tmp_path / "python"
    env = cold_start.as_lambda_reads(cold_start.lambda_environment(resource, code, layer))
    # Lambda mounts code and layers read-only: nothing compiled at a cold start is kept
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONPATH"].split(":") == [str(code), str(layer)]
    # The yardstick is the runtime's boto3 alone: the same variables, no layer on the path
    base = cold_start.yardstick_environment(env, code)
    assert base["PYTHONPATH"] == str(code) and {k: v for k, v in base.items() if k != "PYTHONPATH"} == {
        k: v for k, v in env.items() if k != "PYTHONPATH"}


def test_the_layer_recipe_ships_bytecode_that_a_read_only_import_uses_whatever_the_source_mtime(tmp_path):
    import os
    import subprocess
    import sys

    recipe = (cold_start.LAYER / "Makefile").read_text()
    # The recipe compiles after it prunes (the __pycache__ removal would otherwise drop the bytecode)
    assert recipe.index("-name __pycache__") < recipe.index("compileall") and "unchecked-hash" in recipe
    # And unchecked-hash bytecode is used when the source's mtime changed (a zip keeps it at 2 s steps)
    package = tmp_path / "python" / "shipped"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("ANSWER = 42\n")
    subprocess.run([sys.executable, "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash",
                    str(tmp_path / "python")], check=True)
    (package / "__init__.py").write_text("raise SystemExit('compiled from source')\n")
    os.utime(package / "__init__.py", (0, 0))
    done = subprocess.run([sys.executable, "-c", "import shipped; print(shipped.ANSWER)"], check=False,
                          capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(tmp_path / "python"),
                                          "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.stdout.strip() == "42", done.stderr


def test_strip_bytecode_copies_the_layer_without_its_pyc_files(tmp_path):
    layer = tmp_path / "layer"
    (layer / "pkg" / "__pycache__").mkdir(parents=True)
    (layer / "pkg" / "__init__.py").write_text("")
    (layer / "pkg" / "__pycache__" / "__init__.cpython-313.pyc").write_bytes(b"\0")
    bare = cold_start.strip_bytecode(layer, tmp_path / "bare")
    assert (bare / "pkg" / "__init__.py").exists() and not list(bare.rglob("*.pyc"))
