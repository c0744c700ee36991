"""The Kubernetes manifests: every build validates against the Kubernetes schemas, runs
hardened, keeps secrets out of the repository and wires the services together correctly.

Each test runs for the base and both overlays (`kubectl kustomize`), validated with
kubernetes-validate's strict schemas (unknown fields are errors).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from pi.platform.config import SERVICE_PORTS

REPO = Path(__file__).resolve().parents[3]
K8S = REPO / "k8s"
KUBERNETES_VERSION = "1.37"
NAMESPACE = "pi"
# The manifests must put each service on the port the code defaults it to.
SERVICES = SERVICE_PORTS
SECRET_ENV = {
    "DATABASE_URL",
    "REDIS_URL",
    "PI_ADMIN_TOKEN",
    "PI_SERVICE_TOKEN",
    "PI_MASTER_KEYS",
    "PI_DB_SERVICE_ROLE_PASSWORD",
}
# Each service's plaintext health-only port, for the kubelet's probes (no client cert);
# below Linux's ephemeral range, so no outbound connection on a node ever holds one.
HEALTH_PORTS = {"auth": 9051, "transactions": 9052, "payments": 9053}
MESH_SECRETS = {
    "auth": "pi-auth-tls",
    "transactions": "pi-transactions-tls",
    "payments": "pi-payments-tls",
    "edge": "pi-edge-mesh-tls",
}
IMAGE = "pi-platform"
RUN_AS_USER = 10001

Manifest = dict[str, Any]


def of_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[Manifest], kind: str, name: str) -> Manifest:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_templates(objects: list[Manifest]) -> list[tuple[str, Manifest]]:
    return [
        (f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"])
        for o in objects
        if o["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet")
    ]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def env_of(container: Manifest) -> dict[str, Manifest]:
    return {e["name"]: e for e in container.get("env", [])}


def config_data(objects: list[Manifest]) -> dict[str, str]:
    (config,) = [
        o for o in of_kind(objects, "ConfigMap") if o["metadata"]["name"].startswith("pi-config")
    ]
    return dict(config["data"])


# --- schema ---------------------------------------------------------------------------------


# Custom resources have no schema in kubernetes-validate; each is checked by its own test.
CUSTOM_RESOURCE_GROUPS = ("postgresql.cnpg.io/", "cert-manager.io/")


def test_every_object_validates_against_the_kubernetes_schema(objects: list[Manifest]) -> None:
    failures = []
    for obj in objects:
        if obj["apiVersion"].startswith(CUSTOM_RESOURCE_GROUPS):
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {getattr(e, 'message', e)}")
    assert not failures, "\n".join(failures)


def test_base_files_validate_one_by_one(raw_base_objects: list[Manifest]) -> None:
    """Needs no kubectl: what the base's files say on their own is valid Kubernetes."""
    for obj in raw_base_objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    kinds = {o["kind"] for o in raw_base_objects}
    assert {"Deployment", "Service", "Job", "PodDisruptionBudget"} <= kinds
    assert "HorizontalPodAutoscaler" in kinds


def test_everything_lives_in_the_pi_namespace_under_restricted_pod_security(
    objects: list[Manifest],
) -> None:
    (namespace,) = of_kind(objects, "Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]["name"]


# --- security -------------------------------------------------------------------------------


def test_every_pod_runs_as_non_root_without_a_service_account_token(
    objects: list[Manifest],
) -> None:
    templates = pod_templates(objects)
    assert len(templates) == 7  # 3 services + edge + 3 migration Jobs
    for name, template in templates:
        spec = template["spec"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["runAsUser"] == RUN_AS_USER, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), name


def test_every_container_is_locked_down(objects: list[Manifest]) -> None:
    for name, template in pod_templates(objects):
        spec = template["spec"]
        for container in spec["containers"] + spec.get("initContainers", []):
            where = f"{name}/{container['name']}"
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context.get("privileged", False) is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert not context["capabilities"].get("add"), where
            # A read-only root needs somewhere to write temporary files.
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), where


