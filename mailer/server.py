"""The unsubscribe endpoint (`mailer serve`): one-click opt-out, RFC 8058.

    POST /u/TOKEN   suppress at once, 200 and a confirmation page (idempotent).
                    Mailbox providers post `List-Unsubscribe=One-Click` with no
                    cookie or login; the page's button posts the same way.
    GET  /u/TOKEN   a page with one button. A GET never unsubscribes: mail
                    security scanners follow links.
    GET  /healthz   for load balancers.

A forged, altered or unknown token gets a 400 page and nothing is recorded.
A body over 16 KiB gets 413 (before it is read), one still arriving after
10 s gets 408: `BodyLimit` wraps the whole app, under any server.
The app shares the database with the senders, so an opt-out stops the next
message. A POST answers 200 only once the opt-out is durable: written (and synced)
to the database, which it waits for and retries for up to `OPTOUT_PATIENCE`
seconds when it is busy (a long import) or unreachable, or else appended to the
local spool (mailer.spool), which the next command that writes, and this app
itself once the database answers again, move to the suppression list. The log
gets one line then, naming no one; never a traceback.

It is a plain ASGI app: `mailer serve` runs it with uvicorn, and any
ASGI server can run `mailer.server:app_from_environment` behind TLS.
"""
from __future__ import annotations

import asyncio
import html
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qs

import anyio
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .config import find_config_path
from .locales import available, strings
from .optouts import OPTOUT_PATIENCE, OptOutRecorded, apply_spooled_optouts, record_optout
from .spool import SpooledOptOut
from .store import utcnow
from .tokens import InvalidToken, UnsubscribeToken, verify
from .workspace import Workspace, open_workspace

log = logging.getLogger("mailer.server")
T = TypeVar("T")

#: a one-click POST body is `List-Unsubscribe=One-Click`, the page's form a few fields
MAX_BODY_BYTES = 16 * 1024
#: seconds a client has to send its whole body, from the request's start (slow clients hold a connection)
BODY_DEADLINE = 10.0

#: seconds a read (is the campaign known, is the address already out) may wait for the database
#: before the page goes on without its answer
READ_PATIENCE = 2.0
#: seconds between attempts to move the spool's opt-outs to the database
DRAIN_INTERVAL = 2.0
#: seconds after an opt-out was spooled during which the next ones are spooled without waiting
#: for the database (the drainer ends it as soon as the database takes the spool)
BUSY_MEMORY = 5.0

REASONS = ("too-many", "not-relevant", "never-signed-up", "other")
#: the bad-link page's language, when the token (which carries the locale) cannot be read
FALLBACK_LOCALE = "en"


