"""The committed generated/ is exactly what `make proto` produces from protos/ now."""

from __future__ import annotations

import filecmp
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
GENERATED = REPO / "generated"
SCRIPT = REPO / "scripts" / "gen_protos.py"
LOWER_CAMEL = re.compile(r"^[a-z][a-zA-Z0-9]*$")


def _files(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("proto") / "generated"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"gen_protos failed:\n{result.stdout}{result.stderr}"
    return out


def test_generated_matches_protos(fresh: Path) -> None:
    committed, regenerated = _files(GENERATED), _files(fresh)
    problems = [f"missing from generated/: {n}" for n in sorted(regenerated - committed)]
    problems += [f"stale extra file in generated/: {n}" for n in sorted(committed - regenerated)]
    problems += [
        f"differs: generated/{name}"
        for name in sorted(committed & regenerated)
        if not filecmp.cmp(GENERATED / name, fresh / name, shallow=False)
    ]
    assert not problems, "generated/ is stale; run `make proto`:\n" + "\n".join(problems)


def _property_names(node: Any) -> list[str]:
    names: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                names.extend(value)
            names.extend(_property_names(value))
    elif isinstance(node, list):
        for item in node:
            names.extend(_property_names(item))
    return names


def test_openapi_uses_lower_camel_json_names() -> None:
    document = json.loads((GENERATED / "openapi" / "pi.openapi.json").read_text())
    assert document["openapi"] == "3.1.0"
    assert document["paths"], "no HTTP routes in the OpenAPI document"
    names = _property_names(document["components"]["schemas"])
    wrong = sorted({n for n in names if n != "@type" and not LOWER_CAMEL.match(n)})
    assert names and not wrong, f"not lowerCamelCase: {wrong}"
