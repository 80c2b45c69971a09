"""RefreshAheadCache: what is served, what waits for a load, and what an invalidation prevents."""

from __future__ import annotations

import asyncio

import pytest

from tenantsearch.cache.refresh_ahead import RefreshAheadCache, StaleServing
from tenantsearch.errors import ServiceUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Store:
    """A loader that counts its calls and answers what ``value`` holds at the time."""

    def __init__(self, value: str | None = "v1") -> None:
        self.value = value
        self.loads = 0
        self.gate: asyncio.Event | None = None
        self.fail = False

    async def load(self) -> str | None:
        self.loads += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError("store down")
        return self.value


def make() -> tuple[RefreshAheadCache[str, str], Clock]:
    clock = Clock()
    return RefreshAheadCache(1.0, refresh_after=0.5, clock=clock), clock


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_fresh_entries_are_served_without_loading() -> None:
    cache, clock = make()
    store = Store()
    assert await cache.get("k", store.load) == "v1"
    store.value = "v2"
    clock.now = 0.4
    assert await cache.get("k", store.load) == "v1"
    await settle()
    assert store.loads == 1


async def test_an_ageing_entry_is_served_while_one_background_load_replaces_it() -> None:
    cache, clock = make()
    store = Store()
    await cache.get("k", store.load)
    store.value = "v2"
    store.gate = asyncio.Event()
    clock.now = 0.6
    # Served at once, twice, with a single refresh in flight.
    assert await cache.get("k", store.load) == "v1"
    assert await cache.get("k", store.load) == "v1"
    await settle()
    assert store.loads == 2
    store.gate.set()
    await settle()
    assert await cache.get("k", store.load) == "v2"
    assert store.loads == 2


async def test_an_expired_entry_is_never_served() -> None:
    cache, clock = make()
    store = Store()
    await cache.get("k", store.load)
    store.value = "v2"
    clock.now = 1.0
    assert await cache.get("k", store.load) == "v2"
    assert store.loads == 2


async def test_concurrent_misses_share_one_load() -> None:
    cache, _ = make()
    store = Store()
    store.gate = asyncio.Event()
    waiting = [asyncio.create_task(cache.get("k", store.load)) for _ in range(5)]
    await settle()
    store.gate.set()
    assert await asyncio.gather(*waiting) == ["v1"] * 5
    assert store.loads == 1


async def test_not_found_is_not_cached() -> None:
    cache, _ = make()
    store = Store(value=None)
    assert await cache.get("k", store.load) is None
    store.value = "v1"
    assert await cache.get("k", store.load) == "v1"


async def test_a_load_that_started_before_an_invalidation_does_not_store_its_result() -> None:
    cache, clock = make()
    store = Store()
    await cache.get("k", store.load)
    store.gate = asyncio.Event()
    clock.now = 0.6
    await cache.get("k", store.load)  # starts the refresh, which reads "v1" (the old state)
    await settle()
    cache.pop("k")  # e.g. the key was revoked by this process meanwhile
    store.gate.set()
    await settle()
    store.gate = None
    store.value = "revoked"
    assert await cache.get("k", store.load) == "revoked"


async def test_a_failed_background_refresh_keeps_serving_until_expiry_then_raises() -> None:
    cache, clock = make()
    store = Store()
    await cache.get("k", store.load)
    store.fail = True
    clock.now = 0.6
    assert await cache.get("k", store.load) == "v1"
    await settle()
    clock.now = 1.2
    with pytest.raises(RuntimeError, match="store down"):
        await cache.get("k", store.load)


async def test_a_refresh_that_finds_the_entry_gone_stops_serving_it() -> None:
    cache, clock = make()
    store = Store()
    await cache.get("k", store.load)
    store.value = None
    clock.now = 0.6
    assert await cache.get("k", store.load) == "v1"
    await settle()
    assert cache.peek("k") is None


async def test_a_waiter_whose_shared_load_was_cancelled_loads_itself() -> None:
    cache, _ = make()
    store = Store()
    store.gate = asyncio.Event()
    first = asyncio.create_task(cache.get("k", store.load))
    await settle()
    second = asyncio.create_task(cache.get("k", store.load))
    await settle()
    first.cancel()
    await settle()
    store.gate.set()
    assert await second == "v1"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_size_is_bounded() -> None:
    clock = Clock()
    cache: RefreshAheadCache[int, int] = RefreshAheadCache(1.0, maxsize=3, clock=clock)
    for i in range(10):
        cache.put(i, i)
    assert len(list(cache.items())) == 3
    assert [k for k, _ in cache.items()] == [7, 8, 9]


