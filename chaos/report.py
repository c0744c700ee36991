"""The fault run's report: JSON for machines, a table for people."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

COLUMNS = (
    ("scenario", 8),
    ("requests", 8),
    ("acked", 7),
    ("lost", 4),
    ("double", 6),
    ("mismatch", 8),
    ("pending", 7),
    ("recover s", 9),
    ("errors by status", 0),
)


def write_json(report: dict[str, Any], path: str) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, target)


def _errors(errors: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in errors.items()) or "-"


def _cells(row: dict[str, Any]) -> list[str]:
    recover = row.get("recover_s")
    return [
        row["scenario"],
        str(row["requests"]),
        str(row["acknowledged"]),
        str(row["lost"]),
        str(row["double_charges"]),
        str(row["money_mismatches"]),
        str(row["pending_past_window"]),
        "never" if recover is None else f"{recover:.1f}",
        _errors(row["errors"]),
    ]


def table(report: dict[str, Any]) -> str:
    header = " | ".join(name.ljust(width) for name, width in COLUMNS)
    lines = [header.rstrip(), "-" * len(header)]
    for row in report.get("scenarios", []):
        cells = _cells(row)
        line = " | ".join(c.ljust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True))
        lines.append(line.rstrip() + ("   FAILED" if row.get("failed") else ""))
    for row in report.get("scenarios", []):
        extra = {k: v for k, v in row["notes"].items() if v not in (None, [], {})}
        backlog = f"outbox {row['outbox_undelivered']}, dead letters {row['dead_letters'] or '-'}"
        lines.append(f"{row['scenario']}: {row['fault']}; {backlog}; {extra or ''}".rstrip("; "))
        for kind, examples in row["examples"].items():
            lines.extend(f"    {kind}: {example}" for example in examples[:5])
            if len(examples) > 5:
                lines.append(f"    {kind}: ... {len(examples) - 5} more in the JSON report")
    if report.get("failure"):
        lines.append(f"run failed: {report['failure']}")
    verdict = {0: "PASS", 1: "FAIL (see FAILED rows)", 130: "interrupted"}
    lines.append(f"verdict: {verdict.get(report.get('status', 2), 'harness failure')}")
    return "\n".join(lines)
