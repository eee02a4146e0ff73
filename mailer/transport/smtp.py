"""SMTP delivery: a pool of reused connections, TLS, AUTH, PIPELINING.

aiosmtplib opens each connection (greeting, EHLO, STARTTLS with certificate
checks, AUTH). The message transactions are then run by `_Session`, a small
asyncio protocol that takes the connection over: aiosmtplib reads one reply per
command and drops replies that arrive before it asks for them, so it cannot
pipeline (RFC 2920), and its per-command machinery (a lock, a wait_for task, an
injection regex) cost more than everything else the sending process does.

We always know where a failure happened: before the message content was written
nothing can have left (safe to retry); a connection lost after it may have
delivered the message (`uncertain`).
"""
from __future__ import annotations

import asyncio
import os
import re
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping

import aiosmtplib
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPException,
    SMTPHeloError,
    SMTPResponseException,
    SMTPServerDisconnected,
)
from aiosmtplib.protocol import normalize_message_line_endings

from ..addresses import is_loopback
from ..config import Config
from ..errors import InputError, TransportError
from ..suppression import ENHANCED_STATUS, hard_bounce_status
from ..throttle import says_throttled
from .base import Delivery, Envelope


def is_hard_bounce(code: int, text: str) -> bool:
    """A permanent refusal of the *recipient* (no such user, mailbox disabled…), not of the message."""
    if code < 500:
        return False
    if ENHANCED_STATUS.match(text):
        return hard_bounce_status(text)
    return code in (550, 551, 553)


