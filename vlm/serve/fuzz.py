"""``python -m vlm.serve.fuzz``: the long fuzz run of the HTTP API, from its own OpenAPI schema, with Schemathesis'
own runner (``schemathesis run``; a test dependency: ``pip install -e ".[test]"``).

Starts a local server (``vlm.serve.launch``; ``--model``, an API key, a small ``--max-tokens-cap`` so accepted
requests stay quick), runs every Schemathesis phase (examples, coverage: the boundary values of every field,
fuzzing: ``--examples`` generated cases per operation, schema-valid and schema-violating, and stateful
sequences), all checks but positive-data acceptance (a schema cannot say which base64 strings are images), a
per-request timeout (a hang fails the case), then checks that the server is still up, healthy and idle and that
its log has no 5xx and no traceback. Prints a JSON summary (test cases, failures, per-phase status, the
server's counters) and exits non-zero on any failure. The bounded CI run is ``tests/test_fuzz_api.py``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from .launch import LocalServer, resolve_model

KEY = "sk-fuzz"


def run_schemathesis(url: str, report_dir: Path, *, examples: int, seed: int, workers: int = 1,
                     request_timeout: float = 30, max_time: int | None = None,
                     phases: str = "examples,coverage,fuzzing,stateful") -> dict:
    """``schemathesis run`` against ``url``; returns its JSON report (plus ``output``: the tail of its text)."""
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
           "--header", f"Authorization: Bearer {KEY}", "--max-examples", str(examples), "--seed", str(seed),
           "--phases", phases, "--exclude-checks", "positive_data_acceptance", "--request-timeout",
           str(request_timeout), "--workers", str(workers), "--report", "json", "--report-dir", str(report_dir),
           "--no-color"]
    if max_time:
        cmd += ["--max-time", str(max_time)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    reports = sorted(report_dir.glob("*.json"))
    if not reports:
        raise RuntimeError(f"schemathesis wrote no report (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n"
                           f"{proc.stderr[-4000:]}")
    report = json.loads(reports[-1].read_text())
    report["output"] = proc.stdout[-6000:]
    return report


def fuzz(model: str, *, examples: int, seed: int, workers: int = 1, max_time: int | None = None,
         phases: str = "examples,coverage,fuzzing,stateful", out_dir: Path | None = None) -> dict:
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="vlm-fuzz-"))
    server = LocalServer(resolve_model(model, out_dir), "--api-key", KEY, "--concurrency", str(max(1, workers)),
                         "--queue-size", "16", "--max-tokens-cap", "8", "--request-timeout", "30",
                         "--max-images", "2", log_path=out_dir / "server.log")
    try:
        t0 = time.monotonic()
        report = run_schemathesis(server.url, out_dir / "schemathesis", examples=examples, seed=seed,
                                  workers=workers, max_time=max_time, phases=phases)
        wall = time.monotonic() - t0
        alive = server.proc.poll() is None
        health = httpx.get(f"{server.url}/health", timeout=10) if alive else None
        idle = server.wait_idle(timeout=60) if alive else {}
        log = "".join(server.lines)
    finally:
        rc = server.stop()
    cases = report["test_cases"]
    summary = {
        "model": model, "seed": seed, "examples_per_operation": examples, "phases": phases, "wall_s": round(wall, 1),
        "test_cases": cases["generated"], "cases_with_failures": cases["with_failures"],
        "unique_failures": cases["unique_failures"], "errored": cases["errored"],
        "phase_status": {k: v["status"] for k, v in report["phases"].items()},
        "failures": report["failures"][:10], "errors": report["errors"][:10],
        "stop_reason": report["stop_reason"], "schemathesis_exit": report["exit_code"],
        "server_alive": alive, "health_status": health.status_code if health is not None else None,
        "server": {k: idle.get(k) for k in ("submitted", "completed", "cancelled", "failed", "rejected")},
        "server_5xx_lines": log.count(" -> 5"), "server_tracebacks": log.count("Traceback"),
        "server_exit": rc, "out_dir": str(out_dir),
    }
    summary["passed"] = (report["exit_code"] == 0 and alive and summary["health_status"] == 200 and rc == 0
                         and not summary["server_5xx_lines"] and not summary["server_tracebacks"])
    if not summary["passed"]:
        summary["schemathesis_output"] = report["output"]
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlm.serve.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vlm-tiny", help="a model name or folder, or 'tiny' (a tiny random model)")
    p.add_argument("--examples", type=int, default=1000, help="generated cases per operation (fuzzing phase)")
    p.add_argument("--seed", type=int, default=20261202)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-time", type=int, default=None, help="seconds for the whole run")
    p.add_argument("--phases", default="examples,coverage,fuzzing,stateful")
    p.add_argument("--out", default=None, help="folder for the server log and Schemathesis' report")
    args = p.parse_args(argv)
    summary = fuzz(args.model, examples=args.examples, seed=args.seed, workers=args.workers,
                   max_time=args.max_time, phases=args.phases, out_dir=Path(args.out) if args.out else None)
    print(json.dumps(summary, indent=2))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