def test_every_container_has_resource_requests_and_limits(objects: list[Manifest]) -> None:
    for name, template in pod_templates(objects):
        for container in template["spec"]["containers"]:
            resources = container["resources"]
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[bound]), f"{name} {bound}"


def test_every_container_runs_the_platform_image(
    kustomization: str, objects: list[Manifest]
) -> None:
    for name, template in pod_templates(objects):
        for container in template["spec"]["containers"]:
            repository, _, tag = container["image"].rpartition(":")
            assert repository.endswith(IMAGE), name
            if kustomization == "overlays/prod":
                assert tag not in ("", "latest"), f"{name}: prod pins its image"


def test_no_secret_is_committed_and_each_pod_reads_only_its_own_secrets(
    objects: list[Manifest],
) -> None:
    assert not of_kind(objects, "Secret"), "Secrets are created per cluster, never built"
    assert not SECRET_ENV & set(config_data(objects)), "secret settings in a ConfigMap"
    for name, template in pod_templates(objects):
        owner = template["metadata"]["labels"]["app.kubernetes.io/name"]
        migration = name.startswith("Job/")
        for container in template["spec"]["containers"]:
            env = env_of(container)
            for var in SECRET_ENV & set(env):
                assert "value" not in env[var], f"{name}: {var} has a literal value"
                ref = env[var]["valueFrom"]["secretKeyRef"]
                # The owner's database URL is for the migration Jobs only.
                expected = "pi-migrations" if migration and var == "DATABASE_URL" else f"pi-{owner}"
                assert ref["name"] == expected, (name, var)
                assert ref["key"] == var, name
            for source in container.get("envFrom", []):
                assert "secretRef" not in source, f"{name}: envFrom a whole Secret"
        secrets = {
            v["secret"]["secretName"] for v in template["spec"].get("volumes", []) if "secret" in v
        }
        assert MESH_SECRETS[owner] in secrets, f"{name} has no mesh identity"
        assert secrets <= {MESH_SECRETS[owner], "pi-edge-tls"}, (name, secrets)


def test_the_services_and_their_migrations_get_only_the_secrets_they_need(
    objects: list[Manifest],
) -> None:
    for name, template in pod_templates(objects):
        owner = template["metadata"]["labels"]["app.kubernetes.io/name"]
        for container in template["spec"]["containers"]:
            if container["command"][0] != "python" or container["command"][2] == "-c":
                continue
            env = set(env_of(container))
            assert {"DATABASE_URL", "PI_MASTER_KEYS"} <= env, name
            # Only auth serves the admin API; nobody holds a shared service token.
            assert ("PI_ADMIN_TOKEN" in env) == (owner == "auth"), name
            assert "PI_SERVICE_TOKEN" not in env, name
            if name.startswith("Job/"):
                assert env_of(container)["PI_DB_SERVICE_ROLE"]["value"] == f"pi_{owner}", name
                assert "PI_DB_SERVICE_ROLE_PASSWORD" in env, name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "/etc/pi/mesh" in mounts, name
    config = config_data(objects)
    assert config["PI_TLS_CERT"] == "/etc/pi/mesh/tls.crt"
    assert config["PI_TLS_KEY"] == "/etc/pi/mesh/tls.key"
    assert config["PI_TLS_CA"] == "/etc/pi/mesh/ca.crt"


