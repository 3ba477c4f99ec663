from __future__ import annotations

import asyncio

import pytest

from unimeter.actors.mailbox import Mailbox, MailboxClosed, MailboxFull


async def test_try_send_refuses_past_capacity_and_counts() -> None:
    box: Mailbox[int] = Mailbox(2)
    box.try_send(1)
    box.try_send(2)
    with pytest.raises(MailboxFull):
        box.try_send(3)
    box.post_internal(4)  # internal messages are never dropped
    assert box.drain() == [1, 2, 4]
    stats = box.stats()
    assert (stats.depth, stats.peak, stats.capacity, stats.rejected) == (0, 3, 2, 1)


async def test_send_waits_for_room() -> None:
    box: Mailbox[int] = Mailbox(1)
    box.try_send(1)
    sender = asyncio.create_task(box.send(2))
    await asyncio.sleep(0)
    assert not sender.done()
    assert box.drain() == [1]
    await asyncio.wait_for(sender, 1)
    assert box.drain() == [2]


async def test_wait_wakes_on_item_and_close_fails_waiters() -> None:
    box: Mailbox[int] = Mailbox(4)
    waiter = asyncio.create_task(box.wait())
    await asyncio.sleep(0)
    box.try_send(5)
    await asyncio.wait_for(waiter, 1)
    box.drain()
    waiter = asyncio.create_task(box.wait())
    await asyncio.sleep(0)
    box.close()
    with pytest.raises(MailboxClosed):
        await asyncio.wait_for(waiter, 1)
    with pytest.raises(MailboxClosed):
        box.try_send(1)
