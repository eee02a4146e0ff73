"""The delivery engine: hands rendered messages to a transport, at most once.

Every message is claimed (`planned` -> `sending`, committed) before it is given
to the transport, and its outcome is written as soon as it is known. Claims and
outcomes of concurrent workers share transactions (group commit), so the
database does one commit for many messages, yet a crash can only leave the
messages that were in flight in `sending` -> reported `uncertain` next run.

The claim also re-reads the suppression list: an opt-out recorded by another
process while the campaign runs stops the messages not yet sent to that address.
"""
from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .pacing import SharedPace
from .states import SendState
from .store import Store, utcnow
from .throttle import Throttle, ThrottlePolicy, ThrottleReport
from .transport.base import Delivery, Envelope, Transport


@dataclass(slots=True)
class Outgoing:
    log_id: int
    address_hash: str
    domain: str
    subject: str
    message_id: str
    envelope: Envelope
    attempts: int = 0


@dataclass
class DeliveryReport:
    counts: Counter[str] = field(default_factory=Counter)
    stopped: bool = False
    aborted: str = ""  # why the engine stopped by itself (the server went away)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (address, reason)
    deferrals: Counter[str] = field(default_factory=Counter)  # the server's answers that left messages deferred
    throttling: ThrottleReport | None = None  # what the relay's limits did to the run, when it throttled