def _reader_locale(request: Request) -> str:
    """The page language for a link that carries none (an invalid one): the first of the
    browser's Accept-Language that mailer speaks, by q-value, else FALLBACK_LOCALE."""
    header = request.headers.get("accept-language", "")[:500]
    choices = []
    for position, part in enumerate(header.split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                continue
        choices.append((-q, position, tag.strip().lower()))
    spoken = available()
    for _, _, tag in sorted(choices):
        for candidate in (tag, tag.split("-")[0]):
            if candidate in spoken:
                return candidate
    return FALLBACK_LOCALE

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,Arial,sans-serif;background:#f5f5f5;color:#1a1a1a;margin:0}
main{max-width:34rem;margin:3rem auto;background:#fff;padding:2rem;border-radius:8px;line-height:1.5}
h1{font-size:1.5rem;margin-top:0}
button{font-size:1.1rem;padding:.75rem 1.5rem;background:#1a4fa0;color:#fff;border:0;border-radius:6px;cursor:pointer}
button:focus{outline:3px solid #f0b400;outline-offset:2px}
label{display:block;margin:1rem 0 .25rem}
select{font-size:1rem;padding:.4rem;margin-bottom:1.25rem}
.small{font-size:.875rem;color:#444}
"""

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _page(locale: str, title: str, body: str, status: int = 200) -> HTMLResponse:
    document = (f'<!doctype html><html lang="{locale}"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f'<meta name="robots" content="noindex"><title>{html.escape(title)}</title>'
                f'<style>{STYLE}</style></head><body><main>{body}</main></body></html>')
    return HTMLResponse(document, status_code=status, headers=SECURITY_HEADERS)


class UnsubscribeApp:
    def __init__(self, workspace: Workspace, patience: float = OPTOUT_PATIENCE) -> None:
        self.ws = workspace
        self.patience = patience
        org = workspace.config.organization
        self.org = org
        self._campaigns: set[str] = set()
        self._drainer: threading.Thread | None = None
        self._drainer_lock = threading.Lock()
        #: until when the database counts as busy (an opt-out was just spooled, the spool is not yet
        #: recorded): opt-outs meanwhile go to the spool at once, in threads of their own, instead of
        #: each waiting `patience` on the database for a worker thread the ones before them hold
        self._busy_until = 0.0
        self._to_spool: list[tuple[SpooledOptOut, asyncio.Future[None]]] = []
        self._spooling = False
        #: opt-outs trying the database at once: fewer than the connection pool holds, whose
        #: checkout would otherwise wait past the patience (30 s) while the first ones wait the lock
        self._database_slots = anyio.CapacityLimiter(4)
        self.app = Starlette(routes=[
            Route("/u/{token}", self.show, methods=["GET", "HEAD"]),
            Route("/u/{token}", self.unsubscribe, methods=["POST"]),
            Route("/healthz", self.health, methods=["GET", "HEAD"]),
        ])
        try:
            waiting = workspace.spool.pending()
        except OSError:
            waiting = 0
        if waiting:
            self._drain_in_background()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    # ------------------------------------------------------------------ helpers

    def _fill(self, text: str) -> str:
        o = self.org
        return text.format(org=html.escape(o.name), address=html.escape(o.postal_address),
                           privacy=f'<a href="{html.escape(o.privacy_url)}">{html.escape(o.privacy_url)}</a>',
                           contact=f'<a href="mailto:{html.escape(o.contact_email)}">{html.escape(o.contact_email)}</a>')

    def _bad(self, locale: str = FALLBACK_LOCALE) -> HTMLResponse:
        t = strings(locale).unsubscribe_page
        return _page(locale, t.bad_title, f"<h1>{t.bad_title}</h1><p>{self._fill(t.bad)}</p>", status=400)

    def _unavailable(self, locale: str) -> HTMLResponse:
        t = strings(locale).unsubscribe_page
        response = _page(locale, t.unavailable_title,
                         f"<h1>{t.unavailable_title}</h1><p>{self._fill(t.unavailable)}</p>", status=503)
        response.headers["Retry-After"] = "60"
        return response

    async def _token(self, raw: str) -> UnsubscribeToken | None:
        """The token's content, or None when it is not ours. When the database cannot say whether
        its campaign is known (busy, unreachable), a token with a valid signature is taken: only
        this organisation's secret makes one."""
        try:
            token = verify(self.ws.keys, raw)
        except InvalidToken:
            return None
        if token.test:  # signed by us, and records nothing: its campaign may never have been sent
            return token
        if token.campaign_id not in self._campaigns:
            known = await _bounded(self.ws.store.campaigns.known, token.campaign_id, seconds=READ_PATIENCE)
            if known is False:
                return None
            if known:
                self._campaigns.add(token.campaign_id)  # campaigns are never deleted
        return token

    # ------------------------------------------------------------------ routes

    async def show(self, request: Request) -> Response:
        token = await self._token(request.path_params["token"])
        if token is None:
            return self._bad(_reader_locale(request))
        t = strings(token.locale).unsubscribe_page
        if not token.test and await _bounded(self.ws.store.suppressions.has_hash, token.address_hash,
                                             seconds=READ_PATIENCE):
            return self._done(token.locale, already=True)
        options = "".join(f'<option value="{k}">{html.escape(v)}</option>' for k, v in t.reasons.items())
        action = html.escape(request.url.path)
        body = (f"<h1>{t.title}</h1>" + (f'<p role="note">{t.test}</p>' if token.test else "")
                + f"<p>{self._fill(t.intro)}</p><p>{t.question}</p>"
                f'<form method="post" action="{action}">'
                f'<input type="hidden" name="via" value="page">'
                f'<label for="reason">{t.why}</label><select id="reason" name="reason">{options}</select>'
                f'<div><button type="submit">{t.button}</button></div></form>'
                f'<p class="small">{self._fill(t.privacy)}</p>')
        return _page(token.locale, t.title, body)

    def _done(self, locale: str, already: bool = False) -> HTMLResponse:
        t = strings(locale).unsubscribe_page
        text = t.already if already else t.done
        return _page(locale, t.done_title, f"<h1>{t.done_title}</h1><p role=\"status\">{self._fill(text)}</p>"
                                           f'<p class="small">{self._fill(t.privacy)}</p>')

    async def unsubscribe(self, request: Request) -> Response:
        raw = request.path_params["token"]
        token = await self._token(raw)
        if token is None:
            return self._bad(_reader_locale(request))
        if token.test:  # a test message's link (send --test-to): nothing to record
            t = strings(token.locale).unsubscribe_page
            return _page(token.locale, t.title, f'<h1>{t.title}</h1><p role="status">{t.test}</p>')
        fields = await _form_fields(request)
        origin = "link" if fields.get("via") == "page" else "one-click"
        reason = fields.get("reason", "")
        reason = reason if reason in REASONS else ""
        try:
            recorded = await self._record(raw, token, origin, reason)
        except OSError as exc:
            log.error("opt-out NOT recorded: the database did not answer and the spool %s cannot be written "
                      "(%s); answered 503", self.ws.spool.path, exc.strerror or type(exc).__name__)
            return self._unavailable(token.locale)
        if recorded.spooled:
            log.warning("opt-out kept in the spool %s: the database did not take it within %.1f s (%s, %d "
                        "attempts); it is recorded when the database answers", self.ws.spool.path,
                        recorded.waited, recorded.cause, recorded.attempts)
            self._drain_in_background()
        elif self._spool_waiting():
            self._drain_in_background()
        return self._done(token.locale)

    async def _record(self, raw: str, token: UnsubscribeToken, origin: str, reason: str) -> OptOutRecorded:
        """record_optout in a worker thread; should the database hold that thread past its patience
        (a connection that hangs), the opt-out is spooled here and the thread left to finish
        (a second record of one opt-out changes nothing)."""
        start = time.monotonic()
        if start < self._busy_until:
            return await self._spool_now(raw, origin, reason, start, "the database was busy a moment ago")
        slot = False
        with anyio.move_on_after(self.patience):  # the pool's connections are few: wait for one here
            await self._database_slots.acquire()
            slot = True
        if not slot:
            recorded = await self._spool_now(raw, origin, reason, start, "every database connection was waiting")
        else:
            try:
                recorded = await self._record_in_database(raw, token, origin, reason, start)
            finally:
                self._database_slots.release()
        if recorded.spooled:
            self._busy_until = time.monotonic() + BUSY_MEMORY
        return recorded

    async def _spool_now(self, raw: str, origin: str, reason: str, start: float, cause: str) -> OptOutRecorded:
        """Append to the spool together with the opt-outs that arrive meanwhile: one write, one fsync."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._to_spool.append((SpooledOptOut(raw, origin, reason, utcnow()), done))
        if not self._spooling:
            self._spooling = True
            try:
                while self._to_spool:
                    batch, self._to_spool = self._to_spool, []
                    try:
                        await anyio.to_thread.run_sync(self.ws.spool.append_many, [e for e, _ in batch])
                    except OSError as exc:
                        for _, future in batch:
                            future.set_exception(OSError(exc.errno, exc.strerror))
                    else:
                        for _, future in batch:
                            future.set_result(None)
            finally:
                self._spooling = False
        await done
        return OptOutRecorded(True, time.monotonic() - start, 0, cause)

    async def _record_in_database(self, raw: str, token: UnsubscribeToken, origin: str, reason: str,
                                  start: float) -> OptOutRecorded:
        def record() -> OptOutRecorded:
            if time.monotonic() < self._busy_until:  # found busy while this one waited for a thread
                self.ws.spool.append(SpooledOptOut(raw, origin, reason, utcnow()))
                return OptOutRecorded(True, time.monotonic() - start, 0, "the database was busy a moment ago")
            left = max(self.patience - (time.monotonic() - start), 0.05)
            return record_optout(self.ws, raw, token, origin=origin, reason=reason, patience=left)

        with anyio.move_on_after(self.patience + 2.0):
            return await anyio.to_thread.run_sync(record, abandon_on_cancel=True)
        # In the loop's own thread (an append and an fsync): the worker threads may all be held.
        self.ws.spool.append(SpooledOptOut(raw, origin, reason, utcnow()))
        return OptOutRecorded(True, time.monotonic() - start, 1, "no answer")

    async def health(self, request: Request) -> Response:
        if await _bounded(self.ws.store.contacts.count, seconds=READ_PATIENCE) is None:
            return PlainTextResponse("database unavailable\n", status_code=503)
        return PlainTextResponse("ok\n")

    # ------------------------------------------------------------------ the spool

    def _spool_waiting(self) -> bool:
        try:
            return self.ws.spool.path.exists()
        except OSError:
            return False

    def _drain_in_background(self) -> None:
        """Move the spool's opt-outs to the database as soon as it answers (one thread at a time)."""
        with self._drainer_lock:
            if self._drainer is not None and self._drainer.is_alive():
                return
            self._drainer = threading.Thread(target=self._drain, name="mailer-spool", daemon=True)
            self._drainer.start()

    def _drain(self) -> None:
        while True:
            try:
                applied = apply_spooled_optouts(self.ws, patience=self.patience)
                self._busy_until = 0.0  # the database answered
                if applied.recorded:
                    log.info("recorded %d opt-outs that waited in the spool", applied.recorded)
                if not self.ws.spool.pending() or applied.unverified:
                    return
            except (SQLAlchemyError, OSError):
                pass  # still busy or unreachable: the next round
            time.sleep(DRAIN_INTERVAL)


async def _bounded(read: Callable[..., T], *args: Any, seconds: float) -> T | None:
    """`read(*args)` in a worker thread; None when the database fails or takes longer than `seconds`."""
    with anyio.move_on_after(seconds):
        try:
            return await anyio.to_thread.run_sync(lambda: read(*args), abandon_on_cancel=True)
        except SQLAlchemyError:
            return None
    return None


async def _form_fields(request: Request) -> dict[str, str]:
    """The POST's fields, urlencoded or multipart (RFC 8058 allows both); {} if unreadable."""
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("multipart/form-data"):
            form = await request.form()
            return {k: str(v) for k, v in form.items() if isinstance(v, str)}
        body = await request.body()  # at most MAX_BODY_BYTES: BodyLimit refused the rest
        parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        return {k: v[0] for k, v in parsed.items()}
    except Exception:  # a malformed body still unsubscribes: the POST itself is the request
        return {}


class AccessLog:
    """One line per request, with the token cut out (it carries no address, but no need to keep it).

    An exception that escaped the app gets a 500 (if nothing was answered yet) and one more line
    naming its type only: a traceback's text and values may quote a token or a database row.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        started = False

        async def record(message: Mapping[str, object]) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = int(message["status"])  # type: ignore[call-overload]
                started = True
            await send(message)  # type: ignore[arg-type]

        path = scope["path"]
        if path.startswith("/u/"):
            path = "/u/…"
        try:
            await self.app(scope, receive, record)
        except Exception as exc:  # noqa: BLE001 - logged in one line, without its text
            log.error("%s %s failed: %s", scope["method"], path, type(exc).__name__)
            if not started:
                try:
                    await _refuse(send, 500, "Internal error.")
                except Exception:  # noqa: BLE001 - the client is gone
                    pass
        finally:
            log.info("%s %s %d %.1fms", scope["method"], path, status, (time.perf_counter() - start) * 1000)


class BodyLimit:
    """Read each request's body before the app sees it, refusing it once it is too big or too slow.

    A body whose Content-Length is over `max_bytes` gets 413 before a byte of it is read; a
    chunked one is counted as it arrives and refused as soon as it passes the limit. A client
    still sending after `deadline` seconds gets 408. Either way the connection is closed and the
    app is not called, so nothing is recorded and at most `max_bytes` is held per request.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES, deadline: float = BODY_DEADLINE) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.deadline = deadline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is None:
            await _refuse(send, 400, "Bad Content-Length.")
            return
        if declared > self.max_bytes:
            await _refuse(send, 413, f"Request body over {self.max_bytes} bytes.")
            return
        chunks: list[bytes] = []
        size = 0
        with anyio.move_on_after(self.deadline) as timer:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client left: nobody to answer
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > self.max_bytes:
                    await _refuse(send, 413, f"Request body over {self.max_bytes} bytes.")
                    return
                if not message.get("more_body", False):
                    break
        if timer.cancelled_caught:
            await _refuse(send, 408, f"Request body not received within {self.deadline:g} seconds.")
            return
        await self.app(scope, _replay(b"".join(chunks), receive), send)


def _content_length(scope: Scope) -> int | None:
    """The declared body size (0 if none), or None when the header is not a number."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return 0


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive channel giving the body already read, then the server's own (for disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}
    return replay


async def _refuse(send: Send, status: int, text: str) -> None:
    """A short plain answer that closes the connection, so the server stops reading what is left."""
    body = (text + "\n").encode("ascii")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode("ascii")), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def header_deadline_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol with a deadline on each request's headers.

    uvicorn bounds an idle keep-alive connection but not one that trickles its headers a byte at
    a time: a hundred such clients held every connection `mailer serve` allows, and one-click
    opt-outs got 503. Here a connection that has not sent a whole request's headers within
    `seconds` of opening (or of its last answer) is closed.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # the headers are in: the app and BodyLimit's deadline take over

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadline


def create_app(workspace: Workspace, max_body_bytes: int = MAX_BODY_BYTES,
               body_deadline: float = BODY_DEADLINE, patience: float = OPTOUT_PATIENCE) -> ASGIApp:
    return AccessLog(BodyLimit(UnsubscribeApp(workspace, patience), max_body_bytes, body_deadline))


def app_from_environment() -> ASGIApp:
    """For other ASGI servers: `uvicorn --factory mailer.server:app_from_environment`."""
    environ = dict(os.environ)
    return create_app(open_workspace(find_config_path(None, environ), environ))