# --- wiring ---------------------------------------------------------------------------------


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_each_service_serves_grpc_on_its_port_with_grpc_probes(
    objects: list[Manifest], service: str
) -> None:
    port = SERVICES[service]
    deployment = named(objects, "Deployment", service)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", f"pi.{service}"]
    health = HEALTH_PORTS[service]
    assert container["ports"] == [
        {"name": "grpc", "containerPort": port, "protocol": "TCP"},
        {"name": "health", "containerPort": health, "protocol": "TCP"},
        {"name": "metrics", "containerPort": port + 1000, "protocol": "TCP"},
    ]
    assert env_of(container)["PI_GRPC_PORT"]["value"] == str(port)
    assert env_of(container)["PI_HEALTH_PORT"]["value"] == str(health)
    # The gRPC port serves mutual TLS only: the kubelet probes the health-only port.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": health}, probe

    svc = named(objects, "Service", service)
    assert svc["spec"]["clusterIP"] == "None", "headless: clients balance across pods"
    assert [p["port"] for p in svc["spec"]["ports"]] == [port]
    assert svc["spec"]["ports"][0]["appProtocol"] == "grpc"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_each_service_has_a_migration_job(objects: list[Manifest], service: str) -> None:
    job = named(objects, "Job", f"{service}-migrate")
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["containers"][0]["command"] == ["python", "-m", f"pi.{service}", "migrate"]
    assert job["spec"]["backoffLimit"] >= 1


