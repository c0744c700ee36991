import pytest

from pi.platform.kernel.errors import PermissionDenied, Unauthenticated
from pi.platform.kernel.principal import (
    Principal,
    principal_of,
    require_admin,
    require_merchant,
    require_service,
    reset_principal,
    set_principal,
)


def test_principal_of_reads_the_current_call_principal() -> None:
    merchant = Principal.merchant("mer_1", token_id="jti", expires_at=10)
    token = set_principal(merchant)
    try:
        assert principal_of(None) == merchant
    finally:
        reset_principal(token)
    with pytest.raises(Unauthenticated):
        principal_of(None)


def test_require_helpers() -> None:
    merchant, admin, service = Principal.merchant("mer_1"), Principal.admin(), Principal.service()
    assert require_merchant(merchant) == "mer_1"
    assert require_admin(admin) is admin
    assert require_service(service) is service
    for check, others in (
        (require_merchant, (admin, service)),
        (require_admin, (merchant, service)),
        (require_service, (merchant, admin)),
    ):
        for other in others:
            with pytest.raises(PermissionDenied) as info:
                check(other)
            assert info.value.reason == "PERMISSION_DENIED"
