"""The web's typed client (web/src/api/schema.gen.ts) is exactly what `make web` (and
`make proto`) generate from the OpenAPI document the edge serves, and the generator takes
either a Swagger 2.0 document (converted) or an OpenAPI 3 one (as it is)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WEB = REPO / "web"
GENERATOR = WEB / "scripts" / "gen-client.mjs"
CLIENT = WEB / "src" / "api" / "schema.gen.ts"


@pytest.fixture(scope="module")
def node() -> str:
    binary = shutil.which("node")
    assert binary, "node is needed (it is for buf too): apt-get install nodejs"
    assert (WEB / "node_modules" / "openapi-typescript").is_dir(), (
        "web/node_modules is missing: run `make setup`"
    )
    return binary


def _generate(node: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [node, str(GENERATOR), *args], cwd=WEB, capture_output=True, text=True, timeout=120
    )


def test_the_committed_typed_client_is_fresh(node: str) -> None:
    result = _generate(node, "--check")
    assert result.returncode == 0, f"{result.stderr}{result.stdout}(run `make web` and commit)"


def test_the_check_fails_on_a_stale_client(node: str, tmp_path: Path) -> None:
    stale = tmp_path / "schema.gen.ts"
    stale.write_text(CLIENT.read_text().replace("ListTransactions", "ListTransaction"))
    result = _generate(node, "--check", "--out", str(stale))
    assert result.returncode == 1
    assert "stale" in result.stderr


def _document(version: dict[str, str], body: dict[str, object]) -> dict[str, object]:
    return {
        **version,
        "info": {"title": "t", "version": "1"},
        "paths": {
            "/v1/things/{id}": {
                "get": {
                    "operationId": "GetThing",
                    "parameters": [{"name": "id", "in": "path", "required": True, **body}],
                    "responses": {"200": {"description": "ok"}},
                }
            }
        },
    }


@pytest.mark.parametrize(
    ("version", "parameter"),
    [
        ({"swagger": "2.0"}, {"type": "string"}),
        ({"openapi": "3.1.0"}, {"schema": {"type": "string"}}),
    ],
    ids=["swagger-2.0-converted", "openapi-3.1-as-is"],
)
def test_swagger_2_and_openapi_3_documents_both_generate(
    node: str, tmp_path: Path, version: dict[str, str], parameter: dict[str, object]
) -> None:
    source = tmp_path / "doc.json"
    source.write_text(json.dumps(_document(version, parameter)))
    out = tmp_path / "schema.gen.ts"
    result = _generate(node, "--in", str(source), "--out", str(out))
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert '"/v1/things/{id}"' in text
    assert "GetThing" in text


def test_a_document_of_another_kind_is_refused(node: str, tmp_path: Path) -> None:
    source = tmp_path / "doc.json"
    source.write_text(json.dumps({"asyncapi": "2.0.0"}))
    result = _generate(node, "--in", str(source), "--out", str(tmp_path / "x.ts"))
    assert result.returncode != 0
    assert "neither Swagger 2.0 nor OpenAPI 3" in result.stderr


def test_without_in_an_openapi_3_document_wins_over_a_swagger_2_copy(
    node: str, tmp_path: Path
) -> None:
    """While the served document moves from Swagger 2.0 to OpenAPI 3.1, both may be there."""
    repo = tmp_path / "repo"
    (repo / "generated" / "openapi").mkdir(parents=True)
    shutil.copytree(WEB / "scripts", repo / "web" / "scripts")
    (repo / "web" / "node_modules").symlink_to(WEB / "node_modules")
    (repo / "web" / "src" / "api").mkdir(parents=True)
    openapi = repo / "generated" / "openapi"
    (openapi / "pi.swagger.json").write_text(
        json.dumps(_document({"swagger": "2.0"}, {"type": "string"}))
    )
    doc = _document({"openapi": "3.1.0"}, {"schema": {"type": "string"}})
    doc["paths"] = {"/v1/openapi3/{id}": doc["paths"]["/v1/things/{id}"]}  # type: ignore[index]
    (openapi / "pi.openapi.json").write_text(json.dumps(doc))
    result = subprocess.run(
        [node, str(repo / "web" / "scripts" / "gen-client.mjs")],
        cwd=repo / "web",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    text = (repo / "web" / "src" / "api" / "schema.gen.ts").read_text()
    assert '"/v1/openapi3/{id}"' in text
    assert "from generated/openapi/pi.openapi.json" in text
