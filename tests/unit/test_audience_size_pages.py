"""How many counter pages a space's audience sizes take (engage.audiences.store.size_pages)."""
from __future__ import annotations

import random
import string
from collections import Counter

from engage.audiences import store


def keys(n: int, length: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [f"{i}_" + "".join(rng.choices(string.ascii_lowercase, k=length)) for i in range(n)]


def test_a_few_audiences_share_one_page():
    assert store.size_pages([]) == 1
    assert store.size_pages(keys(25, 10)) == 1  # about 20 bytes each: well inside one page
    assert store.size_pages(keys(60, 10)) == 2


def test_pages_double_as_keys_outgrow_them_and_stay_about_a_write_unit():
    for n, length in ((100, 20), (1000, 20), (1000, 62), (5000, 40)):
        audience_keys = keys(n, length)
        pages = store.size_pages(audience_keys)
        assert pages & (pages - 1) == 0  # a power of two: doubling moves only half of the keys
        load = Counter()
        for k in audience_keys:
            load[store.size_page(k, pages)] += len(store.counter_name(k)) + 6
        # on average within SIZE_PAGE_BYTES, and not one page more than needed
        assert sum(load.values()) / pages <= store.SIZE_PAGE_BYTES
        assert sum(load.values()) / (pages // 2 or 1) > store.SIZE_PAGE_BYTES or pages == 1
        assert max(load.values()) < 4 * store.SIZE_PAGE_BYTES  # hashing spreads them


def test_a_key_keeps_its_page_or_moves_to_its_twin_when_pages_double():
    for k in keys(200, 12):
        for pages in (1, 2, 4, 8, 16):
            assert store.size_page(k, pages * 2) in (store.size_page(k, pages), store.size_page(k, pages) + pages)
