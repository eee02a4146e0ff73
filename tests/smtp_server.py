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
    then accept); `data_faults` likewise; `mail_faults` = answers to the next MAIL commands;
    `drop_data` = addresses whose DATA drops the connection after the server received the message
    (so it may have left); `drop_rcpt` = addresses whose RCPT drops it (nothing can have left). `pipelining`: advertise PIPELINING (RFC 2920) in the EHLO
    answer, as Postfix, Exim and the big providers do; aiosmtpd handles pipelined commands."""

    received: list[Received] = field(default_factory=list)
    rcpt_faults: dict[str, list[str]] = field(default_factory=dict)
    data_faults: dict[str, list[str]] = field(default_factory=dict)
    mail_faults: list[str] = field(default_factory=list)
    drop_data: set[str] = field(default_factory=set)
    drop_rcpt: set[str] = field(default_factory=set)
    delay: float = 0.0
    on_data: Callable[[Received], None] | None = None
    attempts: Counter[str] = field(default_factory=Counter)
    connections: int = 0
    pipelining: bool = True
    messages_per_connection: int = 0  # then MAIL gets 421 and the connection is closed
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: ANN001
        with self.lock:
            self.connections += 1
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # noqa: ANN001
        with self.lock:
            if self.mail_faults:
                return self.mail_faults.pop(0)
        carried = getattr(session, "carried", 0)
        if self.messages_per_connection and carried >= self.messages_per_connection:
            asyncio.get_running_loop().call_soon(server.transport.close)
            return "421 4.7.0 Too many messages on this connection"
        session.carried = carried + 1
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: ANN001
        with self.lock:
            self.attempts[address] += 1
            if address in self.drop_rcpt:  # hang up before the message was sent
                self.drop_rcpt.discard(address)
                server.transport.close()
                return "250 never seen by the client"
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


class Relay:
    """A TCP relay in front of an SMTP server.

    hold_replies: hold the server's replies back from the moment the client sends MAIL FROM
    until it has also sent DATA. A client that pipelines (RFC 2920: MAIL, RCPT and DATA in one
    go) does not notice; one that waits for each reply before the next command stalls.
    trickle: pass the server's replies on one byte per TCP segment.
    max_connections: greet connections beyond this many at once with 421 and hang up, as relays
    that limit each client do (Microsoft 365 allows 3).
    """

    def __init__(self, server_port: int, *, hold_replies: bool = False, trickle: bool = False,
                 max_connections: int = 0) -> None:
        self.server_port = server_port
        self.hold_replies, self.trickle = hold_replies, trickle
        self.max_connections, self.active, self.refused, self.most_at_once = max_connections, 0, 0, 0
        self._count = threading.Lock()
        self.port = free_port()
        self.transactions = 0  # MAIL ... DATA groups seen while holding
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._count:
                if self.max_connections and self.active >= self.max_connections:
                    self.refused += 1
                    client.sendall(b"421 4.7.0 Too many connections from your host\r\n")
                    client.close()
                    continue
                self.active += 1
                self.most_at_once = max(self.most_at_once, self.active)
            server = socket.create_connection(("127.0.0.1", self.server_port))
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sockets += [client, server]
            state = {"holding": False, "held": b""}
            lock = threading.Lock()
            threading.Thread(target=self._client_to_server, args=(client, server, state, lock), daemon=True).start()
            threading.Thread(target=self._server_to_client, args=(server, client, state, lock), daemon=True).start()

    def _client_to_server(self, client: socket.socket, server: socket.socket, state: dict, lock: threading.Lock) -> None:
        pending, in_data = b"", False
        while chunk := _recv(client):
            pending += chunk
            *lines, pending = pending.split(b"\r\n")
            with lock:
                server.sendall(chunk)
                for line in lines:
                    if in_data:
                        in_data = line != b"."
                    elif line.upper().startswith(b"MAIL FROM:"):
                        state["holding"] = self.hold_replies
                    elif line.upper() == b"DATA":
                        in_data = True
                        self.transactions += state["holding"]
                        state["holding"] = False
                        client.sendall(state["held"])
                        state["held"] = b""
        server.close()
        with self._count:
            self.active -= 1

    def _server_to_client(self, server: socket.socket, client: socket.socket, state: dict, lock: threading.Lock) -> None:
        while chunk := _recv(server):
            with lock:
                if state["holding"]:
                    state["held"] += chunk
                elif self.trickle:
                    for i in range(len(chunk)):
                        client.sendall(chunk[i:i + 1])
                else:
                    client.sendall(chunk)
        client.close()

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""
