"""Fuzz the OpenAI-compatible API from its own OpenAPI schema (``/openapi.json``) with Schemathesis.

A real ``vlm serve`` (tiny random model, API key, ``--max-tokens-cap 8`` so that accepted requests stay quick)
gets schema-valid and schema-violating requests for every operation, undeclared methods and requests without
the key. Schemathesis checks every response: no 5xx, statuses and bodies as the schema documents them,
schema-violating requests rejected with a 4xx, 405 for undeclared methods, 401 without the key (positive-data
acceptance is not checked: a schema cannot say which base64 strings are images, so valid-looking requests
may rightly get a 400). Every call has a 30 s timeout (a hang fails it), the server must be alive after each
one, and afterwards it must be healthy and idle, with no 5xx and no traceback in its log.

Bounded and seeded for CI. The long run (every phase, coverage's boundary values included):
``VLM_FUZZ_EXAMPLES=1000 VLM_FUZZ_FULL=1 python -m pytest tests/test_fuzz_api.py -s``, or
``python -m vlm.serve.fuzz --examples 5000`` (Schemathesis' own runner, with its JSON report).
"""
from __future__ import annotations

import collections
import json
import os

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from vlm.serve.launch import LocalServer

KEY = "sk-fuzz"
EXAMPLES = int(os.environ.get("VLM_FUZZ_EXAMPLES", "30"))  # per operation and phase
SEED = int(os.environ.get("VLM_FUZZ_SEED", "20261202"))
FULL = os.environ.get("VLM_FUZZ_FULL", "") not in ("", "0")
STATUSES: collections.Counter = collections.Counter()


@pytest.fixture(scope="module")
def fuzz_server(tiny_vlm, tmp_path_factory):
    model_dir = tiny_vlm.save(tmp_path_factory.mktemp("fuzz-model") / "tiny-vlm")
    srv = LocalServer(model_dir, "--api-key", KEY, "--concurrency", "1", "--queue-size", "8", "--max-tokens-cap", "8",
                      "--request-timeout", "30", "--max-images", "2", "--threads", "1",
                      log_path=tmp_path_factory.mktemp("fuzz-log") / "server.log")
    yield srv
    if srv.proc.poll() is None:
        srv.stop()


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    config = SchemathesisConfig.from_dict({
        "seed": SEED, "headers": {"Authorization": f"Bearer {KEY}"}, "request-timeout": 30,
        "generation": {"max-examples": EXAMPLES},
        "phases": {"coverage": {"enabled": FULL}, "stateful": {"enabled": FULL}},
        "checks": {"positive_data_acceptance": {"enabled": False}},
    })
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_from_its_openapi_schema(case, fuzz_server):
    resp = case.call_and_validate(timeout=30)
    STATUSES[f"{case.method} {case.path} {resp.status_code}"] += 1
    assert fuzz_server.proc.poll() is None, fuzz_server.log()


def test_server_survived_the_fuzz(fuzz_server):
    """Runs after the fuzz (file order): the server is up, healthy, idle, and logged no 5xx or traceback."""
    assert fuzz_server.proc.poll() is None, fuzz_server.log()
    health = httpx.get(f"{fuzz_server.url}/health", timeout=10)
    assert health.status_code == 200, health.text
    idle = fuzz_server.wait_idle(timeout=60)
    log = "".join(fuzz_server.lines)
    assert " -> 5" not in log and "Traceback" not in log, fuzz_server.log(200)
    total = sum(STATUSES.values())
    summary = {"requests": total, "seed": SEED, "examples": EXAMPLES, "full": FULL,
               "by_status": dict(collections.Counter(k.rsplit(" ", 1)[1] for k in STATUSES.elements())),
               "generations": idle["completed"], "server_failed": idle["failed"]}
    print("fuzz:", json.dumps(summary))
    assert idle["failed"] == 0
    operations = {k.rsplit(" ", 1)[0] for k in STATUSES}
    assert operations == {"GET /health", "GET /v1/models", "GET /v1/models/{model_id}", "POST /v1/chat/completions",
                          "POST /v1/embeddings"}
    chats = {k.rsplit(" ", 1)[1]: n for k, n in STATUSES.items() if k.startswith("POST /v1/chat")}
    assert sum(chats.values()) >= EXAMPLES // 2 and chats.get("200") and chats.get("400"), chats  # both kinds
