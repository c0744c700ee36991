"""Runs Kubernetes pod templates as podman containers, the way the kubelet would.

`container_argv(pod_spec, container, ...)` translates a rendered manifest's container:
`command`/`args`, `env` and `envFrom` (ConfigMaps from the rendered objects, Secrets from
test values), the pod's and container's `securityContext` (runAsUser/runAsGroup,
readOnlyRootFilesystem, dropped capabilities, no privilege escalation) and its volumes
(emptyDir → tmpfs, configMap/secret → files written to a host directory, mounted
read-only). Whatever it cannot translate faithfully raises `Unsupported`, so a manifest
change the test cannot follow fails instead of being run differently.

Networking: every container shares the host's network (`--network=host`, loopback only:
the services bind 0.0.0.0 as the manifests say, which the tests accept on a test machine),
so each listens on the port its manifest names, and the cluster DNS names the manifests
use resolve to 127.0.0.1 through `--add-host` entries.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from image import PODMAN, ULIMITS

Manifest = dict[str, Any]
LABEL = "pi-platform.test=containers"


class Unsupported(AssertionError):
    """The manifest uses something this translation does not reproduce."""


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=check
    )


def resolve_env(
    container: Manifest,
    config_maps: Mapping[str, Mapping[str, str]],
    secrets: Mapping[str, Mapping[str, str]],
) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom first, then env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            if name not in config_maps:
                raise Unsupported(f"envFrom names the missing ConfigMap {name}")
            env.update(config_maps[name])
        else:
            raise Unsupported(f"envFrom {source}")
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = str(item["value"])
            continue
        ref = item.get("valueFrom", {})
        if "secretKeyRef" in ref:
            key_ref, store = ref["secretKeyRef"], secrets
        elif "configMapKeyRef" in ref:
            key_ref, store = ref["configMapKeyRef"], config_maps
        else:
            raise Unsupported(f"env {name}: {ref}")
        value = store.get(key_ref["name"], {}).get(key_ref["key"])
        if value is None:
            if key_ref.get("optional"):
                continue  # as Kubernetes: an optional key that is absent sets nothing
            raise AssertionError(f"env {name}: {key_ref['name']}/{key_ref['key']} does not exist")
        env[name] = value
    return env


def security_options(pod_spec: Manifest, container: Manifest) -> list[str]:
    pod = pod_spec.get("securityContext", {})
    own = container.get("securityContext", {})
    user = own.get("runAsUser", pod.get("runAsUser"))
    group = own.get("runAsGroup", pod.get("runAsGroup"))
    options: list[str] = []
    if own.get("runAsNonRoot", pod.get("runAsNonRoot")) and (user is None or int(user) == 0):
        raise AssertionError("runAsNonRoot needs a numeric non-root runAsUser")
    if user is not None:
        options += ["--user", f"{user}:{group if group is not None else user}"]
    if pod.get("fsGroup") is not None:
        options += ["--group-add", str(pod["fsGroup"])]
    if own.get("readOnlyRootFilesystem"):
        # podman would add tmpfs on /tmp, /var/tmp, /run; Kubernetes adds none.
        options += ["--read-only", "--read-only-tmpfs=false"]
    if own.get("allowPrivilegeEscalation") is False:
        options += ["--security-opt", "no-new-privileges"]
    if own.get("privileged"):
        raise Unsupported("privileged containers")
    drop = own.get("capabilities", {}).get("drop", [])
    options += [f"--cap-drop={cap}" for cap in drop]
    return options


def volume_options(
    pod_spec: Manifest,
    container: Manifest,
    config_maps: Mapping[str, Mapping[str, str]],
    secrets: Mapping[str, Mapping[str, str]],
    workdir: Path,
) -> list[str]:
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    fs_group = pod_spec.get("securityContext", {}).get("fsGroup")
    options: list[str] = []
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        target = mount["mountPath"]
        if "emptyDir" in volume:
            size = volume["emptyDir"].get("sizeLimit", "64Mi").replace("Mi", "m")
            options += ["--tmpfs", f"{target}:rw,size={size},mode=1777"]
            continue
        if "configMap" in volume:
            data, mode = config_maps[volume["configMap"]["name"]], 0o644
        elif "secret" in volume:
            data = secrets[volume["secret"]["secretName"]]
            mode = int(volume["secret"].get("defaultMode", 0o644))
        else:
            raise Unsupported(f"volume {volume}")
        directory = workdir / f"vol-{uuid.uuid4().hex[:8]}"
        directory.mkdir(mode=0o755)
        for key, value in data.items():
            file = directory / key
            file.write_text(value)
            file.chmod(mode)
            if fs_group is not None:
                os.chown(file, 0, int(fs_group))  # as the kubelet: group-owned by fsGroup
        options += ["-v", f"{directory}:{target}:ro"]
    return options


def container_argv(
    name: str,
    image: str,
    pod_spec: Manifest,
    container: Manifest,
    config_maps: Mapping[str, Mapping[str, str]],
    secrets: Mapping[str, Mapping[str, str]],
    hosts: Mapping[str, str],
    workdir: Path,
) -> list[str]:
    """`podman run` options and argv for one container of a pod template."""
    if pod_spec.get("initContainers"):
        raise Unsupported("initContainers")
    command = [*container.get("command", []), *container.get("args", [])]
    if not command:
        raise Unsupported("a container without command relies on the image's CMD")
    env = resolve_env(container, config_maps, secrets)
    argv = ["run", "--detach", "--name", name, "--label", LABEL, "--network=host", *ULIMITS]
    argv += [f"--add-host={host}:{address}" for host, address in hosts.items()]
    argv += security_options(pod_spec, container)
    argv += volume_options(pod_spec, container, config_maps, secrets, workdir)
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    limit = container.get("resources", {}).get("limits", {}).get("memory")
    if limit:
        argv += ["--memory", limit.replace("Mi", "m").replace("Gi", "g")]
    argv += [image, *command]
    return argv