def test_selectors_pick_their_own_pods_and_never_the_migration_jobs(
    objects: list[Manifest],
) -> None:
    deployments = of_kind(objects, "Deployment")
    job_pods = [j["spec"]["template"]["metadata"]["labels"] for j in of_kind(objects, "Job")]
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects(deployment["spec"]["selector"]["matchLabels"], labels), name
        service = named(objects, "Service", name)
        assert selects(service["spec"]["selector"], labels), name
        pdb = named(objects, "PodDisruptionBudget", name)
        assert selects(pdb["spec"]["selector"]["matchLabels"], labels), name
        for selector in (service["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
            assert not any(selects(selector, pod) for pod in job_pods), name


def test_every_deployment_has_a_disruption_budget_and_an_autoscaler(
    kustomization: str, objects: list[Manifest]
) -> None:
    names = {d["metadata"]["name"] for d in of_kind(objects, "Deployment")}
    assert names == {*SERVICES, "edge"}
    assert {p["metadata"]["name"] for p in of_kind(objects, "PodDisruptionBudget")} == names
    for pdb in of_kind(objects, "PodDisruptionBudget"):
        assert pdb["spec"].get("maxUnavailable") == 1  # drains work at any replica count
    autoscalers = of_kind(objects, "HorizontalPodAutoscaler")
    if kustomization == "overlays/dev":
        assert not autoscalers, "dev runs one pod of each, without metrics-server"
        return
    assert {h["spec"]["scaleTargetRef"]["name"] for h in autoscalers} == names
    for hpa in autoscalers:
        deployment = named(objects, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"]
        assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_overlays_set_replicas_and_resources(build_kustomization: Any) -> None:
    dev, prod = build_kustomization("overlays/dev"), build_kustomization("overlays/prod")
    for deployment in of_kind(dev, "Deployment"):
        assert deployment["spec"]["replicas"] == 1
    for deployment in of_kind(prod, "Deployment"):
        assert deployment["spec"]["replicas"] >= 3
    for service in SERVICES:
        small = named(dev, "Deployment", service)["spec"]["template"]["spec"]["containers"][0]
        large = named(prod, "Deployment", service)["spec"]["template"]["spec"]["containers"][0]
        assert small["resources"]["requests"]["cpu"] == "100m"
        assert large["resources"]["requests"]["cpu"] == "1"
    assert named(prod, "Service", "edge")["spec"]["type"] == "LoadBalancer"
    assert named(dev, "Service", "edge")["spec"]["type"] == "ClusterIP"
    assert config_data(dev)["PI_LOG_LEVEL"] == "DEBUG"


def test_services_reach_each_other_by_cluster_dns_name(objects: list[Manifest]) -> None:
    config = config_data(objects)
    assert config["PI_GRPC_HOST"] == "0.0.0.0"  # probes and peers connect to the pod IP
    for service, port in SERVICES.items():
        target = config[f"PI_{service.upper()}_TARGET"]
        assert target == f"{service}.{NAMESPACE}.svc.cluster.local:{port}"
        named(objects, "Service", service)


def test_the_edge_runs_the_rendered_config_with_its_files_mounted(
    objects: list[Manifest],
) -> None:
    deployment = named(objects, "Deployment", "edge")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    command = container["command"]
    assert command[0] == "envoy"
    config_path = Path(command[command.index("--config-path") + 1])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}

    # The ConfigMap holding envoy.json is mounted where --config-path points.
    config_mount = next(m for m in mounts.values() if m["mountPath"] == str(config_path.parent))
    config_volume = volumes[config_mount["name"]]["configMap"]
    (config_map,) = [
        o for o in of_kind(objects, "ConfigMap") if o["metadata"]["name"] == config_volume["name"]
    ]
    bootstrap = json.loads(config_map["data"][config_path.name])
    assert bootstrap == json.loads((K8S / "base" / "generated" / "envoy.json").read_text())

    # The TLS Secret is mounted where the bootstrap reads the certificate.
    tls = bootstrap_tls_files(bootstrap)
    tls_mount = next(m for m in mounts.values() if m["mountPath"] == str(Path(tls[0]).parent))
    secret = volumes[tls_mount["name"]]["secret"]
    assert secret["secretName"] == "pi-edge-tls"
    assert sorted(Path(f).name for f in tls) == ["tls.crt", "tls.key"]  # kubernetes.io/tls keys

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    listeners = {
        listener["name"]: listener["address"]["socket_address"]
        for listener in bootstrap["static_resources"]["listeners"]
    }
    assert ports == {name: a["port_value"] for name, a in listeners.items()}
    assert all(a["address"] == "0.0.0.0" for a in listeners.values())
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"

    # Envoy's upstream clusters are the services' DNS names and ports.
    clusters = {
        c["name"]: c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
            "socket_address"
        ]
        for c in bootstrap["static_resources"]["clusters"]
    }
    assert clusters == {
        **{
            name: {"address": f"{name}.{NAMESPACE}.svc.cluster.local", "port_value": port}
            for name, port in SERVICES.items()
        },
        # Observability: the metrics listener's admin upstream (loopback) and the
        # OpenTelemetry Collector of k8s/monitoring.
        "envoy_admin": {"address": "127.0.0.1", "port_value": 9901},
        "otel_collector": {
            "address": "otel-collector.pi-monitoring.svc.cluster.local",
            "port_value": 4317,
        },
    }


def test_the_edge_calls_the_services_with_its_mounted_mesh_identity(
    objects: list[Manifest],
) -> None:
    spec = named(objects, "Deployment", "edge")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    bootstrap = json.loads((K8S / "base" / "generated" / "envoy.json").read_text())
    # The services' clusters (not the admin's nor the trace collector's).
    services = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] in SERVICES]
    assert len(services) == len(SERVICES)
    for cluster in services:
        common = cluster["transport_socket"]["typed_config"]["common_tls_context"]
        files = [
            common["validation_context"]["trusted_ca"]["filename"],
            common["tls_certificates"][0]["certificate_chain"]["filename"],
            common["tls_certificates"][0]["private_key"]["filename"],
        ]
        assert [Path(f).name for f in files] == ["ca.crt", "tls.crt", "tls.key"]
        volume = volumes[mounts[str(Path(files[0]).parent)]]
        assert volume["secret"]["secretName"] == "pi-edge-mesh-tls"
        san = common["validation_context"]["match_typed_subject_alt_names"]
        assert san == [
            {"san_type": "URI", "matcher": {"exact": f"spiffe://pi-platform/{cluster['name']}"}}
        ]