def wire_data(data: bytes, *, crlf_only: bool = False) -> bytes:
    """The DATA payload of a message: CRLF line ends, lines starting with "." doubled, ".\r\n" at the end.

    This is what aiosmtplib's `data()` computes with two regular expressions over the
    whole message; it was a fifth of the sending process's time. Render workers
    compute it instead (`SmtpTransport.wire_format`), with plain byte replacements;
    crlf_only=True skips the line-end check for bytes known to use CRLF only (what
    build_mime makes, DKIM signature included: the tests check it).
    """
    if not crlf_only:
        crlf = data.count(b"\r\n")
        if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
            data = normalize_message_line_endings(data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    data = data.replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    return data + b".\r\n"


def wire_message(data: bytes) -> bytes:
    """wire_data for a message made by Renderer.build_mime (CRLF line ends only)."""
    return wire_data(data, crlf_only=True)


class SmtpTransport:
    name = "smtp"
    leaves_host = True
    needs_processor = True
    claim_batch = 1  # a message is claimed just before it is handed to the server
    wire_format = staticmethod(wire_message)

    @classmethod
    def from_config(cls, config: Config, environ: Mapping[str, str] | None = None) -> SmtpTransport:
        return cls(config, dict(environ) if environ is not None else None)

    def __init__(self, config: Config, environ: dict[str, str] | None = None) -> None:
        self.settings = config.smtp
        self.concurrency = self.settings.max_connections
        environ = dict(os.environ) if environ is None else environ
        s = self.settings
        if s.security == "none" and not is_loopback(s.host):
            raise InputError(f"{config.path}: [smtp] security = \"none\" sends mail in clear text to {s.host}",
                             hint="use \"starttls\" or \"tls\"; \"none\" is only allowed to a loopback host")
        self.password: str | None = None
        if s.username:
            self.password = environ.get(s.password_env)
            if not self.password:
                raise InputError(f"the SMTP password for {s.username}@{s.host} is not set",
                                 hint=f"export {s.password_env}=… (the password never lives in config.toml)")
        self.tls_context: ssl.SSLContext | None = None
        if s.security != "none":
            self.tls_context = ssl.create_default_context(cafile=s.ca_file or None)
        self._idle: list[_Session] = []
        self._open = 0  # sessions connected (idle or busy)
        self._connecting = 0
        self._slots = _Slots(s.max_connections)
        self._reserved = 0  # slots taken by ready() for the next deliver()
        self._idle_waiters: deque[asyncio.Future[None]] = deque()
        self._retiring: set[asyncio.Task[None]] = set()  # connections saying QUIT after the relay throttled
        self._where = f"{s.host}:{s.port}"
        self.target = self._where
        self._answered = False  # a transaction command (MAIL, RCPT, DATA…) got a reply in this run
        self._silent = ""  # why the run stops: the server answers no transaction on any connection

    # ---------------------------------------------------------------- connections

    async def _connect(self) -> _Session:
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.host, port=s.port, timeout=s.timeout_seconds,
            use_tls=s.security == "tls", start_tls=True if s.security == "starttls" else False,
            tls_context=self.tls_context, validate_certs=s.security != "none",
        )
        await client.connect()
        try:
            if client.is_ehlo_or_helo_needed:  # STARTTLS has done it already
                try:
                    await client.ehlo()
                except SMTPHeloError:
                    await client.helo()
            if s.username:
                await client.login(s.username, self.password or "")
            if client.transport is None or not client.is_connected:
                raise SMTPServerDisconnected("connection lost after the greeting")
        except BaseException:
            client.close()
            raise
        size = client.esmtp_extensions.get("size", "")
        return _Session(client.transport, pipelining=client.supports_extension("pipelining"),
                        timeout=s.timeout_seconds, where=self._where,
                        size_limit=int(size) if size.isdigit() and int(size) > 0 else None)

    async def open(self) -> None:
        """Open the first connection now, so an unreachable server fails the run before anything is sent."""
        try:
            self._idle.append(await self._connect())
            self._open += 1
        except SMTPAuthenticationError as exc:
            raise TransportError(f"SMTP server {self._where} refused the login for {self.settings.username}: "
                                 f"{exc.code} {exc.message}",
                                 hint=f"check [smtp] username and ${self.settings.password_env}") from None
        except ssl.SSLError as exc:
            raise TransportError(f"TLS with {self._where} failed: {exc.reason or exc}",
                                 hint="check [smtp] security (tls for port 465, starttls for 587) and the "
                                      "server's certificate (ca_file for a private CA)") from None
        except (TimeoutError, SMTPException, OSError) as exc:
            raise TransportError(f"cannot connect to SMTP server {self._where}: {_describe(exc)}",
                                 hint="check [smtp] host and port, and that the server is up; nothing was sent") from None

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        self._open -= len(idle)
        await asyncio.gather(*(session.quit() for session in idle), *self._retiring)

    def limit_connections(self, most: int) -> None:
        """Keep to `most` connections (the relay throttles; the engine raises it again later): idle
        connections beyond it say QUIT now, busy ones close after their message."""
        self._slots.cap = max(1, most)
        self._slots.wake()
        while self._idle and self._open > self._slots.allowed:
            self._retire(self._idle.pop(0))

    def delivered(self, key: str) -> bool | None:
        return None  # an SMTP server keeps no receipt we could ask for

    def remove_copies(self, keys: Iterable[str]) -> int:
        return 0  # nothing kept here: what left is the recipient's

    async def preflight(self) -> str:
        """Connect and log in as a send would, then leave: what the server offers, in one line."""
        await self.open()
        session = self._idle[-1]
        s = self.settings
        how = {"tls": "TLS", "starttls": "STARTTLS", "none": "no TLS, loopback"}[s.security]
        if s.security != "none":
            how += " with a verified certificate"
        parts = [f"SMTP {self._where}: connected ({how})"]
        if s.username:
            parts.append(f"logged in as {s.username}")
        parts.append("PIPELINING offered (2 round trips per message)" if session.pipelining
                     else "no PIPELINING (4 round trips per message)")
        if session.size_limit:
            parts.append(f"messages up to {session.size_limit / 1_000_000:.0f} MB")
        await self.close()
        return ", ".join(parts) + "."

    def notes(self) -> list[str]:
        """What the user may want to change after this run."""
        fewest = self._slots.fewest
        if fewest < self.settings.max_connections:
            return [f"{self._where} refused connections beyond {fewest} at once; "
                    f"[smtp] max_connections = {fewest} would spare it (and you) the refused ones"]
        return []

    # ---------------------------------------------------------------- one message

    async def ready(self) -> None:
        """Wait until a connection is free or may be opened, and keep it for the next deliver().

        The engine awaits this before it claims a message, so that a message is only claimed
        once a connection is there for it (a crash leaves only those in flight uncertain).
        """
        await self._slots.acquire()
        self._reserved += 1

    async def deliver(self, envelope: Envelope, permit: Callable[[], Awaitable[bool]] | None = None) -> Delivery:
        if self._reserved:
            self._reserved -= 1
        else:
            await self._slots.acquire()
        try:
            while True:
                if self._silent:
                    return Delivery("withheld", text=self._silent, stop_run=self._silent)
                session = await self._session()
                if isinstance(session, Delivery):
                    return session
                reused = session.delivered > 0
                delivery, reusable = await session.transaction(envelope, permit)
                if session.replies:
                    self._answered = True
                elif session.timed_out and delivery.state == "deferred" and not self._answered:
                    # It greets and answers EHLO, then nothing: every connection would wait out its
                    # timeout and every retry too (197 s over 59 connections). Stop after this round;
                    # nothing of the message was written, so it goes back to planned.
                    self._discard(session)
                    self._silent = (f"the SMTP server {self._where} accepted the connection and answered EHLO, "
                                    f"but answered no MAIL command within {self.settings.timeout_seconds:g} s "
                                    "([smtp] timeout_seconds); nothing was sent")
                    return Delivery("withheld", text=self._silent, stop_run=self._silent)
                if reusable and self._open <= self._slots.allowed:
                    self._give_back(session)
                elif reusable:  # beyond what the throttled relay is given now
                    self._retire(session)
                else:
                    self._discard(session)
                if delivery.state == "sent":
                    self._slots.succeeded()
                # A connection that has carried messages may be closed by the server at any time
                # (an idle timeout, a limit of messages per connection: "421 4.7.0 too many
                # messages"). Nothing of this message was accepted: once more on a new connection,
                # rather than an attempt counted and a backoff. Not when the 421 says the relay
                # throttles: the engine slows the run down first.
                if delivery.throttled or not (reused and not reusable and delivery.state == "deferred"
                                              and delivery.code in (None, 421)):
                    return delivery
        finally:
            self._slots.release()

    async def _session(self) -> _Session | Delivery:
        """An idle connection, or a new one; or why there is none."""
        while True:
            while self._idle:
                session = self._idle.pop()
                if session.ready:
                    return session
                self._discard(session)  # the server closed it, or spoke out of turn, while it was idle
            if self._open + self._connecting < self._slots.allowed:
                self._connecting += 1
                try:
                    session = await self._connect()
                except (TimeoutError, SMTPException, OSError) as exc:
                    others = self._open + self._connecting - 1
                    if others == 0 or isinstance(exc, SMTPResponseException) and exc.code >= 500:
                        if isinstance(exc, SMTPResponseException):
                            return _classify(exc.code, exc.message)
                        return Delivery("deferred", text=f"cannot connect to {self._where}: {_describe(exc)}")
                    # Refused while other connections of ours are up: the server takes no more
                    # from us (421 "too many connections"). Use those; try one more later.
                    self._slots.refused(others)
                    continue
                finally:
                    self._connecting -= 1
                    # Whoever waits for a connection looks again: if this was the last one
                    # coming, it must not wait for nothing.
                    self._wake_one()
                self._open += 1
                return session
            waiter = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._idle_waiters:
                    self._idle_waiters.remove(waiter)

    def _give_back(self, session: _Session) -> None:
        self._idle.append(session)
        self._wake_one()

    def _retire(self, session: _Session) -> None:
        """Close a healthy connection politely (QUIT) without waiting for the goodbye."""
        self._open -= 1
        task = asyncio.get_running_loop().create_task(session.quit())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        self._wake_one()

    def _discard(self, session: _Session) -> None:
        session.close()
        self._open -= 1
        self._wake_one()  # it may open a connection instead

    def _wake_one(self) -> None:
        """One delivery waiting for a connection goes on."""
        while self._idle_waiters:
            waiter = self._idle_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break


