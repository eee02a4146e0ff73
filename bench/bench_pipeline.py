"""Benchmark: 10,000-contact import and 10,000-recipient maildir send.

Each mailer figure is printed with a reference measured in the same run,
alternating, so that the ratio survives a noisy machine:
  import  vs  csv.reader + one sqlite3 executemany of the same rows (no validation)
  send    vs  a bare loop writing the same number of pre-built .eml files to a maildir

Usage: python bench/bench_pipeline.py [--contacts 10000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TITLES = ["CTO", "DSI", "Directeur informatique", "Comptable", "Responsable infrastructure"]


def write_contacts(path: Path, n: int) -> None:
    rng = random.Random(42)
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["email", "first_name", "last_name", "company", "job_title", "industry", "kind",
                      "source", "collected_at"])
        for i in range(n):
            out.writerow([f"p{i}.name@c{i % 300}.example", f"First{i}", f"Last{i}", f"Company {i % 300}",
                          rng.choice(TITLES[:3]), "software", "b2b", "Salon VivaTech 2026", "2026-06-01"])


def mailer(project: Path, *args: str) -> float:
    env = dict(os.environ, MAILER_SECRET="bench-secret", MAILER_CONFIG=str(project / "config.toml"))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mailer", *args], cwd=project, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def reference_import(csv_path: Path, db: Path) -> float:
    start = time.perf_counter()
    with csv_path.open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[1:]
    conn = sqlite3.connect(db)
    conn.execute("create table if not exists c (email text primary key, first text, last text, company text,"
                 " title text, industry text, kind text, source text, collected text)")
    with conn:
        conn.executemany("insert or replace into c values (?,?,?,?,?,?,?,?,?)", rows)
    conn.close()
    return time.perf_counter() - start


def reference_send(messages: list[bytes], outbox: Path) -> float:
    start = time.perf_counter()
    for sub in ("tmp", "new", "cur"):
        (outbox / sub).mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(messages):
        tmp = outbox / "tmp" / f"{i}.eml"
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, outbox / "new" / f"{i}.eml")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contacts", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[float]] = {k: [] for k in ("import", "import_ref", "send", "send_ref")}
    for round_ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            project = Path(tmp) / "p"
            subprocess.run([sys.executable, "-m", "mailer", "init", str(project)], check=True,
                           stdout=subprocess.DEVNULL)
            csv_path = project / "contacts" / "prospects.csv"
            write_contacts(csv_path, args.contacts)
            results["import_ref"].append(reference_import(csv_path, Path(tmp) / "ref.db"))
            results["import"].append(mailer(project, "contacts", "import", str(csv_path), "--list", "prospects-2026"))
            sent = mailer(project, "send", "campaigns/cloud-audit.toml", "--yes")
            built = [p.read_bytes() for p in sorted((project / "outbox" / "new").iterdir())]
            assert len(built) == args.contacts, f"expected {args.contacts} messages, got {len(built)}"
            results["send"].append(sent)
            results["send_ref"].append(reference_send(built, Path(tmp) / "ref-outbox"))
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in results.items()), flush=True)

    med = {k: statistics.median(v) for k, v in results.items()}
    n = args.contacts
    print(f"\n{n} contacts, median of {args.rounds} rounds")
    print(f"import  mailer {med['import']:.2f}s ({n / med['import']:.0f}/s)   "
          f"reference {med['import_ref']:.2f}s   ratio {med['import'] / med['import_ref']:.1f}x")
    print(f"send    mailer {med['send']:.2f}s ({n / med['send']:.0f}/s)   "
          f"reference {med['send_ref']:.2f}s   ratio {med['send'] / med['send_ref']:.1f}x")
    print("(send includes the campaign's CSV upsert, planning, the gate, rendering, the footer check and the send log)")


if __name__ == "__main__":
    main()
