"""Benchmark: three `mailer send` processes on one PostgreSQL campaign against one, same run.

Each round sends the same list twice, as two campaigns (fresh send logs), alternating: once with
one `mailer send`, once with three started together (one plans, two join its plan), all against
Postfix's smtp-sink on loopback. Printed: each round's times, then the medians and the ratio of
the three senders' combined throughput to one sender's, measured two ways:

- whole: recipients / time from starting the processes to the last one's exit (start-up, CSV
  import, planning once, sending);
- sending: messages / time from the first message recorded sent to the last (the send log's
  sent_at), what the senders add to each other once they all send.

Then the shared rate limit: three senders of a campaign limited to --rate messages per second,
and one, sending rate measured from sent_at: three together should send at --rate, not three
times it.

Needs smtp-sink (Debian package postfix) and a PostgreSQL server: --postgres URL, else
$MAILER_TEST_POSTGRES_URL; a database is created for the run and dropped after it. Usage:
  python bench/bench_senders.py [--recipients 10000] [--connections 10] [--rounds 3]
                                [--rate 50 --rate-recipients 600]
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import sqlalchemy
from bench_smtp import free_port, start_sink  # the same smtp-sink, started the same way

SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"

CAMPAIGN = """\
[campaign]
id = "{id}"
kind = "prospecting"
audiences = ["b2b"]
subject = "{{{{ contact.first_name }}}}, votre audit cloud offert"
from = "Jeanne Martin <jeanne@acme.example>"
template = "../templates/cloud-audit"
locale = "fr"

[recipients]
list = "{list}"
csv = "../contacts/{list}.csv"