def test_prod_issues_every_mesh_identity_with_cert_manager(build_kustomization: Any) -> None:
    objects = build_kustomization("overlays/prod")
    certificates = {
        c["spec"]["secretName"]: c["spec"]
        for c in of_kind(objects, "Certificate")
        if not c["spec"].get("isCA")
    }
    assert set(certificates) == {*MESH_SECRETS.values(), "pi-admin-tls"}
    for secret, spec in certificates.items():
        name = spec["commonName"]
        assert spec["uris"] == [f"spiffe://pi-platform/{name}"], secret
        assert spec["issuerRef"] == {"name": "pi-mesh", "kind": "Issuer"}
        assert {"server auth", "client auth"} <= set(spec["usages"])
        if name in SERVICES:
            assert f"{name}.{NAMESPACE}.svc.cluster.local" in spec["dnsNames"]
    # The operator's credential is short-lived.
    assert certificates["pi-admin-tls"]["duration"] == "24h"
    (issuer,) = [i for i in of_kind(objects, "Issuer") if i["metadata"]["name"] == "pi-mesh"]
    assert issuer["spec"]["ca"]["secretName"] == "pi-mesh-ca"
    assert of_kind(build_kustomization("overlays/dev"), "Certificate") == []


def bootstrap_tls_files(bootstrap: Manifest) -> list[str]:
    files = []
    for listener in bootstrap["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            socket = chain.get("transport_socket")
            if socket:
                for cert in socket["typed_config"]["common_tls_context"]["tls_certificates"]:
                    files += [
                        cert["certificate_chain"]["filename"],
                        cert["private_key"]["filename"],
                    ]
    assert files, "the kubernetes edge config has a TLS listener"
    return files


def test_network_policies_deny_by_default(objects: list[Manifest]) -> None:
    policies = {p["metadata"]["name"]: p for p in of_kind(objects, "NetworkPolicy")}
    deny = policies["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny
    services = policies["services-ingress"]["spec"]
    (rule,) = services["ingress"]
    assert rule["from"], "service ports are not open to the world"
    assert {p["port"] for p in rule["ports"]} == set(SERVICES.values())


def test_the_migration_step_applies_everything_the_jobs_need(objects: list[Manifest]) -> None:
    """k8s/README.md applies `component in (namespace,identity,config,migration)` first."""
    first_step = {"namespace", "identity", "config", "migration"}
    selected = {
        (o["kind"], o["metadata"]["name"])
        for o in objects
        if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") in first_step
    }
    for obj in objects:
        assert obj["metadata"]["labels"].get("app.kubernetes.io/component"), obj["kind"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "pi-platform"
    for job in of_kind(objects, "Job"):
        spec = job["spec"]["template"]["spec"]
        assert ("ServiceAccount", spec["serviceAccountName"]) in selected
        for source in spec["containers"][0].get("envFrom", []):
            assert ("ConfigMap", source["configMapRef"]["name"]) in selected
    assert ("Namespace", NAMESPACE) in selected


def test_prod_runs_postgresql_as_a_durable_cloudnativepg_cluster(
    build_kustomization: Any,
) -> None:
    objects = build_kustomization("overlays/prod")
    (cluster,) = of_kind(objects, "Cluster")
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    assert cluster["metadata"] == {**cluster["metadata"], "name": "pi-postgres", "namespace": "pi"}
    spec = cluster["spec"]
    assert spec["instances"] >= 3
    assert spec["bootstrap"]["initdb"] == {"database": "pi", "owner": "pi"}
    assert spec["postgresql"]["parameters"]["synchronous_commit"] == "on"
    assert spec["postgresql"]["synchronous"]["number"] >= 1
    assert spec["affinity"]["topologyKey"] == "topology.kubernetes.io/zone"
    # Every service pod's pool, at the autoscalers' maximum, fits max_connections.
    pool = int(config_data(objects).get("PI_DB_POOL_SIZE", "20"))
    most_pods = max(h["spec"]["maxReplicas"] for h in of_kind(objects, "HorizontalPodAutoscaler"))
    assert int(spec["postgresql"]["parameters"]["max_connections"]) >= most_pods * (pool + 1)
    # The namespace denies ingress by default: the platform's pods are let through to it.
    policy = named(objects, "NetworkPolicy", "postgres-ingress")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"cnpg.io/cluster": "pi-postgres"}
    sources = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "pi-platform"}}} in sources
    assert of_kind(build_kustomization("overlays/dev"), "Cluster") == []
