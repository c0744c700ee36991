"""The layering rules of docs/architecture.md, checked on the source: a rule nobody checks
erodes one import at a time."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PI = Path(__file__).resolve().parents[2] / "pi"
SERVICES = ("auth", "transactions", "payments")

# What domain and use-case code may not depend on, even through the platform: storage,
# the network and generated protocol code belong to adapters and entrypoints.
FORBIDDEN_IN_CORE = (
    "sqlalchemy",
    "psycopg",
    "psycopg_pool",
    "grpc",
    "redis",
    "jwt",
    "cryptography",
    "google.protobuf",
    "generated",
    "pi.platform.db",
    "pi.platform.runtime",
    "pi.platform.security",
    "pi.platform.cache",
)
MAX_MODULE_LINES = 400
# Longer modules, each with the reason it stays whole.
LONG_MODULES = {
    # Mostly the docstring that explains when a statement is prepared and how a batch
    # is pipelined.
    "platform/db/statements.py": 450,
    # Signing, verification and revocation of one token format.
    "platform/security/tokens.py": 450,
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _modules(package: Path) -> list[Path]:
    return sorted(p for p in package.rglob("*.py") if "migrations" not in p.parts)


def _is_under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("layer", ["domain", "app"])
def test_domain_and_use_cases_import_no_storage_network_or_generated_code(
    service: str, layer: str
) -> None:
    offending = {
        f"{path.relative_to(PI)}: {module}"
        for path in _modules(PI / service / layer)
        for module in _imports(path)
        if any(_is_under(module, forbidden) for forbidden in FORBIDDEN_IN_CORE)
    }
    assert not offending, sorted(offending)


@pytest.mark.parametrize("service", SERVICES)
def test_no_service_imports_another_services_package(service: str) -> None:
    others = [f"pi.{other}" for other in SERVICES if other != service]
    offending = {
        f"{path.relative_to(PI)}: {module}"
        for path in _modules(PI / service)
        for module in _imports(path)
        if any(_is_under(module, other) for other in others)
    }
    assert not offending, sorted(offending)


def test_the_platform_imports_no_service() -> None:
    offending = {
        f"{path.relative_to(PI)}: {module}"
        for path in _modules(PI / "platform")
        for module in _imports(path)
        if any(_is_under(module, f"pi.{service}") for service in SERVICES)
    }
    assert not offending, sorted(offending)


def test_the_kernel_is_standard_library_only() -> None:
    offending = {
        f"{path.relative_to(PI)}: {module}"
        for path in _modules(PI / "platform" / "kernel")
        for module in _imports(path)
        if (module.split(".")[0] not in ("__future__", "pi") and not _is_stdlib(module))
        or (_is_under(module, "pi") and not _is_under(module, "pi.platform.kernel"))
    }
    assert not offending, sorted(offending)


def _is_stdlib(module: str) -> bool:
    return module.split(".")[0] in sys.stdlib_module_names


def test_no_sqlite_anywhere_in_the_code() -> None:
    mentions = [
        str(path.relative_to(PI))
        for path in PI.rglob("*.py")
        if "sqlite" in path.read_text().lower()
    ]
    assert mentions == []


def test_modules_stay_small() -> None:
    too_long = {}
    for path in PI.rglob("*.py"):
        relative = str(path.relative_to(PI))
        if "/migrations/versions/" in relative:
            continue
        lines = len(path.read_text().splitlines())
        if lines > LONG_MODULES.get(relative, MAX_MODULE_LINES):
            too_long[relative] = lines
    assert too_long == {}