[relevance]
job_titles = ["CTO"]
{send}"""


def make_project(root: Path, url: str, port: int, connections: int, recipients: int) -> Path:
    subprocess.run([sys.executable, "-m", "mailer", "init", str(root)], check=True, stdout=subprocess.DEVNULL)
    config = (root / "config.toml").read_text()
    config = config.replace('url = "sqlite:///mailer.db"', f'url = "{url}"')
    config = config.replace('type = "maildir"', 'type = "smtp"').replace('host = "smtp.example.net"', 'host = "127.0.0.1"')
    config = config.replace("port = 587", f"port = {port}").replace('security = "starttls"', 'security = "none"')
    config = config.replace('username = "acme"', 'username = ""').replace("max_connections = 10",
                                                                          f"max_connections = {connections}")
    config = config.replace('base_url = "http://localhost:8080"', 'base_url = "https://mail.acme.fr"')
    (root / "config.toml").write_text(config)
    (root / "mailer.db").unlink(missing_ok=True)  # init made the sample's SQLite database: not used here
    env = dict(os.environ, MAILER_SECRET="bench", MAILER_CONFIG=str(root / "config.toml"))
    subprocess.run([sys.executable, "-m", "mailer", "db", "init"], cwd=root, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    write_list(root, "bench", recipients)
    return root


def write_list(root: Path, name: str, recipients: int) -> None:
    with (root / "contacts" / f"{name}.csv").open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["email", "first_name", "last_name", "company", "job_title", "industry", "kind", "source",
                      "collected_at"])
        for i in range(recipients):
            out.writerow([f"p{i}@c{i % 500}.example", f"First{i}", f"Last{i}", f"Co {i % 500}", "CTO", "software",
                          "b2b", "Salon VivaTech 2026", "2026-06-01"])


def campaign(project: Path, campaign_id: str, rate: float = 0, list_name: str = "bench") -> Path:
    path = project / "campaigns" / f"{campaign_id}.toml"
    path.write_text(CAMPAIGN.format(id=campaign_id, list=list_name,
                                    send=f"\n[send]\nrate_per_second = {rate:g}\n" if rate else ""))
    return path


def send(project: Path, campaign_path: Path, senders: int) -> float:
    """Start `senders` processes at once on the campaign; seconds until the last one exits."""
    env = dict(os.environ, MAILER_SECRET="bench", MAILER_CONFIG=str(project / "config.toml"))
    start = time.perf_counter()
    processes = [subprocess.Popen([sys.executable, "-m", "mailer", "send", str(campaign_path), "--yes"],
                                  cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(senders)]
    outputs = [process.communicate()[0] for process in processes]
    elapsed = time.perf_counter() - start
    for process, output in zip(processes, outputs, strict=True):
        if process.returncode != 0:
            raise RuntimeError(f"mailer send failed ({process.returncode}):\n{output}")
    return elapsed


def sending_rate(engine: sqlalchemy.Engine, campaign_id: str) -> tuple[int, float, int]:
    """(messages sent, per second from the first to the last, senders that sent) of a campaign."""
    with engine.connect() as conn:
        count, first, last, senders = conn.execute(sqlalchemy.text(
            "SELECT count(*), min(sent_at), max(sent_at), count(DISTINCT claimed_by) FROM send_log "
            "WHERE campaign_id = :id AND state = 'sent'"), {"id": campaign_id}).one()
    span = (last - first).total_seconds() if isinstance(first, datetime) else 0.0
    return count, (count - 1) / span if span > 0 else float("nan"), senders


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=10, help="SMTP connections of each sender")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--senders", type=int, default=3)
    parser.add_argument("--rate", type=float, default=50,
                        help="rate_per_second for the rate check, well below what one sender sends (0: skip)")
    parser.add_argument("--rate-recipients", type=int, default=600)
    parser.add_argument("--postgres", default=os.environ.get("MAILER_TEST_POSTGRES_URL", ""))
    args = parser.parse_args()
    if not args.postgres:
        sys.exit("a PostgreSQL server is needed: --postgres URL or MAILER_TEST_POSTGRES_URL")
    name = f"mailer_bench_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(args.postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sqlalchemy.engine.make_url(args.postgres).set(database=name).render_as_string(hide_password=False)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    port = free_port()
    sink = start_sink(port)
    n, many = args.recipients, args.senders
    try:
        with tempfile.TemporaryDirectory() as tmp:
            project = make_project(Path(tmp) / "bench", url, port, args.connections, n)
            if args.rounds:
                send(project, campaign(project, "warm-up"), 1)  # imports the list: the rounds import nothing new
            whole: dict[int, list[float]] = {1: [], many: []}
            rates: dict[int, list[float]] = {1: [], many: []}
            for round_ in range(args.rounds):
                line = [f"round {round_ + 1}:"]
                for senders in (1, many) if round_ % 2 == 0 else (many, 1):
                    campaign_id = f"r{round_}-{senders}"
                    elapsed = send(project, campaign(project, campaign_id), senders)
                    count, rate, took_part = sending_rate(engine, campaign_id)
                    assert count == n, f"{campaign_id}: {count} sent of {n}"
                    whole[senders].append(n / elapsed)
                    rates[senders].append(rate)
                    line.append(f"{senders} sender{'s' if senders > 1 else ''} {elapsed:.2f}s ({n / elapsed:,.0f} "
                                f"msg/s whole, {rate:,.0f} msg/s sending, {took_part} sent);")
                print(" ".join(line), flush=True)
            if args.rounds:
                one, all_ = statistics.median(whole[1]), statistics.median(whole[many])
                one_s, all_s = statistics.median(rates[1]), statistics.median(rates[many])
                print(f"\n{n} recipients, {args.connections} connections per sender, smtp-sink on loopback, "
                      f"PostgreSQL, {os.cpu_count()} cores, median of {args.rounds}")
                print(f"1 sender                 {one:,.0f} msg/s whole   {one_s:,.0f} msg/s sending")
                print(f"{many} senders together      {all_:,.0f} msg/s whole   {all_s:,.0f} msg/s sending")
                print(f"throughput ratio {many}/1     {all_ / one:.2f} whole   {all_s / one_s:.2f} sending")
            if args.rate:
                write_list(project, "rate", args.rate_recipients)
                measured = {}
                for senders in (1, many):
                    campaign_id = f"rate-{senders}"
                    send(project, campaign(project, campaign_id, args.rate, "rate"), senders)
                    count, rate, took_part = sending_rate(engine, campaign_id)
                    measured[senders] = rate
                    print(f"rate_per_second = {args.rate:g}, {senders} sender{'s' if senders > 1 else ''} "
                          f"({took_part} sent): {count} messages at {rate:,.1f} msg/s together "
                          f"({rate / args.rate:.2f} of the limit)")
                print(f"{many} senders / 1 sender at the same limit: {measured[many] / measured[1]:.2f} "
                      f"(1.00: the limit holds for all together)")
    finally:
        sink.terminate()
        sink.wait()
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


if __name__ == "__main__":
    main()
