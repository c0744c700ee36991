from pi.platform.kernel.ids import is_valid_id, new_id


def test_ids_have_prefix_and_26_crockford_chars() -> None:
    value = new_id("pay")
    assert value.startswith("pay_")
    assert len(value) == 4 + 26
    assert is_valid_id(value, "pay")
    assert not is_valid_id(value, "txn")
    assert not is_valid_id("pay_" + "I" * 26, "pay")
    assert not is_valid_id("pay_short", "pay")


def test_ids_sort_by_creation_time() -> None:
    earlier = new_id("pay", now_ms=1_700_000_000_000)
    later = new_id("pay", now_ms=1_700_000_000_001)
    assert earlier < later
    ids = [new_id("txn", now_ms=1_700_000_000_000 + i) for i in range(100)]
    assert ids == sorted(ids)


def test_ids_are_unique() -> None:
    assert len({new_id("x") for _ in range(10_000)}) == 10_000