async def test_an_update_keeps_the_age_of_the_load_it_came_from() -> None:
    cache, clock = make()
    store = Store()
    await cache.get("k", store.load)
    clock.now = 0.9
    cache.update("k", "v1-touched")
    assert cache.peek("k") == "v1-touched"
    clock.now = 1.0  # as old as the load: expired, however recent the update
    assert cache.peek("k") is None
    cache.update("gone", "x")  # not cached: nothing to update
    assert cache.peek("gone") is None


# -- stale on error ------------------------------------------------------------------------------


class Down(Store):
    """A loader whose store can be unreachable (``ServiceUnavailable``) rather than broken."""

    async def load(self) -> str | None:
        self.loads += 1
        if self.fail:
            raise ServiceUnavailable("database down")
        return self.value


def make_stale() -> tuple[RefreshAheadCache[str, str], Clock, StaleServing]:
    clock = Clock()
    policy = StaleServing(300.0, clock=clock)
    return RefreshAheadCache(1.0, refresh_after=0.5, stale=policy, clock=clock), clock, policy


async def test_an_unreachable_store_is_answered_with_the_last_value_for_the_bound() -> None:
    cache, clock, policy = make_stale()
    store = Down()
    assert await cache.get("k", store.load) == "v1"
    store.fail = True
    clock.now = 5.0  # past the ttl: a load is tried, fails, the verified value is served
    assert await cache.get("k", store.load) == "v1"
    assert store.loads == 2
    assert policy.oldest_age() == 5.0
    clock.now = 5.5  # within the retry pause: served without trying again
    assert await cache.get("k", store.load) == "v1"
    assert store.loads == 2
    clock.now = 300.9
    assert await cache.get("k", store.load) == "v1"
    assert store.loads == 3
    assert policy.oldest_age() == 300.9
    clock.now = 301.0  # ttl + the stale bound after the load: fail closed
    with pytest.raises(ServiceUnavailable):
        await cache.get("k", store.load)


async def test_a_key_never_loaded_is_not_guessed_while_the_store_is_down() -> None:
    cache, clock, _ = make_stale()
    store = Down()
    await cache.get("known", store.load)
    store.fail = True
    clock.now = 2.0
    assert await cache.get("known", store.load) == "v1"
    with pytest.raises(ServiceUnavailable):
        await cache.get("unknown", store.load)


async def test_the_store_back_ends_stale_serving_and_drops_what_it_no_longer_has() -> None:
    cache, clock, _ = make_stale()
    store = Down()
    await cache.get("k", store.load)
    store.fail = True
    clock.now = 2.0
    assert await cache.get("k", store.load) == "v1"
    store.fail = False
    store.value = None  # revoked while the store was down
    clock.now = 3.5  # past the retry pause: the next read loads, and the key is gone
    assert await cache.get("k", store.load) is None
    store.fail = True
    clock.now = 10.0
    with pytest.raises(ServiceUnavailable):  # no stale copy of a dropped key
        await cache.get("k", store.load)


async def test_other_errors_and_invalidations_are_never_answered_stale() -> None:
    cache, clock, _ = make_stale()
    store = Store()
    await cache.get("k", store.load)
    store.fail = True  # a RuntimeError: a bug, not an outage
    clock.now = 2.0
    with pytest.raises(RuntimeError):
        await cache.get("k", store.load)
    down = Down()
    await cache.get("j", down.load)
    cache.pop("j")
    down.fail = True
    clock.now = 4.0
    with pytest.raises(ServiceUnavailable):
        await cache.get("j", down.load)


async def test_stale_serving_is_reported_for_a_while_only() -> None:
    clock = Clock()
    policy = StaleServing(60.0, clock=clock)
    assert policy.oldest_age() == 0.0
    policy.served("a", 3.0)
    policy.served("b", 1.0)
    clock.now = 2.0
    assert policy.oldest_age() == 5.0
    clock.now = 10.0
    assert policy.oldest_age() == 0.0


async def test_without_a_stale_policy_an_expired_entry_is_not_served_on_errors() -> None:
    cache, clock = make()
    store = Down()
    await cache.get("k", store.load)
    store.fail = True
    clock.now = 1.5
    with pytest.raises(ServiceUnavailable):
        await cache.get("k", store.load)
