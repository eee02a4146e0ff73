"""Load benchmark of `mailer serve`: many concurrent one-click POSTs for distinct tokens.

Starts `mailer serve` as its own process on loopback, fires N one-click POSTs
(each for a different address) with C concurrent connections from an asyncio
client, and reports requests/second and latency percentiles, next to GET
/healthz on the same server as the reference (same stack, no token check and
no database write). Then checks that every POST left exactly one suppression
entry: nothing lost under load.

Usage: python bench/bench_unsubscribe.py [--requests 5000] [--concurrency 50]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mailer  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def fire(port: int, paths: list[str], concurrency: int, body: bytes | None) -> tuple[float, list[float], int]:
    """A lean HTTP/1.1 keep-alive client on raw asyncio streams, so the load generator
    costs little CPU next to the server on this 2-core machine."""
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[str] = asyncio.Queue()
    for path in paths:
        queue.put_nowait(path)

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not queue.empty():
                path = queue.get_nowait()
                if body is None:
                    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
                else:
                    request = (f"POST {path} HTTP/1.1\r\nHost: bench\r\n"
                               f"Content-Type: application/x-www-form-urlencoded\r\n"
                               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
                start = time.perf_counter()
                writer.write(request)
                status_line = await reader.readline()
                length = 0
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - start)
                if b" 200 " not in status_line:
                    errors += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies, errors


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "p"
        subprocess.run([sys.executable, "-m", "mailer", "init", str(root)], check=True, stdout=subprocess.DEVNULL)
        env = dict(os.environ, MAILER_SECRET="bench", MAILER_CONFIG=str(root / "config.toml"))
        with mailer.open_workspace(root / "config.toml", env) as ws:
            # A campaign the endpoint knows: the sample's, sent to the maildir outbox.
            campaign = mailer.send_campaign(ws, root / "campaigns" / "cloud-audit.toml").campaign_id
            tokens = [ws.unsubscribe_token(campaign, f"person{i}@company{i % 97}.example", "fr")
                      for i in range(args.requests)]
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "mailer", "serve", "--port", str(port)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    httpx.get(f"{base}/healthz", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.05)
            one_click = b"List-Unsubscribe=One-Click"
            ref_time, ref_lat, ref_err = asyncio.run(fire(port, ["/healthz"] * args.requests, args.concurrency, None))
            post_time, post_lat, post_err = asyncio.run(
                fire(port, [f"/u/{t}" for t in tokens], args.concurrency, one_click))
            repeat_time, _, repeat_err = asyncio.run(
                fire(port, [f"/u/{t}" for t in tokens[:1000]], args.concurrency, one_click))
        finally:
            server.terminate()
            server.wait()
        with sqlite3.connect(root / "mailer.db") as conn:
            entries = conn.execute("select count(*), count(distinct value) from suppressions").fetchone()
    n = args.requests
    print(f"{n} requests, {args.concurrency} concurrent connections, loopback, one uvicorn process")
    print(f"GET /healthz (reference)   {n / ref_time:7.0f} req/s  p50 {p(ref_lat, 50):6.1f} ms  "
          f"p99 {p(ref_lat, 99):6.1f} ms  errors {ref_err}")
    print(f"POST /u/TOKEN one-click    {n / post_time:7.0f} req/s  p50 {p(post_lat, 50):6.1f} ms  "
          f"p99 {p(post_lat, 99):6.1f} ms  errors {post_err}")
    print(f"one-click / reference throughput ratio {(n / post_time) / (n / ref_time):.2f}")
    print(f"repeated POSTs for 1000 tokens: errors {repeat_err}")
    print(f"suppression entries: {entries[0]} rows, {entries[1]} distinct, for {n} distinct tokens "
          f"-> {'OK, nothing lost, no duplicates' if entries[0] == entries[1] == n else 'MISMATCH'}")


if __name__ == "__main__":
    main()
