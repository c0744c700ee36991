"""Writing a rendered bootstrap to disk."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_bootstrap(bootstrap: dict[str, Any], path: str | os.PathLike[str] | None) -> str:
    """Serialise `bootstrap` as JSON (which Envoy also accepts under a .yaml name).

    Written atomically, so a running Envoy or a reader never sees half a file. Returns the
    text; with `path` None nothing is written.
    """
    text = json.dumps(bootstrap, indent=2, sort_keys=False) + "\n"
    if path is not None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, target)
    return text
