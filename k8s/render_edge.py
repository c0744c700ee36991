"""Render the edge's Envoy bootstrap for Kubernetes into k8s/base/generated/envoy.json.

    .venv/bin/python k8s/render_edge.py            # after changing pi/edge
    .venv/bin/python k8s/render_edge.py --check    # exit 1 if the committed file is stale

The file is exactly what `python -m pi.edge render --profile kubernetes` writes with the
services' cluster DNS names. The configMapGenerator in k8s/base/kustomization.yaml turns
it into the `edge-config` ConfigMap, mounted at /etc/pi/envoy. The descriptor set and the
OpenAPI document it names (/etc/pi/edge/...) are baked into the image by the Dockerfile,
so they always match the services' code. tests/unit/k8s checks that the file is current.
"""

from __future__ import annotations

import argparse
import filecmp
import subprocess
import sys
import tempfile
from pathlib import Path

from pi.platform.config import SERVICE_PORTS

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "k8s" / "base" / "generated"
NAMESPACE = "pi"
FILES = ("envoy.json",)


def service_host(name: str, namespace: str = NAMESPACE) -> str:
    return f"{name}.{namespace}.svc.cluster.local"


def render(out: Path, namespace: str = NAMESPACE) -> None:
    out.mkdir(parents=True, exist_ok=True)
    upstreams = [
        f"--upstream={name}={service_host(name, namespace)}:{port}"
        for name, port in SERVICE_PORTS.items()
    ]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pi.edge",
            "render",
            "--profile",
            "kubernetes",
            "--out",
            str(out / "envoy.json"),
            *upstreams,
        ],
        cwd=REPO,
        check=True,
    )


def stale_files(namespace: str = NAMESPACE) -> list[str]:
    """Names of the files under k8s/base/generated/ that differ from a fresh render."""
    with tempfile.TemporaryDirectory() as tmp:
        render(Path(tmp), namespace)
        return [
            name
            for name in FILES
            if not (OUT / name).is_file()
            or not filecmp.cmp(Path(tmp) / name, OUT / name, shallow=False)
        ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    parser.add_argument("--namespace", default=NAMESPACE)
    args = parser.parse_args()
    if args.check:
        stale = stale_files(args.namespace)
        if stale:
            print(f"stale in {OUT.relative_to(REPO)}: {', '.join(stale)}; run k8s/render_edge.py")
            return 1
        print(f"{OUT.relative_to(REPO)}: up to date")
        return 0
    render(OUT, args.namespace)
    print(f"wrote {OUT.relative_to(REPO)}/envoy.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
