"""The bench's log bytes are what CloudWatch Logs ingests: the handler's lines with their per-event
metadata, plus Lambda's own START, END and REPORT lines for every invocation."""
from bench import harness


def test_an_invocation_bills_its_lines_their_metadata_and_lambdas_platform_lines(monkeypatch):
    import tests.integration.audience_support as support

    def lambda_handler(event, context):
        print('{"level":"INFO","message":"one"}')
        print("x" * 10, end="")  # a write without a newline is part of the next event, not one more
        print("y")
        return {"ok": True}

    monkeypatch.setattr(support, "handler", lambda name: lambda_handler)
    lambdas = harness.Lambdas()
    assert lambdas.invoke("anything", {}) == {"ok": True}
    written = len('{"level":"INFO","message":"one"}\n') + len("x" * 10 + "y\n")
    assert lambdas.stats["anything"].log_bytes == written + 2 * harness.LOG_EVENT_OVERHEAD + harness.PLATFORM_LOG_BYTES
    # Lambda's three events: START, END, REPORT (its XRAY line is part of REPORT's event), each with metadata
    assert harness.PLATFORM_LOG_BYTES == sum(len(e) for e in harness.PLATFORM_LOG_EVENTS) + 3 * 26
    # 344 bytes with the default template; the XRAY line (Tracing=Active) adds 93
    xray = len(harness._XRAY) if harness._TRACING_BY_DEFAULT else 0
    assert 300 < harness.PLATFORM_LOG_BYTES - xray < 400
