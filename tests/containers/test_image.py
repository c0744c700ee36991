"""The image itself: non-root numeric user, nothing of the build host's pip set-up in it,
its programs start from a read-only root file system."""

from __future__ import annotations

import json
import time

from tests.containers.podman import ULIMITS, podman

RUN = ("run", "--rm", "--read-only", "--read-only-tmpfs=false", "--network=none", *ULIMITS)


def test_the_image_runs_as_user_10001_and_reports_its_size(image: str) -> None:
    (info,) = json.loads(podman("image", "inspect", image).stdout)
    assert info["Config"]["User"] == "10001:10001"
    size_mb = info["Size"] / 1e6
    print(f"\n[image] {image}: {size_mb:.0f} MB")
    assert size_mb < 800, f"the image grew to {size_mb:.0f} MB"


def test_no_build_configuration_or_secret_is_in_the_image(image: str) -> None:
    """pip.conf and the host's indexes were mounted for the build, never copied. (buildah
    leaves the mount points behind, empty: that is all that may be there.)"""
    script = (
        "import os\n"
        "for p in ('/etc/pip.conf', '/root/.config/pip', '/opt/pypi', '/opt/pypi-more',"
        " '/opt/wheels', '/src'):\n"
        "    if os.path.isfile(p) and os.path.getsize(p) or os.path.isdir(p) and os.listdir(p):\n"
        "        print(p)\n"
    )
    listing = podman(*RUN, "--user", "0", image, "python", "-c", script)
    assert listing.stdout.strip() == "", f"build-host files in the image: {listing.stdout}"
    history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    for word in ("PIP_", "TOKEN", "PASSWORD", "MASTER_KEY", "index-url"):
        assert word not in history, f"{word} in a layer's command: {history}"


def test_the_programs_start_from_a_read_only_root(image: str) -> None:
    for argv in (
        ["envoy", "--version"],
        ["python", "-c", "import pi.auth.__main__, pi.transactions.__main__, pi.payments.__main__"],
    ):
        started = time.monotonic()
        done = podman(*RUN, "--user", "10001:10001", image, *argv, check=False)
        elapsed = time.monotonic() - started
        print(f"\n[image] {' '.join(argv[:2])}: {elapsed:.2f}s")
        assert done.returncode == 0, done.stderr
        assert elapsed < 20
    assert "version" in podman(*RUN, image, "envoy", "--version").stdout
