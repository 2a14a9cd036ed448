"""Event streams woken together share one page read, and never one that started before their wake-up."""

import asyncio
import threading

from broker.events import Broadcaster


def test_identical_concurrent_reads_make_one_call_and_all_get_its_result():
    calls = []
    gate = threading.Event()

    def read():
        calls.append(1)
        gate.wait(5)
        return ["frame"]

    async def scenario():
        b = Broadcaster()
        b.attach(asyncio.get_running_loop())
        since = b.generation
        readers = [asyncio.create_task(b.shared_read("k", since, read)) for _ in range(100)]
        other = asyncio.create_task(b.shared_read("other", since, read))  # another key: its own read
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(*readers), await other

    results, other = asyncio.run(scenario())
    assert results == [["frame"]] * 100 and other == ["frame"]
    assert len(calls) == 2


def test_a_reader_woken_after_a_read_started_gets_a_fresh_read():
    """The running read may predate the commit that woke the reader: joining it could miss that packet."""
    seen = []
    gate = threading.Event()

    def read_old():
        gate.wait(5)
        return "before the commit"

    def read_new():
        seen.append("fresh")
        return "after the commit"

    async def scenario():
        b = Broadcaster()
        b.attach(asyncio.get_running_loop())
        first = asyncio.create_task(b.shared_read("k", b.generation, read_old))
        await asyncio.sleep(0.01)
        b.notify()  # a packet committed while the first read runs
        await asyncio.sleep(0.01)
        second = await b.shared_read("k", b.generation, read_new)  # cleared its wake-up after that notify
        gate.set()
        return await first, second

    first, second = asyncio.run(scenario())
    assert (first, second) == ("before the commit", "after the commit") and seen == ["fresh"]


def test_a_reader_that_goes_away_does_not_cancel_the_others_read():
    gate = threading.Event()

    def read():
        gate.wait(5)
        return 7

    async def scenario():
        b = Broadcaster()
        b.attach(asyncio.get_running_loop())
        leaving = asyncio.create_task(b.shared_read("k", 0, read))
        staying = asyncio.create_task(b.shared_read("k", 0, read))
        await asyncio.sleep(0.01)
        leaving.cancel()
        gate.set()
        return await staying, leaving.cancelled()

    assert asyncio.run(scenario()) == (7, True)


def test_a_failed_read_reaches_every_reader_and_is_not_cached():
    attempts = []

    def read():
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("database went away")
        return "ok"

    async def scenario():
        b = Broadcaster()
        b.attach(asyncio.get_running_loop())
        failed = await asyncio.gather(*(b.shared_read("k", 0, read) for _ in range(3)), return_exceptions=True)
        return failed, await b.shared_read("k", 0, read)

    failed, retried = asyncio.run(scenario())
    assert all(isinstance(e, ConnectionError) for e in failed) and retried == "ok" and len(attempts) == 2
