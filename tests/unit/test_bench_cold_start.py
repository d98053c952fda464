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
