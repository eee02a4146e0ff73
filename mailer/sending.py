"""Render and deliver a plan: rendering in worker processes for large sends, delivery by the
engine in `mailer.delivery`, every outcome in the send log."""
from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection

from sqlalchemy.exc import SQLAlchemyError

from .config import Campaign, Config
from .contacts import ContactData
from .delivery import DeliveryReport, Outgoing, RetryPolicy, deliver_all
from .dkim_signing import DkimSigner
from .errors import TemplateError
from .gate import FOOTER_MISSING
from .optouts import apply_spooled_optouts, spooled_hashes
from .pacing import SharedPace
from .planning import Plan, PreparedCampaign
from .render import Renderer
from .senders import Sender
from .states import SendState
from .store import Store
from .throttle import ThrottlePolicy
from .tokens import Keys
from .transport.base import Envelope, Transport
from .workspace import Workspace


@dataclass
class SendReport:
    delivered: DeliveryReport
    footer_blocked: int = 0
    attempted: int = 0


RENDER_CHUNK = 100
LARGE_SEND = 1000  # from this many messages, rendering runs in worker processes


def _forkserver() -> multiprocessing.context.ForkServerContext:
    """forkserver, not fork: render workers start small instead of inheriting the plan's memory,
    from a server that has imported mailer once."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["mailer.sending"])
    return context


_LIFELINE: tuple[Connection, Connection] | None = None


def _lifeline() -> Connection:
    """The read end of a pipe whose write end only this process holds: the kernel closes it
    when this process dies, however it dies (SIGKILL included), and the render workers see
    end-of-file. They are the forkserver's children, not ours, so they cannot rely on us
    waiting for them; the forkserver and the resource tracker exit once they are gone."""
    global _LIFELINE
    if _LIFELINE is None:
        _LIFELINE = multiprocessing.Pipe(duplex=False)
    return _LIFELINE[0]


def _forget_lifeline() -> None:
    """In a child forked from this process: its copy of the write end would keep our workers alive."""
    global _LIFELINE
    if _LIFELINE is not None:
        for end in _LIFELINE:
            end.close()
        _LIFELINE = None


os.register_at_fork(after_in_child=_forget_lifeline)


def _exit_with_parent(lifeline: Connection) -> None:
    """Exit this worker as soon as the sending process is gone: an orphan would otherwise wait
    for work forever, holding memory, a database connection and the forkserver alive."""
    def watch() -> None:
        try:
            lifeline.recv_bytes()  # nothing is ever written: returns only at end-of-file
        except (EOFError, OSError):
            pass
        os._exit(1)

    threading.Thread(target=watch, name="mailer-lifeline", daemon=True).start()


def start_render_workers_early() -> None:
    """Start the process that forks render workers now: it imports mailer while the plan runs,
    instead of holding up the first messages of a large send (half a second here)."""
    _forkserver()
    multiprocessing.forkserver.ensure_running()


async def deliver_campaign(ws: Workspace, prepared: PreparedCampaign, plan: Plan, transport: Transport, *,
                           limit: int | None = None, on_result: Callable[[str], None] | None = None,
                           stop: asyncio.Event | None = None, render_workers: int | None = None,
                           sender: Sender | None = None) -> SendReport:
    """Render and deliver every allowed recipient of the plan (at most `limit`).

    Rendering (Jinja, text part, footer check, MIME bytes) is CPU work: with
    render_workers > 0 it runs in that many processes while this one talks to the
    database and the transport. None picks one per core but one, for large sends.

    With `sender` (one of several processes sending the campaign), rows are reserved for it a
    batch at a time rather than read, the rate limit is shared with the other senders (on
    PostgreSQL); the caller gives back what it reserved and did not send (`Sender.release`).
    """
    campaign = prepared.campaign
    renderer = prepared.renderer
    bounce = ws.config.smtp.bounce_address or renderer.from_address
    to_send = plan.allowed_count if limit is None else min(limit, plan.allowed_count)
    report = SendReport(DeliveryReport(), attempted=to_send)
    footer_blocked: list[dict[str, object]] = []
    wire = getattr(transport, "wire_format", None)
    if render_workers is None:
        # This process is busy too (database, transport): leave it a core.
        render_workers = max(1, (os.cpu_count() or 1) - 1) if to_send >= LARGE_SEND else 0

    # This run's planned rows, read (or reserved) from the send log in chunks rather than held in memory.
    chunks = _Pending(ws.store.sendlog.pending_chunks(campaign.id, plan.run_id, RENDER_CHUNK, to_send)
                      if sender is None else sender.reserved_chunks(RENDER_CHUNK, limit, transport))

    async def rendered_chunks() -> AsyncIterator[list[Outgoing | Blocked]]:
        if render_workers <= 0:
            for chunk in chunks:
                yield render_chunk(renderer, contacts_for(ws.store, chunk), campaign.id, bounce, wire)
                await asyncio.sleep(0)
            return
        pool = ProcessPoolExecutor(render_workers, mp_context=_forkserver(), initializer=_init_worker,
                                   initargs=(_lifeline(), ws.config, campaign, ws.keys, bounce, renderer.dkim, wire))
        # Workers read their chunk's contacts from the database themselves: this
        # process, which also drives the transport, only hands out (log id, contact id).
        try:
            pending: deque[asyncio.Future[list[Outgoing | Blocked]]] = deque()
            upcoming = iter(chunks)
            for chunk in upcoming:
                pending.append(asyncio.wrap_future(pool.submit(_render_in_worker, chunk)))
                if len(pending) >= render_workers * 3:
                    break
            while pending:
                try:
                    done = await pending.popleft()
                except _WorkerTemplateError as exc:
                    raise TemplateError(exc.message, hint=exc.hint) from None
                following = next(upcoming, None)
                if following is not None:
                    pending.append(asyncio.wrap_future(pool.submit(_render_in_worker, following)))
                yield done
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    async def messages() -> AsyncIterator[Outgoing]:
        async for results in rendered_chunks():
            for result in results:
                if isinstance(result, Blocked):
                    footer_blocked.append({"id": result.log_id, "state": SendState.BLOCKED.value, "rule": FOOTER_MISSING,
                                           "detail": result.detail})
                    if on_result:
                        on_result("blocked")
                else:
                    yield result

    # Rate limits protect a remote relay's reputation; the maildir outbox has none.
    rates = [r for r in (campaign.rate_per_second, ws.config.smtp.rate_per_second) if r > 0] \
        if transport.leaves_host else []
    rate = min(rates) if rates else 0
    shared = SharedPace(rate, lambda count, interval: ws.store.campaigns.take_send_slots(campaign.id, count, interval)) \
        if rate and sender is not None and ws.store.dialect == "postgresql" else None
    try:
        report.delivered = await deliver_all(
            ws.store, transport, messages(), campaign_id=campaign.id, on_result=on_result, stop=stop,
            rate_per_second=rate, shared_pace=shared, sender=sender.run_id if sender is not None else None,
            retry=RetryPolicy(ws.config.smtp.max_attempts, ws.config.smtp.retry_base_seconds),
            before_claims=lambda: record_spooled_optouts_now(ws),
            throttling=ThrottlePolicy(ws.config.smtp.throttle_patience_seconds))
    finally:
        if not ws.store.lost:  # a removed file must not be made again, a replaced one not written
            ws.store.sendlog.update(footer_blocked)
    report.footer_blocked = len(footer_blocked)
    throttling = report.delivered.throttling
    if throttling is not None and throttling.gave_up:
        _defer_the_rest(ws, campaign.id, plan.run_id, chunks, report.delivered,
                        sender.run_id if sender is not None else None)
    return report


class _Pending:
    """The chunks of rows this run is to deliver, remembering the last row read: a run that stops
    trying knows which of its rows were meant for it (those beyond --limit were not)."""

    def __init__(self, chunks: Iterator[list[tuple[int, int]]]) -> None:
        self._chunks = chunks
        self.last_id = 0

    def __iter__(self) -> _Pending:
        return self

    def __next__(self) -> list[tuple[int, int]]:
        chunk = next(self._chunks)
        self.last_id = chunk[-1][0]
        return chunk

    def last_of_run(self) -> int:
        """The last row of the run: the rows not read yet are read (ids only) to find it."""
        for _ in self:
            pass
        return self.last_id


def _defer_the_rest(ws: Workspace, campaign_id: str, run_id: int | None, chunks: _Pending,
                    delivered: DeliveryReport, sender: int | None = None) -> None:
    """The relay kept throttling and the run stopped trying: the messages it did not get to are
    deferred with the relay's answer (`status --show deferred` lists them; the next run retries).
    One of several senders (`sender`, its run id) defers only the rows it reserved: reading its
    chunks to the end would reserve, then defer, the rows the other senders are sending."""
    throttling = delivered.throttling
    assert throttling is not None
    deferred = ws.store.sendlog.defer_planned(
        campaign_id, run_id, chunks.last_of_run() if sender is None else None, throttling.code, throttling.text,
        "not offered: the relay kept throttling, so the run stopped trying", claimed_by=sender)
    if deferred:
        delivered.counts["deferred"] += deferred
        delivered.deferrals[throttling.answer] += deferred


#: seconds a running send waits for the database to take the spool's opt-outs before it goes on
#: (and tries again at its next claim)
SPOOL_PATIENCE = 1.0


def record_spooled_optouts_now(ws: Workspace) -> set[str]:
    """Opt-outs `mailer serve` spooled while this campaign runs, recorded before the next claim,
    which then stops their messages. A stat when there is none; never fatal to the send.
    Returns the address hashes still waiting in the spool (the database did not take them in
    time): the claim stops those too, or a person would be mailed after the server's 200."""
    try:
        if not ws.spool.path.exists():
            return set()
        apply_spooled_optouts(ws, patience=SPOOL_PATIENCE)
    except (SQLAlchemyError, OSError):
        pass  # the server records them too, as soon as the database answers
    try:
        return spooled_hashes(ws)  # those the database did not take (or appended meanwhile)
    except OSError:
        return set()


