"""Build the pi-platform image with podman, cached by content (`make image`).

    .venv/bin/python scripts/image.py              # prints the image reference it built
    .venv/bin/python scripts/image.py --base python:3.11-slim    # a registry base instead

Why this script and not a plain `podman build`:
- No container registry is reachable from CI or the test machines, so the default base
  is a Debian bookworm root file system made with mmdebstrap (python3, python3-venv, CA
  certificates, passwd: what the Dockerfile needs), imported as `localhost/pi-base:<hash>`.
  The tarball is kept in ~/.cache/pi-platform (PI_IMAGE_CACHE) by the hash of its recipe,
  the imported image by that tag: a repeated run skips both (mmdebstrap takes ~90 s).
- The image is tagged `localhost/pi-platform:<hash>` by the hash of everything the build
  reads (Dockerfile, the files .dockerignore lets in, the base): an unchanged tree is not
  rebuilt. `pi-platform:latest` is tagged too (what the manifests' `image:` names).
- pip inside the build needs this machine's way to reach its package index: its pip
  configuration, certificates and local indexes are mounted read-only (`podman build -v`),
  never copied, so nothing of them lands in a layer.
- podman runs with cgroupfs and runc: crun refuses the hybrid cgroup layout of these
  machines, and the default ulimits cannot be set there.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PODMAN = ("podman", "--cgroup-manager=cgroupfs", "--runtime", "runc")
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
IMAGE = "localhost/pi-platform"
BASE_IMAGE = "localhost/pi-base"
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates", "passwd")
# Read-only mounts for pip in the build, where they exist on this machine.
PIP_MOUNTS = (
    "/etc/pip.conf",
    str(Path.home() / ".config" / "pip"),
    "/etc/ssl/certs",
    "/usr/share/ca-certificates",
)


def podman(*args: str) -> list[str]:
    return [*PODMAN, *args]


def cache_dir() -> Path:
    return Path(os.environ.get("PI_IMAGE_CACHE") or Path.home() / ".cache" / "pi-platform")


def base_recipe() -> str:
    return f"mmdebstrap --variant=minbase --include={','.join(BASE_PACKAGES)} {SUITE}"


def _digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:16]


def context_files(repo: Path = REPO) -> list[Path]:
    """The files the build context holds: .dockerignore's `*` then `!` re-includes, minus
    the trailing excludes (the only patterns it uses)."""
    lines = [ln.strip() for ln in (repo / ".dockerignore").read_text().splitlines()]
    patterns = [ln for ln in lines if ln and not ln.startswith("#")]
    included = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    excluded = [p.removeprefix("**/") for p in patterns if not p.startswith("!") and p != "*"]
    files: list[Path] = []
    for top in included:
        path = repo / top
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        for file in candidates:
            if not file.is_file():
                continue
            rel = file.relative_to(repo)
            if any(fnmatch.fnmatch(part, pat) for pat in excluded for part in rel.parts):
                continue
            files.append(file)
    return files


def context_hash(base: str, repo: Path = REPO) -> str:
    """Changes with the Dockerfile, any file of the context, or the base."""
    parts = [base.encode(), (repo / "Dockerfile").read_bytes()]
    for file in context_files(repo):
        parts += [str(file.relative_to(repo)).encode(), file.read_bytes()]
    return _digest(parts)


def image_exists(reference: str) -> bool:
    done = subprocess.run(podman("image", "exists", reference), check=False)
    return done.returncode == 0


def local_base() -> str:
    """The mmdebstrap base as an imported image, made (and cached) if missing."""
    tag = f"{BASE_IMAGE}:{_digest([base_recipe().encode()])}"
    if image_exists(tag):
        return tag
    tarball = cache_dir() / f"base-{tag.rsplit(':', 1)[1]}.tar"
    if not tarball.is_file():
        tarball.parent.mkdir(parents=True, exist_ok=True)
        # mmdebstrap picks its output format by the name: keep the .tar ending.
        partial = tarball.with_name(tarball.stem + ".partial.tar")
        print(f"[image] {base_recipe()} (once; cached in {tarball})", file=sys.stderr)
        subprocess.run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                SUITE,
                str(partial),
            ],
            check=True,
        )
        partial.rename(tarball)  # only a complete tarball is ever cached
    subprocess.run(podman("import", "--quiet", str(tarball), tag), check=True, stdout=sys.stderr)
    return tag


def pip_mounts() -> list[str]:
    """`-v` options for pip's configuration and the local indexes it names."""
    paths = [p for p in PIP_MOUNTS if Path(p).exists()]
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL"):
        paths += _local_paths(os.environ.get(name, ""))
    for conf in ("/etc/pip.conf", Path.home() / ".config" / "pip" / "pip.conf"):
        if Path(conf).is_file():
            paths += _local_paths(Path(conf).read_text())
    options: list[str] = []
    for path in dict.fromkeys(paths):
        target = path
        if path.startswith(str(Path.home())):
            target = "/root" + path.removeprefix(str(Path.home()))  # the build runs as root
        options += ["-v", f"{path}:{target}:ro"]
    return options


def _local_paths(text: str) -> list[str]:
    """Absolute local paths (plain or file://) named in pip settings, that exist."""
    found = []
    for word in text.replace("=", " ").split():
        path = word.removeprefix("file://")
        if path.startswith("/") and Path(path).exists():
            # A simple index is a directory tree: mount the index root (…/simple's parent).
            found.append(str(Path(path).parent if path.rstrip("/").endswith("simple") else path))
    return found


def build(base: str | None = None, tag: str = "latest") -> str:
    """Build (unless cached) and return the image reference `localhost/pi-platform:<hash>`."""
    base = base or local_base()
    reference = f"{IMAGE}:{context_hash(base)}"
    if not image_exists(reference):
        argv = podman(
            "build",
            "--network=host",
            *ULIMITS,
            "--build-arg",
            f"BASE={base}",
            *pip_mounts(),
            "--tag",
            reference,
            str(REPO),
        )
        subprocess.run(argv, check=True, stdout=sys.stderr)
    subprocess.run(podman("tag", reference, f"{IMAGE}:{tag}"), check=True)
    return reference


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--base", help="base image (default: the local mmdebstrap base)")
    parser.add_argument("--tag", default="latest", help="also tag it pi-platform:TAG")
    args = parser.parse_args(argv)
    if shutil.which("podman") is None:
        parser.error("podman is not installed (Debian: apt-get install podman runc)")
    print(build(args.base, args.tag))
    return 0


if __name__ == "__main__":
    sys.exit(main())
