"""SMTP delivery with aiosmtplib: a pool of reused connections, TLS, AUTH.

The SMTP dialogue is driven step by step (MAIL, RCPT, DATA) so that we know
where a failure happened: before DATA nothing can have left (safe to retry);
a connection lost during DATA may have delivered the message (`uncertain`).
"""
from __future__ import annotations

import os
import re
import ssl
from collections.abc import Awaitable, Callable

import aiosmtplib
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPDataError,
    SMTPException,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)
from aiosmtplib.protocol import normalize_message_line_endings

from ..addresses import is_loopback
from ..config import Config
from ..errors import InputError, TransportError
from .base import Delivery, Envelope

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})")


def is_hard_bounce(code: int, text: str) -> bool:
    """A permanent refusal of the *recipient* (no such user, mailbox disabled…), not of the message."""
    if code < 500:
        return False
    enhanced = _ENHANCED.match(text)
    if enhanced:
        return enhanced.group(2) == "1" or (enhanced.group(2) == "2" and enhanced.group(3) == "1")
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
    claim_batch = 1  # a message is claimed just before it is handed to the server
    wire_format = staticmethod(wire_message)

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
        self._idle: list[aiosmtplib.SMTP] = []
        self._where = f"{s.host}:{s.port}"

    # ---------------------------------------------------------------- connections

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.host, port=s.port, timeout=s.timeout_seconds,
            use_tls=s.security == "tls", start_tls=True if s.security == "starttls" else False,
            tls_context=self.tls_context, validate_certs=s.security != "none",
        )
        await client.connect()
        if s.username:
            await client.login(s.username, self.password or "")
        return client

    async def open(self) -> None:
        """Open the first connection now, so an unreachable server fails the run before anything is sent."""
        try:
            self._idle.append(await self._connect())
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
        for client in idle:
            try:
                await client.quit()
            except (TimeoutError, SMTPException, OSError):
                client.close()

    def delivered(self, key: str) -> bool | None:
        return None  # an SMTP server keeps no receipt we could ask for

    # ---------------------------------------------------------------- one message

    async def deliver(self, envelope: Envelope, permit: Callable[[], Awaitable[bool]] | None = None) -> Delivery:
        try:
            client = self._idle.pop() if self._idle else await self._connect()
        except SMTPResponseException as exc:
            return _classify(exc.code, exc.message, before_data=True)
        except (TimeoutError, SMTPException, OSError) as exc:
            return Delivery("deferred", text=f"cannot connect to {self._where}: {_describe(exc)}")
        keep = True
        try:
            try:
                await client.mail(envelope.mail_from)
                await client.rcpt(envelope.rcpt_to)
            except SMTPResponseException as exc:
                keep = exc.code != 421 and await _reset(client)
                return _classify(exc.code, exc.message, before_data=True, recipient=True)
            except (TimeoutError, SMTPServerDisconnected, SMTPTimeoutError, SMTPException, OSError) as exc:
                keep = False
                return Delivery("deferred", text=f"connection to {self._where} lost before DATA: {_describe(exc)}")
            if permit is not None and not await permit():
                keep = await _reset(client)
                return Delivery("withheld")
            try:
                response = await self._data(client, envelope)
            except SMTPResponseException as exc:
                keep = exc.code != 421 and await _reset(client)
                return _classify(exc.code, exc.message, before_data=False)
            except (TimeoutError, SMTPServerDisconnected, SMTPTimeoutError, SMTPException, OSError) as exc:
                keep = False
                return Delivery("uncertain", text=f"connection to {self._where} lost during DATA: {_describe(exc)}")
            return Delivery("sent", response.code, response.message)
        finally:
            if keep and client.is_connected:
                self._idle.append(client)
            else:
                client.close()


    async def _data(self, client: aiosmtplib.SMTP, envelope: Envelope) -> aiosmtplib.SMTPResponse:
        if not envelope.wire:
            return await client.data(envelope.data)
        # The payload is already in wire form (wire_data): the exchange of aiosmtplib's
        # SMTPProtocol.execute_data_command, without its per-message regular expressions.
        start = await client.execute_command(b"DATA")
        if start.code != 354:
            raise SMTPDataError(start.code, start.message)
        protocol = client.protocol
        if protocol is None:
            raise SMTPServerDisconnected("Connection lost")
        protocol.write(envelope.data)
        response = await protocol.read_response(timeout=self.settings.timeout_seconds)
        if response.code != 250:
            raise SMTPDataError(response.code, response.message)
        return response


async def _reset(client: aiosmtplib.SMTP) -> bool:
    try:
        await client.rset()
        return True
    except (TimeoutError, SMTPException, OSError):
        return False


def _classify(code: int, text: str, *, before_data: bool, recipient: bool = False) -> Delivery:
    text = " ".join(str(text).split())
    if 400 <= code < 500:
        return Delivery("deferred", code, text)
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