class _Slots:
    """At most `limit` deliveries at once: max_connections, lowered to the connections the
    server accepts when it refuses one more, and raised again by one after every 100 messages
    sent, to probe (Postfix's destination concurrency feedback, simplified). `cap` is the
    throttle's (`limit_connections`): the lower of the two applies."""

    PROBE_AFTER = 100

    def __init__(self, limit: int) -> None:
        self.most = self.limit = self.cap = limit
        self.fewest = limit  # the lowest the server made it
        self.busy = 0
        self._since_refusal = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def allowed(self) -> int:
        return min(self.limit, self.cap)

    async def acquire(self) -> None:
        while self.busy >= self.allowed:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.busy += 1

    def release(self) -> None:
        self.busy -= 1
        self.wake()

    def refused(self, connections: int) -> None:
        self.limit = max(1, connections)
        self.fewest = min(self.fewest, self.limit)
        self._since_refusal = 0

    def succeeded(self) -> None:
        if self.limit < self.most:
            self._since_refusal += 1
            if self._since_refusal >= self.PROBE_AFTER:
                self._since_refusal = 0
                self.limit += 1
                self.wake()

    def wake(self) -> None:
        free = self.allowed - self.busy
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1


class _Broken(Exception):
    """The session cannot go on: connection lost, reply timed out, or a reply that is not SMTP."""