@dataclass(frozen=True, slots=True)
class Blocked:
    """A message that rendered without a visible footer: blocked, never sent."""

    log_id: int
    detail: str


def render_chunk(renderer: Renderer, items: list[tuple[int, ContactData]], campaign_id: str,
                 bounce: str, wire: Callable[[bytes], bytes] | None = None) -> list[Outgoing | Blocked]:
    """Render, check and build the bytes of each (log id, contact); in the transport's wire form if given."""
    results: list[Outgoing | Blocked] = []
    for log_id, contact in items:
        rendered = renderer.render(contact)
        if rendered.footer_problems:
            results.append(Blocked(log_id, "; ".join(rendered.footer_problems)))
            continue
        message_id = renderer.message_id()
        data = renderer.build_mime(rendered, message_id)
        results.append(Outgoing(
            log_id=log_id, address_hash=rendered.address_hash, domain=contact.address.domain,
            subject=rendered.subject, message_id=message_id,
            envelope=Envelope(key=f"{campaign_id}.{log_id}", mail_from=bounce, rcpt_to=contact.email,
                              data=wire(data) if wire else data, wire=wire is not None)))
    return results


def contacts_for(store: Store, chunk: list[tuple[int, int]]) -> list[tuple[int, ContactData]]:
    """(log id, contact) for each (log id, contact id) whose contact still exists (not erased meanwhile)."""
    found = store.contacts.by_id(contact_id for _, contact_id in chunk)
    return [(log_id, found[contact_id]) for log_id, contact_id in chunk if contact_id in found]


