"""The gateway's in-process cache: under steady traffic an entry is reloaded in the background
before it expires, so requests never wait for the database; it is never served older than its
lifetime."""
import asyncio
import threading

import pytest

from gateway.app import TTLCache

pytestmark = pytest.mark.django_db(transaction=True)  # loads run in a thread that closes old connections


class Loader:
    """A load that returns how many times it ran; ``hold`` keeps the next ones from finishing."""

    def __init__(self) -> None:
        self.calls = 0
        self.released = threading.Event()
        self.released.set()

    def __call__(self) -> int:
        self.released.wait(5)
        self.calls += 1
        return self.calls

    def hold(self) -> None:
        self.released.clear()


def test_a_hit_late_in_its_lifetime_answers_at_once_and_refreshes_in_the_background():
    async def scenario():
        # given an entry loaded once, with a 0.5 s lifetime (refreshed after 0.3 s)
        cache, load = TTLCache(0.5), Loader()
        assert await cache.get("k", load) == 1

        # when it is read late in its lifetime while the database is held (a read that waited for
        # the reload would get 2, after the hold ran out)
        await asyncio.sleep(0.35)
        load.hold()
        answered = await cache.get("k", load)

        # then the read answers from the entry, and the reload lands behind it
        assert answered == 1 and "k" in cache.loading
        load.released.set()
        await cache.loading["k"]
        assert await cache.get("k", load) == 2 and load.calls == 2

    asyncio.run(scenario())


def test_an_entry_past_its_lifetime_is_never_served():
    async def scenario():
        # given an entry loaded once, with a 0.2 s lifetime, and no read until it expired
        cache, load = TTLCache(0.2), Loader()
        assert await cache.get("k", load) == 1
        await asyncio.sleep(0.25)

        # when it is read again
        answered = await cache.get("k", load)

        # then the read waited for the reload instead of answering the expired value
        assert answered == 2 and load.calls == 2

    asyncio.run(scenario())