class _Session(asyncio.Protocol):
    """The message transactions of one SMTP connection that aiosmtplib has opened.

    With PIPELINING (RFC 2920) MAIL, RCPT and DATA leave in one write and their
    replies are read together: two round trips per message instead of four.
    Without it, one command at a time.
    """

    def __init__(self, transport: asyncio.BaseTransport, *, pipelining: bool, timeout: float, where: str,
                 size_limit: int | None = None) -> None:
        self.pipelining = pipelining
        self.size_limit = size_limit  # the server's SIZE, in bytes
        self.delivered = 0  # messages this connection has carried
        self.lost: str | None = None  # why the connection is gone
        self.replies = 0  # replies read to our commands (after EHLO)
        self.timed_out = False  # the connection was closed because a reply did not come in time
        self._transport = transport
        self._timeout = timeout
        self._where = where
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._replies: deque[tuple[int, str]] = deque()
        self._wanted = 0
        self._waiter: asyncio.Future[None] | None = None
        transport.set_protocol(self)

    # ---------------------------------------------------------------- asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = position = 0
        while (end := buffer.find(b"\n", position)) >= 0:
            line = buffer[position:end + 1]
            position = end + 1
            if not line[:3].isdigit() or line[3:4] not in (b" ", b"-", b"\r", b"\n"):
                self._break(f"not an SMTP reply: {bytes(line[:80])!r}")
                return
            if line[3:4] == b"-":  # more lines of this reply follow
                continue
            reply = bytes(buffer[start:position])
            text = " ".join(part[4:].strip().decode("utf-8", "replace") for part in reply.splitlines())
            self._replies.append((int(reply[:3]), text))
            start = position
        if start:
            del buffer[:start]
        if len(buffer) > _MAX_REPLY:
            self._break("a reply longer than 64 KiB")
            return
        waiter = self._waiter
        if waiter is not None and len(self._replies) >= self._wanted and not waiter.done():
            waiter.set_result(None)

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self._break(_describe(exc) if exc else "closed by the server")

    @property
    def ready(self) -> bool:
        """Connected, and nothing unasked for waiting: the next reply will be the next command's."""
        return self.lost is None and not self._replies and not self._buffer

    # ---------------------------------------------------------------- plumbing

    def _break(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(_Broken(self.lost))
            waiter.exception()  # retrieved: nobody may be waiting any more
        self._transport.close()

    def _write(self, data: bytes) -> None:
        if self.lost is not None:
            raise _Broken(self.lost)
        self._transport.write(data)  # type: ignore[attr-defined]

    async def _read(self, count: int, timeout: float | None = None) -> list[tuple[int, str]]:
        """The next `count` replies."""
        replies = self._replies
        if len(replies) < count:
            if self.lost is not None:
                raise _Broken(self.lost)
            self._wanted = count
            waiter = self._waiter = self._loop.create_future()
            timeout = timeout or self._timeout
            timer = self._loop.call_later(timeout, self._time_out, timeout)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        self.replies += count
        return [replies.popleft() for _ in range(count)]

    def _time_out(self, timeout: float) -> None:
        self.timed_out = True
        self._break(f"no answer within {timeout:g} s")

    async def _reset(self) -> bool:
        """RSET after a refused transaction; False when the connection is not worth keeping."""
        try:
            self._write(b"RSET\r\n")
            return 200 <= (await self._read(1))[0][0] < 300
        except _Broken:
            return False

    async def quit(self) -> None:
        try:
            self._write(b"QUIT\r\n")
            await self._read(1, timeout=min(self._timeout, 5.0))  # the run is over: do not hang on a goodbye
        except _Broken:
            pass
        self.close()

    def close(self) -> None:
        if self.lost is None:
            self.lost = "closed by us"
        self._transport.close()

    # ---------------------------------------------------------------- one message

    async def transaction(self, envelope: Envelope,
                          permit: Callable[[], Awaitable[bool]] | None) -> tuple[Delivery, bool]:
        """Deliver one message. Returns what happened and whether the connection can carry the next one."""
        if _UNSAFE.search(envelope.mail_from) or _UNSAFE.search(envelope.rcpt_to):
            return Delivery("failed", text="refusing an address with control characters, angle brackets or "
                                           f"non-ASCII characters: {envelope.rcpt_to!r}"), True
        mail_command = f"MAIL FROM:<{envelope.mail_from}>\r\n".encode("ascii")
        rcpt_command = f"RCPT TO:<{envelope.rcpt_to}>\r\n".encode("ascii")
        payload = envelope.data if envelope.wire else wire_data(envelope.data)
        try:
            if self.pipelining:
                self._write(mail_command + rcpt_command + b"DATA\r\n")
                mail, rcpt, data = await self._read(3)
                refused = _refusal(mail, rcpt) or (None if data[0] == 354 else _classify(*data))
                if refused is not None:
                    if data[0] == 354:  # the server waits for a content we will not send: hang up
                        return refused, False
                    return refused, not _closing(mail, rcpt, data) and await self._reset()
                if permit is not None and not await permit():
                    return Delivery("withheld"), False  # in the middle of DATA: hanging up sends nothing
            else:
                self._write(mail_command)
                mail = (await self._read(1))[0]
                refused = _refusal(mail)
                if refused is None:
                    self._write(rcpt_command)
                    rcpt = (await self._read(1))[0]
                    refused = _refusal(mail, rcpt)
                if refused is not None:
                    return refused, refused.code != 421 and await self._reset()
                if permit is not None and not await permit():
                    return Delivery("withheld"), await self._reset()
                self._write(b"DATA\r\n")
                data = (await self._read(1))[0]
                if data[0] != 354:
                    return _classify(*data), data[0] != 421 and await self._reset()
        except _Broken as exc:
            # Nothing of the message was written. A 421 that came before the hang-up says more.
            early = next(((code, text) for code, text in self._replies if code >= 400), None)
            if early is not None:
                return _classify(*early), False
            return Delivery("deferred", text=f"connection to {self._where} lost before DATA: {exc}"), False
        try:
            self._write(payload)
            code, text = (await self._read(1))[0]
        except _Broken as exc:
            return Delivery("uncertain", text=f"connection to {self._where} lost during DATA: {exc}"), False
        if 200 <= code < 300:
            self.delivered += 1
            return Delivery("sent", code, text), True
        return _classify(code, text), code != 421 and await self._reset()


_MAX_REPLY = 65536
_UNSAFE = re.compile(r"[^\x21-\x7e]|[<>]")  # what an envelope address never holds


def _refusal(mail: tuple[int, str], rcpt: tuple[int, str] | None = None) -> Delivery | None:
    """The delivery that MAIL's or RCPT's reply ends in, or None when both accepted."""
    if not 200 <= mail[0] < 300:
        return _classify(*mail)
    if rcpt is not None and not 200 <= rcpt[0] < 300:
        return _classify(*rcpt, recipient=True)
    return None


def _closing(*replies: tuple[int, str]) -> bool:
    return any(code == 421 for code, _ in replies)


def _classify(code: int, text: str, *, recipient: bool = False) -> Delivery:
    text = " ".join(str(text).split())
    if 400 <= code < 500:
        return Delivery("deferred", code, text, throttled=says_throttled(code, text))
    if code >= 500:
        return Delivery("failed", code, text, hard_bounce=recipient and is_hard_bounce(code, text))
    return Delivery("deferred", code, f"unexpected answer {code} {text}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SMTPResponseException):
        return f"{exc.code} {exc.message}"
    if isinstance(exc, SMTPConnectError):
        return str(exc) or "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