_WORKER: tuple[Renderer, Store, str, str, Callable[[bytes], bytes] | None] | None = None


def _init_worker(lifeline: Connection, config: Config, campaign: Campaign, keys: Keys, bounce: str,
                 dkim: DkimSigner | None, wire: Callable[[bytes], bytes] | None) -> None:
    global _WORKER
    _exit_with_parent(lifeline)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides how to stop
    store = Store.attach(config.database_url, busy_timeout=config.database_busy_timeout,
                         reconnect_seconds=config.database_reconnect_seconds)
    _WORKER = (Renderer(config, campaign, keys, dkim=dkim), store, campaign.id, bounce, wire)


def _render_in_worker(chunk: list[tuple[int, int]]) -> list[Outgoing | Blocked]:
    assert _WORKER is not None
    renderer, store, campaign_id, bounce, wire = _WORKER
    try:
        return render_chunk(renderer, contacts_for(store, chunk), campaign_id, bounce, wire)
    except TemplateError as exc:  # re-raised in the parent with its message and hint
        raise _WorkerTemplateError(exc.message, exc.hint) from None


class _WorkerTemplateError(Exception):
    """A TemplateError that survives pickling across the process boundary."""

    def __init__(self, message: str, hint: str | None) -> None:
        super().__init__(message, hint)
        self.message, self.hint = message, hint
