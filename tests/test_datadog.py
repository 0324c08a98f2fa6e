"""The ddtrace reporter, end to end: a traced request's spans, as Datadog's APM
test agent (``ddapm-test-agent``, started here on a loopback port) receives them."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Looked up, not imported: this process must stay without ddtrace (see the last test).
if not all(importlib.util.find_spec(name) for name in ("ddtrace", "ddapm_test_agent")):
    pytest.skip("needs the datadog extra and ddapm-test-agent", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read() or b"null")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    binary = Path(sys.executable).parent / "ddapm-test-agent"
    log = (tmp_path_factory.mktemp("agent") / "agent.log").open("w")
    process = subprocess.Popen(
        [str(binary), f"--port={port}"], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _get(f"{url}/test/traces")
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail("the Datadog test agent did not start")
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _run_site(agent_url: str) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DD_TRACE_AGENT_URL": agent_url,
        "DD_SERVICE": "perfkit-test",
        "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
        "DD_REMOTE_CONFIGURATION_ENABLED": "false",
        "DD_TRACE_STARTUP_LOGS": "false",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "datadog_app.py")],
        env=env, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"status": 200}


def _spans(agent_url: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        traces = _get(f"{agent_url}/test/traces") or []
        spans = [span for trace in traces for span in trace]
        if any(span.get("name") == "django.request" for span in spans):
            return spans
        time.sleep(0.2)
    pytest.fail("no django.request span reached the test agent")


def test_the_root_span_carries_perfkit_metrics(agent: str) -> None:
    _run_site(agent)
    spans = _spans(agent)
    (root,) = [span for span in spans if span["name"] == "django.request"]
    metrics = root["metrics"]
    assert metrics["perfkit.db.count"] == 4
    assert metrics["perfkit.db.duplicates"] == 1
    assert metrics["perfkit.db.time_ms"] > 0
    assert metrics["perfkit.cache.hits"] == 0
    assert metrics["perfkit.nplusone.count"] == 1  # SELECT %s with 3 values, one place
    assert metrics["perfkit.ratelimited"] == 0
    assert metrics["perfkit.slow"] == 0
    (section,) = [span for span in spans if span["name"] == "perfkit.timer"]
    assert section["resource"] == "pricing"
    assert section["trace_id"] == root["trace_id"]
    assert section["parent_id"] != 0


def test_without_ddtrace_imported_the_reporter_does_nothing() -> None:
    from django.http import HttpResponse
    from django.test import RequestFactory

    from django_perfkit.record import RequestRecord
    from django_perfkit.reporters.datadog import active_tracer, report_datadog

    assert "ddtrace" not in sys.modules  # the suite never imports it
    assert active_tracer() is None
    report_datadog(RequestRecord(), RequestFactory().get("/"), HttpResponse())
    assert "ddtrace" not in sys.modules  # and nothing imported it
