"""A relay that greets and answers EHLO, then never answers MAIL: the run stops after the first
round of connections (it went on for 197 s over 59 connections), sends nothing, and a rerun
against a working relay delivers everyone."""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from conftest import Project
from smtp_server import RecordingHandler, SmtpServer
from test_send_smtp import many, states, use_smtp

BOTH_DATABASES = True  # also run on PostgreSQL when MAILER_TEST_POSTGRES_URL is set

TIMEOUT = 1.5


@contextmanager
def silent_relay() -> Iterator[tuple[int, list[int]]]:
    """An SMTP server on a free port that greets, answers EHLO (offering PIPELINING), then says
    nothing more. Yields its port and a list counting the connections it accepted."""
    loop = asyncio.new_event_loop()
    connections: list[int] = []
    handlers: set[asyncio.Task[None]] = set()
    started = threading.Event()
    stopping = asyncio.Event()
    port: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        writer.write(b"220 silent.example ESMTP\r\n")
        try:
            while line := await reader.readline():
                if line[:4].upper() in (b"EHLO", b"HELO"):
                    writer.write(b"250-silent.example\r\n250 PIPELINING\r\n")
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port.append(server.sockets[0].getsockname()[1])
        started.set()
        await stopping.wait()
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    started.wait(5)
    try:
        yield port[0], connections
    finally:
        loop.call_soon_threadsafe(stopping.set)
        thread.join(5)
        loop.close()


def test_a_relay_that_never_answers_mail_stops_the_run_after_one_round(project: Project) -> None:
    addresses = many(project, 60)
    with silent_relay() as (port, connections):
        use_smtp(project, port, max_connections=4, timeout_seconds=TIMEOUT)
        began = time.monotonic()
        result = project.send()
        took = time.monotonic() - began
    assert result.exit_code == 1, result.output
    assert took < 2 * TIMEOUT + 1.5, f"the run went on for {took:.1f} s"
    assert len(connections) <= 4, f"{len(connections)} connections"  # one round, no retries
    assert (f"accepted the connection and answered EHLO, but answered no MAIL command within {TIMEOUT:g} s "
            "([smtp] timeout_seconds); nothing was sent") in result.output
    assert set(states(project).values()) == {"planned"}  # nothing claimed is left behind

    handler = RecordingHandler()
    with SmtpServer(handler) as server:
        use_smtp(project, server.port, max_connections=4, timeout_seconds=TIMEOUT)
        rerun = project.send()
    assert rerun.exit_code == 0, rerun.output
    assert handler.recipients() == {a: 1 for a in addresses}
