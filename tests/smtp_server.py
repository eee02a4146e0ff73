"""A real SMTP server for tests: aiosmtpd in-process on a free port, recording and injecting faults."""
from __future__ import annotations

import asyncio
import email
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    rcpt_to: list[str]
    data: bytes

    @property
    def message(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


@dataclass
class RecordingHandler:
    """Records deliveries. Faults: `rcpt_faults[address] = [answer, answer, …]` (one per attempt,
    then accept); `data_faults` likewise; `drop_data` = addresses whose DATA drops the connection
    after the server received the message (so it may have left)."""

    received: list[Received] = field(default_factory=list)
    rcpt_faults: dict[str, list[str]] = field(default_factory=dict)
    data_faults: dict[str, list[str]] = field(default_factory=dict)
    drop_data: set[str] = field(default_factory=set)
    delay: float = 0.0
    on_data: Callable[[Received], None] | None = None
    attempts: Counter[str] = field(default_factory=Counter)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: ANN001
        with self.lock:
            self.connections += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: ANN001
        with self.lock:
            self.attempts[address] += 1
            faults = self.rcpt_faults.get(address)
            if faults:
                return faults.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001
        if self.delay:
            await asyncio.sleep(self.delay)
        rcpt = envelope.rcpt_tos[0]
        with self.lock:
            faults = self.data_faults.get(rcpt)
            if faults:
                return faults.pop(0)
        item = Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
        with self.lock:
            self.received.append(item)
        if self.on_data:
            self.on_data(item)
        if rcpt in self.drop_data:
            self.drop_data.discard(rcpt)
            server.transport.close()
            return "250 never seen by the client"
        return "250 2.0.0 Message accepted"

    def recipients(self) -> Counter[str]:
        with self.lock:
            return Counter(r for item in self.received for r in item.rcpt_to)


class SmtpServer:
    def __init__(self, handler: RecordingHandler, **smtp_options: object) -> None:
        self.handler = handler
        self.port = free_port()
        self.controller = Controller(handler, hostname="127.0.0.1", port=self.port, **smtp_options)

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        self._stopped = False
        self._lock = threading.Lock()
        return self

    def stop(self) -> None:
        """Stop accepting connections (idempotent; callable from any thread)."""
        with self._lock:
            if not self._stopped:
                self._stopped = True
                self.controller.stop()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def password_authenticator(username: str, password: str) -> Callable[..., AuthResult]:
    def authenticate(server, session, envelope, mechanism, auth_data):  # noqa: ANN001
        ok = isinstance(auth_data, LoginPassword) and auth_data.login == username.encode() \
            and auth_data.password == password.encode()
        return AuthResult(success=ok, handled=False)
    return authenticate
