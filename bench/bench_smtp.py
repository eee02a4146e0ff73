"""Benchmark: `mailer send` over SMTP against Postfix's smtp-sink on loopback.

Compares, in the same run and alternating, the wall time of the whole
`mailer send --yes` process (CSV upsert, planning, gate, rendering, footer
check, send log) with a bare aiosmtplib loop sending the same pre-built
messages over the same number of connections: the issue's reference, on
asyncio's standard event loop, and the same loop on uvloop (which mailer uses
when installed), so that the ratio is also given against an equal event loop.
Also times mailer's own SMTP transport alone on the same pre-built messages
(it pipelines; aiosmtplib cannot): what the rest of mailer costs on top of it.
Optionally measures the peak memory of a large send and the `mailmerge` tool on
the same sink.

Needs smtp-sink (Debian package postfix). Usage:
  python bench/bench_smtp.py [--recipients 20000] [--connections 20] [--rounds 3]
                             [--memory 100000] [--mailmerge 20000]
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiosmtplib
import uvloop

SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"

CAMPAIGN = """\
[campaign]
id = "bench"
kind = "prospecting"
audiences = ["b2b"]
subject = "{{ contact.first_name }}, votre audit cloud offert"
from = "Jeanne Martin <jeanne@acme.example>"
template = "../templates/cloud-audit"
locale = "fr"

[recipients]
list = "bench"
csv = "../contacts/bench.csv"

[relevance]
job_titles = ["CTO"]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sink(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([SINK, "-u", "nobody", f"127.0.0.1:{port}", "1024"])
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return process
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("smtp-sink did not start")


def make_project(root: Path, port: int, connections: int, recipients: int) -> Path:
    subprocess.run([sys.executable, "-m", "mailer", "init", str(root)], check=True, stdout=subprocess.DEVNULL)
    config = (root / "config.toml").read_text()
    config = config.replace('type = "maildir"', 'type = "smtp"').replace('host = "smtp.example.net"', 'host = "127.0.0.1"')
    config = config.replace("port = 587", f"port = {port}").replace('security = "starttls"', 'security = "none"')
    config = config.replace('username = "acme"', 'username = ""').replace("max_connections = 10", f"max_connections = {connections}")
    # Mail "leaves" over SMTP: the unsubscribe link must be https on a public name.
    config = config.replace('base_url = "http://localhost:8080"', 'base_url = "https://mail.acme.fr"')
    (root / "config.toml").write_text(config)
    (root / "campaigns" / "bench.toml").write_text(CAMPAIGN)
    with (root / "contacts" / "bench.csv").open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["email", "first_name", "last_name", "company", "job_title", "industry", "kind", "source", "collected_at"])
        for i in range(recipients):
            out.writerow([f"p{i}@c{i % 500}.example", f"First{i}", f"Last{i}", f"Co {i % 500}", "CTO", "software",
                          "b2b", "Salon VivaTech 2026", "2026-06-01"])
    return root


class PeakRss:
    """Samples the resident memory of a process and its children (render workers)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_total, self.peak_main, self.peak_pss = pid, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _rss(pid: int, field: str = "VmRSS:") -> int:
        try:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith(field):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    @staticmethod
    def _pss(pid: int) -> int:
        """Proportional set size: shared pages (Python, libraries) counted once across processes."""
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _descendants(self) -> list[int]:
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            try:
                with open(f"/proc/{pid}/task/{pid}/children") as handle:
                    children = [int(p) for p in handle.read().split()]
            except OSError:
                children = []
            found += children
            todo += children
        return found

    def _run(self) -> None:
        while not self._stop.is_set():
            main = self._rss(self.pid)
            processes = [self.pid, *self._descendants()]
            total = sum(self._rss(p) for p in processes)
            pss = sum(self._pss(p) for p in processes)
            self.peak_main, self.peak_total = max(self.peak_main, main), max(self.peak_total, total)
            self.peak_pss = max(self.peak_pss, pss)
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_mailer(project: Path, rss: bool = False) -> tuple[float, PeakRss | None]:
    env = dict(os.environ, MAILER_SECRET="bench", MAILER_CONFIG=str(project / "config.toml"))
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "mailer", "send", "campaigns/bench.toml", "--yes"],
                               cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    meter = PeakRss(process.pid) if rss else None
    output, _ = process.communicate()
    elapsed = time.perf_counter() - start
    if meter:
        meter.stop()
    if process.returncode != 0:
        raise RuntimeError(f"mailer send failed ({process.returncode}):\n{output}")
    return elapsed, meter


def prebuilt_messages(project: Path) -> list[tuple[str, bytes]]:
    """The messages mailer would send, rendered once with the library (not timed)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import email.utils

    import mailer
    with tempfile.TemporaryDirectory() as folder, \
            mailer.open_workspace(project / "config.toml", {"MAILER_SECRET": "bench"}) as ws:
        written = mailer.preview_campaign(ws, project / "campaigns" / "bench.toml", folder).written
        out = []
        for path in written:
            data = path.read_bytes()
            to = next(line for line in data.split(b"\r\n\r\n", 1)[0].splitlines() if line.startswith(b"To: "))
            out.append((email.utils.parseaddr(to[4:].decode())[1], data))
    return out


async def bare_loop(port: int, connections: int, messages: list[tuple[str, bytes]]) -> float:
    start = time.perf_counter()
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for item in messages:
        queue.put_nowait(item)

    async def worker() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=30)
        await client.connect()
        while not queue.empty():
            rcpt, data = queue.get_nowait()
            await client.sendmail("bounces@acme.example", [rcpt], data)
        await client.quit()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return time.perf_counter() - start


