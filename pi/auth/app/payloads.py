"""The responses CreateMerchant and CreateApiKey store for replays, as JSON objects."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pi.auth.domain.merchants import ApiKey, Merchant, MerchantRegistration, NewApiKey
from pi.platform.kernel import scopes


def registration_to_json(result: MerchantRegistration) -> dict[str, Any]:
    merchant = result.merchant
    return {
        "merchant": {
            "id": merchant.id,
            "display_name": merchant.display_name,
            "create_time": _ts(merchant.create_time),
        },
        "api_key": _key_to_json(result.api_key),
        "secret": result.secret,
    }


def registration_from_json(data: dict[str, Any]) -> MerchantRegistration:
    merchant = Merchant(
        id=data["merchant"]["id"],
        display_name=data["merchant"]["display_name"],
        create_time=_required_ts(data["merchant"]["create_time"]),
    )
    return MerchantRegistration(merchant, _key_from_json(data["api_key"]), data["secret"])


def new_key_to_json(created: NewApiKey) -> dict[str, Any]:
    return {"api_key": _key_to_json(created.api_key), "secret": created.secret}


def new_key_from_json(data: dict[str, Any]) -> NewApiKey:
    return NewApiKey(_key_from_json(data["api_key"]), data["secret"])


def _key_to_json(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "merchant_id": key.merchant_id,
        "display_name": key.display_name,
        "create_time": _ts(key.create_time),
        "revoke_time": _ts(key.revoke_time),
        "scopes": scopes.ordered(key.scopes),
    }


def _key_from_json(data: dict[str, Any]) -> ApiKey:
    return ApiKey(
        id=data["id"],
        merchant_id=data["merchant_id"],
        display_name=data["display_name"],
        create_time=_required_ts(data["create_time"]),
        revoke_time=_parse_ts(data["revoke_time"]),
        # Responses stored before keys had scopes were for keys holding all of them.
        scopes=frozenset(data.get("scopes", scopes.ALL_SCOPES)),
    )


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _required_ts(value: str) -> datetime:
    return datetime.fromisoformat(value)
