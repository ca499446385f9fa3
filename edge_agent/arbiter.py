"""Which announcement the loudspeaker plays now: priority arbitration, pure logic.

Emergency I > II > III > IV > live paging > notice > routine. A higher rank interrupts a
lower one at once; an interrupted announcement goes back in the queue to be played
again from its start if it has not expired; an interrupted routine programme is simply
dropped (its schedule resumes with the next item). Equal ranks queue in arrival order.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Item:
    broadcast_id: str
    command_id: str
    rank: int
    start_at_ms: int
    expires_at_ms: int
    replay_after_preemption: bool = True
    arrival: int = 0
    payload: object = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Decision:
    play: Item | None = None  # start this now
    preempted: Item | None = None  # the one it interrupts (already requeued if replayable)
    expired: tuple[Item, ...] = ()  # dropped from the queue: their time is over


class Arbiter:
    def __init__(self) -> None:
        self.current: Item | None = None
        self._queue: list[Item] = []
        self._arrivals = 0
        self._last_decided_ms: int | None = None

    @property
    def queued(self) -> tuple[Item, ...]:
        return tuple(self._queue)

    def offer(self, item: Item) -> None:
        self._arrivals += 1
        item.arrival = self._arrivals
        self._queue.append(item)

    def decide(self, now_ms: int, lead_ms: int = 0) -> Decision:
        """What to do at `now_ms`. An item is due `lead_ms` before its start (the
        amplifier's warm-up), so it can preempt in time to start on the instant."""
        self._last_decided_ms = now_ms
        expired = tuple(i for i in self._queue if i.expires_at_ms <= now_ms)
        self._queue = [i for i in self._queue if i.expires_at_ms > now_ms]
        due = [i for i in self._queue if i.start_at_ms - lead_ms <= now_ms]
        if not due:
            return Decision(expired=expired)
        best = max(due, key=lambda i: (i.rank, -i.arrival))
        if self.current is not None and best.rank <= self.current.rank:
            return Decision(expired=expired)
        self._queue.remove(best)
        preempted = self.current
        if preempted is not None and preempted.replay_after_preemption:
            self._queue.append(preempted)  # keeps its original arrival order
        self.current = best
        return Decision(play=best, preempted=preempted, expired=expired)

    def finished(self, item: Item) -> None:
        if self.current is item:
            self.current = None

    def remove(self, broadcast_id: str) -> Item | None:
        """Take a broadcast out (cancel): the queued item, or the current one."""
        for i in self._queue:
            if i.broadcast_id == broadcast_id:
                self._queue.remove(i)
                return i
        if self.current is not None and self.current.broadcast_id == broadcast_id:
            item, self.current = self.current, None
            return item
        return None

    def next_wakeup_ms(self, lead_ms: int = 0) -> int | None:
        """When a decision can next change: a queued item becoming due, or expiring.

        An item that was already due at the last decision (e.g. an announcement waiting
        behind an emergency) can only change things by expiring; counting its start would
        give a time in the past and make the caller spin."""
        last = self._last_decided_ms
        times = []
        for i in self._queue:
            due_at = i.start_at_ms - lead_ms
            if last is not None and due_at <= last:
                times.append(i.expires_at_ms)
            else:
                times.append(min(due_at, i.expires_at_ms))
        return min(times) if times else None
