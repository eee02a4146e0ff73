"""A campaign's rate limit held for all its senders together (several processes, on PostgreSQL).

The database keeps the budget: the campaign's next free sending slot, which each sender moves on
atomically by the slots it takes (`Campaigns.take_send_slots`). A sender takes a few slots at a
time (a quarter of a second's worth, at most 50) and hands them to its connections in turn, so
the database is asked a few times a second, not once per message. N senders at rate R send at R
together; slots a sender took and did not use (it stopped) are lost, never saved up.
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

#: seconds' worth of slots a sender takes at once
SLOTS_SPAN = 0.25
MAX_SLOTS = 50


class SharedPace:
    """`await wait()` before each delivery: returns at this sender's next slot of the shared budget.
    `take_slots(count)` reserves `count` slots of the campaign's budget and says how many seconds
    away the first is."""

    def __init__(self, rate: float, take_slots: Callable[[int, float], float]) -> None:
        self.interval = 1.0 / rate
        self.block = max(1, min(MAX_SLOTS, int(rate * SLOTS_SPAN)))
        self._take_slots = take_slots
        self._slots: deque[float] = deque()  # event-loop times of the slots taken, not yet used

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        if not self._slots:
            ahead = self._take_slots(self.block, self.interval)
            first = loop.time() + ahead
            self._slots.extend(first + i * self.interval for i in range(self.block))
        delay = self._slots.popleft() - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
