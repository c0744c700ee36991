"""Mesh identities: settings, the caller allow-list table, and how the edge calls services."""

from __future__ import annotations

from pathlib import Path

import pytest

from generated.pi.auth.v1 import auth_pb2
from generated.pi.payments.v1 import payments_pb2
from generated.pi.transactions.v1 import transactions_pb2
from pi.edge import ADMIN_METHODS, Endpoint, UpstreamTls, render_bootstrap
from pi.edge.identities import ensure_identities
from pi.edge.profiles import e2e_config
from pi.platform.config import ConfigError
from pi.platform.runtime.callers import (
    ALLOWED_CALLERS,
    INTERNAL_SERVICES,
    SERVICES,
    allowed_callers,
)
from pi.platform.security.mesh import identity_of, spiffe_id
from tests.support.settings import SETTINGS_TYPES, required_environ

_FILES = (auth_pb2, transactions_pb2, payments_pb2)


def _methods(service_name: str) -> list[str]:
    for module in _FILES:
        service = module.DESCRIPTOR.services_by_name.get(service_name.rsplit(".", 1)[1])
        if service is not None and service.full_name == service_name:
            return [f"/{service.full_name}/{m.name}" for m in service.methods]
    raise AssertionError(service_name)


def test_every_internal_rpc_names_its_callers_and_nothing_else_is_listed_by_accident() -> None:
    internal = [m for name in INTERNAL_SERVICES for m in _methods(name)]
    assert internal, "no internal methods found"
    for method in internal:
        allowed = ALLOWED_CALLERS.get(method)
        assert allowed, f"{method} has no allowed callers"
        # Services, and the operator for what it runs by hand (the dead letters).
        assert allowed <= SERVICES | {"admin"}, method
        # No service calls its own internal API through the network.
        assert method.split(".")[1] not in allowed, method
    extra = set(ALLOWED_CALLERS) - set(internal) - set(ADMIN_METHODS)
    assert not extra, extra
    for method in ADMIN_METHODS:
        assert ALLOWED_CALLERS[method] == {"admin"}


def test_an_unlisted_internal_method_is_closed_and_public_methods_are_open() -> None:
    assert allowed_callers("/pi.payments.v1.PaymentLedgerService/SomethingNew") == frozenset()
    assert allowed_callers("/pi.payments.v1.PaymentService/CreatePayment") is None
    assert allowed_callers("/grpc.health.v1.Health/Check") is None


def test_the_identity_is_the_spiffe_id_of_the_verified_peer() -> None:
    context = {
        "x509_subject_alternative_name": [spiffe_id("payments").encode(), b"payments"],
        "x509_common_name": [b"auth"],  # the common name is not what counts
    }
    assert identity_of(context) == "payments"
    assert identity_of({"x509_common_name": [b"auth"]}) is None
    assert identity_of({"x509_subject_alternative_name": [b"spiffe://other/auth"]}) is None
    assert identity_of({"x509_subject_alternative_name": [spiffe_id("a/b").encode()]}) is None
    assert identity_of({}) is None


@pytest.mark.parametrize("service", sorted(SETTINGS_TYPES))
def test_with_mutual_tls_no_service_token_is_needed(service: str, tmp_path: Path) -> None:
    identity = ensure_identities(tmp_path, [service])[service]
    environ = {k: v for k, v in required_environ().items() if k != "PI_SERVICE_TOKEN"}
    settings = SETTINGS_TYPES[service].from_env({**environ, **identity.env()})
    assert settings.mesh_tls is not None
    assert settings.mesh_tls.cert_path == str(identity.cert_path)
    assert settings.service_token == ""
    with pytest.raises(ConfigError) as info:
        SETTINGS_TYPES[service].from_env(environ)
    assert "PI_SERVICE_TOKEN" in str(info.value)


def test_tls_files_come_together_and_must_be_readable(tmp_path: Path) -> None:
    identity = ensure_identities(tmp_path, ["auth"])["auth"]
    settings_type = SETTINGS_TYPES["auth"]
    partial = {**required_environ(), "PI_TLS_CERT": str(identity.cert_path)}
    with pytest.raises(ConfigError) as info:
        settings_type.from_env(partial)
    assert "PI_TLS_CA" in str(info.value) and "PI_TLS_KEY" in str(info.value)
    missing = {**required_environ(), **identity.env(), "PI_TLS_KEY": str(tmp_path / "nope.pem")}
    with pytest.raises(ConfigError) as info:
        settings_type.from_env(missing)
    assert "PI_TLS_KEY" in str(info.value)
    assert str(tmp_path) not in str(info.value).replace("PI_TLS_KEY", "")


def test_the_edge_calls_each_service_over_mtls_expecting_its_identity(tmp_path: Path) -> None:
    edge = ensure_identities(tmp_path, ["edge"])["edge"]
    config = e2e_config(
        "descriptors.binpb",
        upstreams={s: (Endpoint("127.0.0.1", 1),) for s in ("auth", "transactions", "payments")},
        http_port=2,
        https_port=3,
        admin_port=4,
        upstream_tls=UpstreamTls(str(edge.ca_path), str(edge.cert_path), str(edge.key_path)),
    )
    clusters = render_bootstrap(config)["static_resources"]["clusters"]
    for cluster in clusters:
        tls = cluster["transport_socket"]["typed_config"]
        common = tls["common_tls_context"]
        assert common["tls_certificates"][0]["certificate_chain"]["filename"] == str(edge.cert_path)
        matchers = common["validation_context"]["match_typed_subject_alt_names"]
        assert matchers == [{"san_type": "URI", "matcher": {"exact": spiffe_id(cluster["name"])}}]
        assert common["alpn_protocols"] == ["h2"]
    plain = e2e_config(
        "descriptors.binpb",
        upstreams=config.upstreams,
        http_port=2,
        https_port=3,
        admin_port=4,
    )
    assert all(
        "transport_socket" not in c for c in render_bootstrap(plain)["static_resources"]["clusters"]
    )


def test_the_edge_answers_the_admin_api_as_an_unknown_route(tmp_path: Path) -> None:
    config = e2e_config(
        "descriptors.binpb",
        upstreams={s: (Endpoint("127.0.0.1", 1),) for s in ("auth", "transactions", "payments")},
        http_port=2,
        https_port=3,
        admin_port=4,
    )
    listener = render_bootstrap(config)["static_resources"]["listeners"][0]
    text = str(listener)
    assert "/pi.auth.v1.AuthService/CreateMerchant" in text
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    first_auth = next(
        i for i, r in enumerate(routes) if r.get("route", {}).get("cluster") == "auth"
    )
    (admin,) = [i for i, r in enumerate(routes) if r["match"].get("path") in ADMIN_METHODS]
    assert admin < first_auth, "the refusal must come before the auth service's prefix route"
    assert routes[admin]["direct_response"]["status"] == 404
