"""The HTTP API against its own OpenAPI document, fuzzed by schemathesis through Envoy.

Schemathesis (the CLI, as a user runs it) reads GET /openapi.json from the edge of the
e2e mesh and runs every operation through every phase (examples, coverage, fuzzing and
the stateful phase that follows the document's links) with every check: no 5xx, status
codes, content types, headers and bodies as documented, schema-valid requests accepted
and schema-invalid ones rejected, authentication enforced, 405 for undeclared methods,
resources available after creation. Any failure fails the test, with the CLI's report.

The suite runs a bounded configuration (PI_FUZZ_MAX_EXAMPLES, default 10 cases per
operation and phase); `make fuzz` runs the same test at full size (1000).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

REPO = Path(__file__).resolve().parents[2]
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
MAX_EXAMPLES = int(os.environ.get("PI_FUZZ_MAX_EXAMPLES", "10"))
SEED = os.environ.get("PI_FUZZ_SEED", "20261207")


def fuzz(base_url: str, api_key_id: str, api_key_secret: str, report: Path) -> tuple[int, str]:
    """Runs the schemathesis CLI against `base_url`; (exit code, output)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "tests" / "support"),
        "SCHEMATHESIS_HOOKS": "fuzz_hooks",
        "PI_FUZZ_BASE_URL": base_url,
        "PI_FUZZ_API_KEY_ID": api_key_id,
        "PI_FUZZ_API_KEY_SECRET": api_key_secret,
    }
    command = [
        str(SCHEMATHESIS),
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        SEED,
        "--workers",
        # One worker: hypothesis' regex compilation is not thread-safe on Python 3.11
        # (SystemError "AST constructor recursion depth mismatch" with several).
        os.environ.get("PI_FUZZ_WORKERS", "1"),
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    return result.returncode, result.stdout + result.stderr


def summary(output: str) -> str:
    """The CLI's SUMMARY section: operations, phases, failures, warnings, test cases."""
    _, marker, rest = output.partition(" SUMMARY ")
    return f"SUMMARY {rest}".strip() if marker else output[-3000:]


def junit_cases(report: Path) -> tuple[set[str], int]:
    """(names of the test cases, how many failed or errored) in the CLI's JUnit report:
    one case per operation ("POST /v1/payments") and one for the stateful phase."""
    root = ElementTree.parse(report).getroot()
    cases = root.findall(".//testcase")
    failed = [c for c in cases if c.find("failure") is not None or c.find("error") is not None]
    return {str(c.get("name")) for c in cases}, len(failed)


@pytest.mark.timeout(0 if MAX_EXAMPLES > 100 else 900)
def test_every_operation_fuzzed_with_every_check_finds_nothing(
    mesh: Any, openapi: dict[str, Any], tmp_path: Path
) -> None:
    merchant = mesh.create_merchant()
    report = tmp_path / "junit.xml"
    code, output = fuzz(mesh.http_base, merchant.api_key_id, merchant.api_key_secret, report)
    print(f"\nschemathesis --checks all, {MAX_EXAMPLES} examples per operation, seed {SEED}")
    print(summary(output))
    assert code == 0, output[-20000:]
    operations = {
        f"{method.upper()} {path}" for path, item in openapi["paths"].items() for method in item
    }
    names, failed = junit_cases(report)
    assert names == operations | {"Stateful tests"}, output[-5000:]
    assert failed == 0, output[-5000:]