async def bare_transport_loop(project: Path, connections: int, messages: list[tuple[str, bytes]]) -> float:
    """The same pre-built messages through mailer's own SMTP transport (pipelining when the server
    offers it), with nothing else of mailer around it: what the rest of mailer costs on top."""
    import mailer
    with mailer.open_workspace(project / "config.toml", {"MAILER_SECRET": "bench"}) as ws:
        transport = ws.open_transport()
    wire = transport.wire_format or (lambda data: data)
    envelopes = [mailer.Envelope(f"bench.{i}", "bounces@acme.example", rcpt, wire(data), wire=True)
                 for i, (rcpt, data) in enumerate(messages)]
    start = time.perf_counter()
    await transport.open()
    upcoming = iter(envelopes)

    async def worker() -> None:
        for envelope in upcoming:
            delivery = await transport.deliver(envelope)
            assert delivery.state == "sent", delivery

    await asyncio.gather(*(worker() for _ in range(connections)))
    await transport.close()
    return time.perf_counter() - start


def run_mailmerge(root: Path, port: int, n: int) -> float:
    root.mkdir(parents=True, exist_ok=True)
    (root / "mailmerge_template.txt").write_text(
        "TO: {{email}}\nFROM: Jeanne Martin <jeanne@acme.example>\nSUBJECT: {{first_name}}, votre audit cloud offert\n\n"
        "Bonjour {{first_name}},\n\nNous vous proposons un audit gratuit de votre facture cloud.\n")
    with (root / "mailmerge_database.csv").open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["email", "first_name"])
        for i in range(n):
            out.writerow([f"p{i}@c{i % 500}.example", f"First{i}"])
    (root / "mailmerge_server.conf").write_text(
        f"[smtp_server]\nhost = 127.0.0.1\nport = {port}\nsecurity = Never\nusername = None\nratelimit = 0\n")
    mailmerge = shutil.which("mailmerge") or str(Path(sys.executable).with_name("mailmerge"))
    start = time.perf_counter()
    subprocess.run([mailmerge, "--no-limit", "--no-dry-run", "--output-format", "raw"], cwd=root, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, input=b"")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory", type=int, default=0, help="recipients for the peak-memory run (0: skip)")
    parser.add_argument("--mailmerge", type=int, default=0,
                        help="recipients for the mailmerge comparison, the same as --recipients for the issue (0: skip)")
    args = parser.parse_args()
    port = free_port()
    sink = start_sink(port)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            messages = prebuilt_messages(make_project(base / "ref", port, args.connections, args.recipients)) \
                if args.rounds else []
            mailer_times, bare_times, bare_uv_times, own_times = [], [], [], []
            for round_ in range(args.rounds):
                project = make_project(base / f"r{round_}", port, args.connections, args.recipients)
                mailer_times.append(run_mailer(project)[0])
                bare_times.append(asyncio.run(bare_loop(port, args.connections, messages)))
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    bare_uv_times.append(runner.run(bare_loop(port, args.connections, messages)))
                    own_times.append(runner.run(bare_transport_loop(project, args.connections, messages)))
                print(f"round {round_ + 1}: mailer {mailer_times[-1]:.2f}s, bare aiosmtplib {bare_times[-1]:.2f}s, "
                      f"bare aiosmtplib on uvloop {bare_uv_times[-1]:.2f}s, "
                      f"mailer's SMTP transport alone {own_times[-1]:.2f}s", flush=True)
            n = args.recipients
            m = statistics.median(mailer_times) if mailer_times else float("nan")
            b = statistics.median(bare_times) if bare_times else float("nan")
            u = statistics.median(bare_uv_times) if bare_uv_times else float("nan")
            o = statistics.median(own_times) if own_times else float("nan")
            if args.rounds:
                print(f"\n{n} recipients, {args.connections} connections, smtp-sink on loopback, median of {args.rounds}")
                print(f"mailer send (whole process)        {m:.2f}s  {n / m:,.0f} msg/s")
                print(f"bare aiosmtplib loop (asyncio)     {b:.2f}s  {n / b:,.0f} msg/s")
                print(f"bare aiosmtplib loop (uvloop)      {u:.2f}s  {n / u:,.0f} msg/s")
                print(f"throughput ratio mailer/bare       {b / m:.2f}  (target >= 0.70)")
                print(f"throughput ratio mailer/bare uvloop {u / m:.2f}  (the same event loop as mailer)")
                print(f"mailer's SMTP transport alone      {o:.2f}s  {n / o:,.0f} msg/s  (pre-built messages, "
                      f"uvloop; mailer/it {o / m:.2f})")
            if args.memory:
                project = make_project(base / "mem", port, args.connections, args.memory)
                elapsed, meter = run_mailer(project, rss=True)
                assert meter is not None
                print(f"\npeak memory, {args.memory} recipients ({elapsed:.1f}s, target < 200 MB): "
                      f"main process RSS {meter.peak_main / 2**20:.0f} MB; all processes (render workers and "
                      f"forkserver included) PSS {meter.peak_pss / 2**20:.0f} MB, RSS summed "
                      f"{meter.peak_total / 2**20:.0f} MB")
            if args.mailmerge:
                k = args.mailmerge
                mm = run_mailmerge(base / "mailmerge", port, k)
                print(f"\nmailmerge, {k} recipients: {mm:.2f}s  {k / mm:,.0f} msg/s  "
                      f"(mailer/mailmerge throughput ratio {(n / m) / (k / mm):.1f}x)")
    finally:
        sink.terminate()
        sink.wait()


if __name__ == "__main__":
    main()
