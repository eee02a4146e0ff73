"""Benchmark: `mailer send` against a relay across a network, where round trips cost.

On loopback a round trip is free, so the SMTP dialogue's shape hardly shows. Here
a relay process in front of Postfix's smtp-sink holds every reply back by
--rtt-ms (a link of that round-trip time), and we compare, alternating, the
whole `mailer send --yes` process (which pipelines MAIL, RCPT and DATA when the
server offers PIPELINING, as smtp-sink and real relays do) with a bare
aiosmtplib loop sending the same pre-built messages (one command at a time),
over the same number of connections.

Needs smtp-sink (Debian package postfix). Usage:
  python bench/bench_latency.py [--recipients 2000] [--connections 20] [--rtt-ms 20] [--rounds 3]
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import tempfile
from pathlib import Path

import uvloop
from bench_smtp import bare_loop, free_port, make_project, prebuilt_messages, run_mailer, start_sink


def _relay(listen_port: int, server_port: int, rtt: float) -> None:
    """Forward TCP to the server; the server's bytes reach the client `rtt` seconds later."""

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", server_port)
        loop = asyncio.get_running_loop()
        late: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def upstream() -> None:
            while data := await client_reader.read(65536):
                server_writer.write(data)
            server_writer.close()

        async def downstream() -> None:
            while data := await server_reader.read(65536):
                late.put_nowait((loop.time() + rtt, data))
            late.put_nowait((loop.time() + rtt, b""))

        async def deliver_late() -> None:
            while True:
                due, data = await late.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    break
                client_writer.write(data)
            client_writer.close()

        await asyncio.gather(upstream(), downstream(), deliver_late(), return_exceptions=True)

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, default=2_000)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sink_port, relay_port = free_port(), free_port()
    sink = start_sink(sink_port)
    relay = multiprocessing.get_context("spawn").Process(
        target=_relay, args=(relay_port, sink_port, args.rtt_ms / 1000), daemon=True)
    relay.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            messages = prebuilt_messages(make_project(base / "ref", relay_port, args.connections, args.recipients))
            mailer_times, bare_times = [], []
            for round_ in range(args.rounds):
                project = make_project(base / f"r{round_}", relay_port, args.connections, args.recipients)
                mailer_times.append(run_mailer(project)[0])
                bare_times.append(uvloop.run(bare_loop(relay_port, args.connections, messages)))
                print(f"round {round_ + 1}: mailer {mailer_times[-1]:.2f}s, bare aiosmtplib {bare_times[-1]:.2f}s",
                      flush=True)
            n = args.recipients
            m, b = statistics.median(mailer_times), statistics.median(bare_times)
            print(f"\n{n} recipients, {args.connections} connections, {args.rtt_ms:g} ms round trip, "
                  f"median of {args.rounds}")
            print(f"mailer send (whole process)     {m:.2f}s  {n / m:,.0f} msg/s")
            print(f"bare aiosmtplib loop (uvloop)   {b:.2f}s  {n / b:,.0f} msg/s")
            print(f"throughput ratio mailer/bare    {b / m:.2f}")
    finally:
        relay.terminate()
        sink.terminate()
        sink.wait()


if __name__ == "__main__":
    main()
