"""Every statement the auth repositories run, built once as `Statement`s (compiled for
PostgreSQL, sent by psycopg as prepared statements; see `pi.platform.db.statements`).

Reads come in pairs where a LOCKED unit must lock what it reads (`LOCKING[...]`:
False → plain, True → locking). Writes that a unit `expect`s are conditional, so a
miss is seen (see `pi.platform.db.unit_of_work`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Integer,
    String,
    and_,
    any_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import BindParameter

from pi.auth.adapters.postgres.tables import (
    api_keys,
    idempotency_keys,
    issued_tokens,
    login_failures,
    merchants,
    revoked_tokens,
    signing_keys,
)
from pi.auth.domain.signing_keys import SigningKeyStatus
from pi.platform.db.engine import UtcDateTime
from pi.platform.db.statements import Statement


def _locking(query: Select[Any], *, share: bool = False) -> dict[bool, Statement]:
    return {False: Statement(query), True: Statement(query.with_for_update(read=share))}


def _at(name: str) -> BindParameter[datetime]:
    return bindparam(name, type_=UtcDateTime())


# -- merchants and API keys ---------------------------------------------------------------

INSERT_MERCHANT = Statement(insert(merchants))
INSERT_API_KEY = Statement(insert(api_keys))

# Everything merchants may see of a key: never the hash.
_API_KEY_COLUMNS = (
    api_keys.c.id,
    api_keys.c.merchant_id,
    api_keys.c.display_name,
    api_keys.c.create_time,
    api_keys.c.revoke_time,
    api_keys.c.scopes,
)
_KEY_ID = api_keys.c.id == bindparam("p_key_id")

MERCHANTS_KEY = _locking(
    select(*_API_KEY_COLUMNS).where(_KEY_ID, api_keys.c.merchant_id == bindparam("p_merchant_id"))
)
# FOR SHARE: a RevokeApiKey (FOR UPDATE) waits for the token this unit records.
CREDENTIALS = _locking(select(api_keys).where(_KEY_ID), share=True)


def _page(*, after: bool) -> Statement:
    query = select(*_API_KEY_COLUMNS).where(api_keys.c.merchant_id == bindparam("p_merchant_id"))
    if after:
        # A row comparison, so PostgreSQL walks the (merchant, time, id) index from it.
        query = query.where(
            tuple_(api_keys.c.create_time, api_keys.c.id)
            < tuple_(_at("p_after_create_time"), bindparam("p_after_id", type_=String()))
        )
    query = query.order_by(api_keys.c.create_time.desc(), api_keys.c.id.desc()).limit(
        bindparam("p_limit", type_=Integer())
    )
    return Statement(query)


# By whether the page follows another one.
KEYS_PAGE = {False: _page(after=False), True: _page(after=True)}

REHASH_API_KEY = Statement(
    update(api_keys)
    .where(_KEY_ID)
    .values(
        secret_hash=bindparam("p_secret_hash", type_=api_keys.c.secret_hash.type),
        secret_hash_version=bindparam("p_secret_hash_version", type_=Integer()),
    )
)
REVOKE_API_KEY = Statement(
    update(api_keys)
    .where(_KEY_ID, api_keys.c.revoke_time.is_(None))
    .values(revoke_time=_at("p_now"))
)

# -- failed secrets -------------------------------------------------------------------------

LOGIN_FAILURES = _locking(
    select(login_failures.c.recent_failures, login_failures.c.locked_until).where(
        login_failures.c.api_key_id == bindparam("p_key_id")
    )
)
# An empty record, so that FOR UPDATE has a row to lock.
CREATE_LOGIN_FAILURES = Statement(
    postgresql.insert(login_failures).on_conflict_do_nothing(index_elements=["api_key_id"])
)
SAVE_LOGIN_FAILURES = Statement(
    update(login_failures)
    .where(login_failures.c.api_key_id == bindparam("p_key_id"))
    .values(
        recent_failures=bindparam("p_recent", type_=login_failures.c.recent_failures.type),
        locked_until=_at("p_locked_until"),
        update_time=_at("p_now"),
    )
)
FORGET_STALE_LOGIN_FAILURES = Statement(
    delete(login_failures).where(
        login_failures.c.update_time < _at("p_cutoff"),
        or_(login_failures.c.locked_until.is_(None), login_failures.c.locked_until <= _at("p_now")),
    )
)

# -- tokens ----------------------------------------------------------------------------------

# Recorded only from an active key's row, locked FOR SHARE: a RevokeApiKey holding the
# row waits for this token (and revokes it) or, if it committed first, makes this miss.
ADD_ISSUED_TOKEN = Statement(
    insert(issued_tokens).from_select(
        ["jti", "merchant_id", "api_key_id", "issue_time", "expire_time"],
        select(
            bindparam("p_jti", type_=String()),
            api_keys.c.merchant_id,
            api_keys.c.id,
            _at("p_issue_time"),
            _at("p_expire_time"),
        )
        .where(
            _KEY_ID,
            api_keys.c.merchant_id == bindparam("p_merchant_id"),
            api_keys.c.revoke_time.is_(None),
        )
        .with_for_update(read=True),
    )
)
ISSUED_TOKEN = Statement(
    select(issued_tokens).where(
        issued_tokens.c.jti == bindparam("p_jti"),
        issued_tokens.c.merchant_id == bindparam("p_merchant_id"),
    )
)
LIVE_UNREVOKED_TOKENS = Statement(
    select(issued_tokens)
    .where(
        issued_tokens.c.api_key_id == bindparam("p_key_id"),
        issued_tokens.c.expire_time > _at("p_now"),
        ~exists().where(revoked_tokens.c.jti == issued_tokens.c.jti),
    )
    .order_by(issued_tokens.c.jti)
)

# Any number of tokens in one statement: one array per column, unnested into rows (one
# SQL text, prepared once, whatever the number of tokens).
_REVOCATIONS = (
    func.unnest(
        bindparam("p_jtis", type_=ARRAY(String())),
        bindparam("p_merchant_ids", type_=ARRAY(String())),
        bindparam("p_expire_times", type_=ARRAY(UtcDateTime())),
    )
    .table_valued("jti", "merchant_id", "expire_time")
    .render_derived(name="r")
)
REVOKE_TOKENS = Statement(
    postgresql.insert(revoked_tokens)
    .from_select(
        ["jti", "merchant_id", "expire_time", "revoke_time"],
        select(*_REVOCATIONS.c, _at("p_now").label("revoke_time")),
    )
    .on_conflict_do_nothing(index_elements=["jti"])
)
_REVOKED_COLUMNS = (
    revoked_tokens.c.jti,
    revoked_tokens.c.expire_time,
    revoked_tokens.c.revoke_time,
)
REVOCATION = Statement(select(*_REVOKED_COLUMNS).where(revoked_tokens.c.jti == bindparam("p_jti")))


def _revoked_since(*, after: bool) -> Statement:
    conditions = [revoked_tokens.c.expire_time > _at("p_now")]
    if after:
        conditions.append(revoked_tokens.c.revoke_time > _at("p_after"))
    return Statement(
        select(*_REVOKED_COLUMNS)
        .where(and_(*conditions))
        .order_by(revoked_tokens.c.revoke_time, revoked_tokens.c.jti)
    )


# By whether only revocations after a time are asked for.
REVOKED_SINCE = {False: _revoked_since(after=False), True: _revoked_since(after=True)}

FORGET_EXPIRED_ISSUED = Statement(
    delete(issued_tokens).where(issued_tokens.c.expire_time <= _at("p_now"))
)
FORGET_EXPIRED_REVOKED = Statement(
    delete(revoked_tokens).where(revoked_tokens.c.expire_time <= _at("p_now"))
)

# -- signing keys ---------------------------------------------------------------------------

_IS_CURRENT = signing_keys.c.status == SigningKeyStatus.CURRENT

CURRENT_KID = _locking(select(signing_keys.c.kid).where(_IS_CURRENT))
# At most one current key (a partial unique index): a second one is not inserted.
ADD_CURRENT_KEY = Statement(
    postgresql.insert(signing_keys).on_conflict_do_nothing(
        index_elements=["status"], index_where=text("status = 'current'")
    )
)
DEMOTE_KEY = Statement(
    update(signing_keys)
    .where(signing_keys.c.kid == bindparam("p_kid"))
    .values(
        status=SigningKeyStatus.PREVIOUS,
        rotate_time=_at("p_now"),
        verify_until=_at("p_verify_until"),
    )
)
EXPIRED_PREVIOUS_KEYS = _locking(
    select(signing_keys.c.kid).where(
        signing_keys.c.status == SigningKeyStatus.PREVIOUS,
        signing_keys.c.verify_until <= _at("p_now"),
    )
)
RETIRE_KEYS = Statement(
    update(signing_keys)
    .where(signing_keys.c.kid == any_(bindparam("p_kids", type_=ARRAY(String()))))
    .values(status=SigningKeyStatus.RETIRED, private_key_ciphertext=None, master_key_version=None)
)
PUBLISHED_KEYS = Statement(
    select(signing_keys)
    .where(or_(_IS_CURRENT, signing_keys.c.status == SigningKeyStatus.PREVIOUS))
    .order_by(_IS_CURRENT.desc(), signing_keys.c.create_time.desc())
)

# -- idempotency keys -------------------------------------------------------------------------

_IDEMPOTENCY_KEY = and_(
    idempotency_keys.c.scope == bindparam("p_scope"),
    idempotency_keys.c.operation == bindparam("p_operation"),
    idempotency_keys.c.key == bindparam("p_key"),
)
STORED_REQUEST = Statement(
    select(idempotency_keys.c.request_hash, idempotency_keys.c.response).where(_IDEMPOTENCY_KEY)
)
FORGET_IDEMPOTENCY_KEYS = Statement(
    delete(idempotency_keys).where(
        idempotency_keys.c.create_time
        < bindparam("p_cutoff", type_=idempotency_keys.c.create_time.type)
    )
)