class _GroupCommitter:
    """Batches claims and outcomes from concurrent workers into shared transactions."""

    def __init__(self, store: Store, before_claims: Callable[[], set[str] | None] | None = None,
                 sender: int | None = None) -> None:
        self._before_claims = before_claims
        self._writer = store.sendlog.writer(sender)
        self._claims: list[tuple[Outgoing, asyncio.Future[str]]] = []
        self._outcomes: list[dict[str, Any]] = []
        self._suppressions: list[tuple[str, str, str]] = []  # (hash, reason, campaign)
        self._wakeup = asyncio.Event()
        self._closed = False

    async def claim(self, messages: list[Outgoing]) -> list[str]:
        """Mark the messages `sending` (committed). Each answer is "go", or "suppressed" (opted
        out meanwhile), or "taken" (another process sending the same campaign claimed it)."""
        return list(await asyncio.gather(*map(self.claim_one, messages)))

    def claim_one(self, message: Outgoing) -> asyncio.Future[str]:
        """Queue one message's claim for the next commit: the answer's future."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._claims.append((message, future))
        self._wakeup.set()
        return future

    def outcome(self, message: Outgoing, delivery: Delivery) -> None:
        self._outcomes.append({
            "id": message.log_id, "state": delivery.state, "smtp_code": delivery.code,
            "smtp_text": delivery.text[:500], "attempts": message.attempts,
            **({"sent_at": utcnow()} if delivery.state == SendState.SENT else {}),
        })
        # Outcomes ride along with the next claim (there is one as soon as a worker is
        # free) or the next tick; only a large backlog forces a commit of its own.
        if len(self._outcomes) >= 256:
            self._wakeup.set()

    def hard_bounce(self, message: Outgoing, reason: str, campaign_id: str) -> None:
        self._suppressions.append((message.address_hash, reason, campaign_id))

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=0.05)
            except TimeoutError:
                pass
            self._wakeup.clear()
            if self._claims or self._outcomes or self._suppressions:
                claims, self._claims = self._claims, []
                outcomes, self._outcomes = self._outcomes, []
                bounces, self._suppressions = self._suppressions, []
                try:
                    # In the loop's thread on purpose: a worker thread made every C call that
                    # releases the GIL (lxml, file I/O) wait for it to come back.
                    refused = self._flush(claims, outcomes, bounces)
                except BaseException as exc:
                    for _, future in claims:
                        if not future.done():
                            future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
                    raise
                for message, future in claims:
                    if not future.done():
                        future.set_result(refused.get(message.log_id, "go"))
                self._wakeup.set()
            elif self._closed:
                self._writer.verify()  # a database file removed at the very end is noticed too
                return

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()

    def _flush(self, claims: list[tuple[Outgoing, asyncio.Future[str]]], outcomes: list[dict[str, Any]],
               bounces: list[tuple[str, str, str]]) -> dict[int, str]:
        """One transaction. Returns the claims that did not go: log id -> "suppressed" | "taken"."""
        spooled: set[str] = set()
        if claims and self._before_claims is not None:
            spooled = self._before_claims() or set()
        answer = self._writer.commit([m for m, _ in claims], outcomes, bounces, spooled=spooled)
        for message, _ in claims:
            if message.log_id in answer.claimed:
                message.attempts += 1
        return answer.refused

    def release(self) -> None:
        self._writer.close()


@dataclass
class RetryPolicy:
    max_attempts: int = 5
    base_seconds: float = 1.0

    def delay(self, attempt: int) -> float:
        return self.base_seconds * (2 ** (attempt - 1)) * (0.5 + random.random())


async def deliver_all(store: Store, transport: Transport, messages: AsyncIterator[Outgoing] | Iterable[Outgoing],
                      *, campaign_id: str, retry: RetryPolicy | None = None,
                      sender: int | None = None, shared_pace: SharedPace | None = None,
                      on_result: Callable[[str], None] | None = None,
                      stop: asyncio.Event | None = None, rate_per_second: float = 0,
                      before_claims: Callable[[], set[str] | None] | None = None,
                      throttling: ThrottlePolicy | None = None) -> DeliveryReport:
    """Deliver every message with `transport.concurrency` workers. Returns the counts.

    With `sender` (its run id, when several processes send the campaign) only the rows that
    sender reserved are claimed; `shared_pace` keeps a rate shared with the other senders.

    Setting `stop` lets in-flight messages finish, then returns with `stopped`.
    `before_claims` runs before each transaction that claims messages (to record
    opt-outs kept elsewhere, which the claim then honours). Answers saying the relay
    limits the sender slow the whole run (`mailer.throttle`); when it throttles past
    `throttling.patience_seconds`, the run stops trying (`report.throttling.gave_up`).
    """
    retry = retry or RetryPolicy()
    stop = stop or asyncio.Event()
    report = DeliveryReport()
    committer = _GroupCommitter(store, before_claims, sender)
    writer = asyncio.create_task(committer.run())
    queue: asyncio.Queue[Outgoing | None] = asyncio.Queue(maxsize=max(4, transport.concurrency * 4))
    pace = _Pace(rate_per_second)
    throttle = Throttle(rate_per_second=rate_per_second, connections=transport.concurrency, policy=throttling,
                        limit_connections=getattr(transport, "limit_connections", None),
                        on_give_up=lambda _: stop.set())

    async def produce() -> None:
        try:
            if hasattr(messages, "__aiter__"):
                async for message in messages:
                    if stop.is_set():
                        break
                    await queue.put(message)
            else:
                for message in messages:
                    if stop.is_set():
                        break
                    await queue.put(message)
        finally:
            for _ in range(transport.concurrency):
                await queue.put(None)

    def finish(state: str) -> None:
        report.counts[state] += 1
        if on_result:
            on_result(state)

    batch_size = max(1, getattr(transport, "claim_batch", 1))
    ready = getattr(transport, "ready", None)

    async def take() -> tuple[list[Outgoing], bool]:
        """Up to batch_size queued messages; the flag says the producer is done."""
        first = await queue.get()
        if first is None:
            return [], True
        batch = [first]
        while len(batch) < batch_size and not queue.empty():
            message = queue.get_nowait()
            if message is None:
                return batch, True
            batch.append(message)
        return batch, False

    # Circuit breaker: when every connection keeps failing, retrying each remaining
    # message with backoff would take hours; stop instead (the rest stays planned).
    unreachable = [0]
    give_up_after = max(5, transport.concurrency)

    def halt(delivery: Delivery) -> None:
        """The transport says no further message can go in this run: stop after those in flight."""
        if delivery.stop_run and not stop.is_set():
            report.aborted = delivery.stop_run
            stop.set()

    async def deliver_one(message: Outgoing, claimed: bool = True) -> None:
        """Deliver a claimed message (retrying temporary failures); or, with claimed=False, claim
        it while the transport opens the transaction: only DATA waits for the claim."""
        while True:
            if shared_pace is not None:
                await shared_pace.wait()
            await pace.wait()
            if throttle.slowed and not await throttle.wait(stop):  # stopping while the relay throttles
                if claimed:
                    committer.outcome(message, Delivery("planned", text="stopped before delivery"))
                return
            if claimed:
                delivery = await transport.deliver(message.envelope)
                halt(delivery)
                if delivery.state == "withheld":
                    committer.outcome(message, Delivery("planned", text=delivery.text or "stopped before delivery"))
                    return
            else:
                if ready is not None:  # claim only once a connection is there for the message
                    await ready()
                claim = committer.claim_one(message)

                async def permit(claim: asyncio.Future[str] = claim) -> bool:
                    return await claim == "go" and not stop.is_set()

                delivery = await transport.deliver(message.envelope, permit=permit)
                answer = await claim
                claimed = True
                halt(delivery)
                if answer != "go":  # opted out meanwhile, or another process has the row: nothing was sent
                    finish(answer)
                    return
                if delivery.state == "withheld":  # stopping: the message goes back to the queue
                    committer.outcome(message, Delivery("planned", text=delivery.text or "stopped before delivery"))
                    return
            if delivery.throttled and throttle.throttled(message.log_id, delivery.code, delivery.text) \
                    and not stop.is_set():
                # The relay limits the run, not this message: the run slows down, and the message
                # goes back to planned, its attempt not counted, to be claimed again at the new pace.
                message.attempts -= 1
                committer.outcome(message, Delivery("planned", delivery.code, delivery.text))
                claimed = False
                continue
            if delivery.state == "deferred" and message.attempts < retry.max_attempts and not stop.is_set():
                committer.outcome(message, Delivery("sending", delivery.code, delivery.text))
                await _sleep_or_stop(retry.delay(message.attempts), stop)
                if not stop.is_set():
                    message.attempts += 1
                    continue
            break
        committer.outcome(message, delivery)
        if delivery.state == "deferred" and (delivery.code is None or delivery.code == 421) and not delivery.throttled:
            unreachable[0] += 1
            if unreachable[0] >= give_up_after and not stop.is_set():
                report.aborted = f"the server stopped answering ({delivery.text})"
                stop.set()
        elif delivery.state in ("sent", "failed"):
            unreachable[0] = 0
            if delivery.state == "sent":
                throttle.accepted()
        if delivery.hard_bounce:
            committer.hard_bounce(message, f"{delivery.code} {delivery.text}"[:200], campaign_id)
        if delivery.state == "failed":
            report.failures.append((message.envelope.rcpt_to, f"{delivery.code} {delivery.text}"))
        elif delivery.state == "deferred":
            report.deferrals[f"{delivery.code or ''} {delivery.text}".strip()[:160]] += 1
        finish(delivery.state)

    async def work() -> None:
        done = False
        while not done:
            batch, done = await take()
            if stop.is_set() or not batch:
                continue
            if batch_size == 1:
                await deliver_one(batch[0], claimed=False)
                continue
            for message, answer in zip(batch, await committer.claim(batch), strict=True):
                if answer != "go":
                    finish(answer)
                elif stop.is_set():
                    committer.outcome(message, Delivery("planned", text="stopped before delivery"))
                else:
                    await deliver_one(message)

    producer = asyncio.create_task(produce())
    workers = [asyncio.create_task(work()) for _ in range(transport.concurrency)]
    try:
        await asyncio.gather(producer, *workers)
    finally:
        for task in (producer, *workers):
            task.cancel()
        committer.close()
        try:
            await writer
        finally:
            committer.release()
    report.throttling = throttle.report()
    report.stopped = stop.is_set() and not throttle.gave_up
    return report


class _Pace:
    """At most `rate` deliveries per second across all workers (0: unlimited)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next_slot = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = asyncio.get_running_loop().time()
        slot = max(now, self.next_slot)
        self.next_slot = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


async def _sleep_or_stop(seconds: float, stop: asyncio.Event) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass
