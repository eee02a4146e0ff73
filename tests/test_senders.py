"""Several `mailer send` processes on one campaign over one PostgreSQL database (issue 15): one
plans, the others join its plan; each reserves batches of rows (FOR UPDATE SKIP LOCKED) and sends
them; everyone is mailed once; a sender that dies leaves at most its own rows in flight uncertain
and the others send what it had reserved; `status` shows each sender's share; the rate limit
holds for them together; an opt-out posted to `mailer serve` stops a message not sent yet."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from conftest import SECRET, Project, counts
from smtp_server import RecordingHandler, SmtpServer
from test_send_smtp import many, states, use_smtp
from test_unsubscribe_server import MailerServe

from mailer import open_workspace
from mailer.planning import decide_campaign, prepare_campaign
from mailer.senders import SENDER_EXPIRY_SECONDS, Heartbeat, register
from mailer.store import utcnow
from mailer.tokens import sign

BOTH_DATABASES = True  # the PostgreSQL variants need MAILER_TEST_POSTGRES_URL (.ci/run starts a server)

CAMPAIGN_ID = "2026-12-cloud-audit"
HOST = socket.gethostname()


def light(project: Project) -> None:
    """A text-only template: the tests of thousands of messages are about who sends what, and the
    HTML footer's checks would cost them a quarter more CPU on a machine the suite shares."""
    (project.root / "templates" / "offer.html.j2").unlink()
    project.write("templates/offer.txt.j2", "Bonjour {{ contact.first_name }},\n\nUn audit cloud pour {{ contact.company }}.\n")


_STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_sender_left_running() -> Iterator[None]:
    """A test that fails halfway leaves none of its senders running."""
    yield
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def start_sender(project: Project, name: str, *extra: str) -> subprocess.Popen[str]:
    """`mailer send` in a process of its own, its output in a file (read with `output`)."""
    env = dict(os.environ, MAILER_SECRET=SECRET, MAILER_CONFIG="", MAILER_RENDER_WORKERS="0")
    with open(project.root / f"{name}.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "mailer", "--config", str(project.config), "send",
                                    str(project.campaign), "--yes", *extra], cwd=project.root, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, text=True)
    _STARTED.append(process)
    return process


def output(project: Project, name: str) -> str:
    return (project.root / f"{name}.log").read_text()


def wait_for(condition, timeout: float = 200.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def all_joined(project: Project, senders: int) -> bool:
    """`senders` runs have a plan to send (one made it, the others joined it)."""
    return project.sql("select count(*) from runs where plan_run_id is not null") == [(senders,)]


def sent_by(project: Project, run_id: int) -> int:
    return project.sql("select count(*) from send_log where claimed_by = ? and state = 'sent'", run_id)[0][0]


def sent_by_summary(text: str) -> int:
    """The `sent N` line of a run's summary (0 when it sent nothing)."""
    summary = text.split("Summary of this run", 1)
    return counts(summary[1]).get("sent", 0) if len(summary) == 2 else 0


def sender_lines(status: str) -> dict[str, list[str]]:
    """`mailer status` output's Senders table: host:pid -> its columns."""
    lines = status.split("Senders:\n", 1)[1].splitlines()[1:] if "Senders:\n" in status else []
    found = {}
    for line in lines:
        if not line.startswith("  ") or line.startswith("   "):
            break
        name, *rest = line.split()
        found[name] = rest
    return found


@pytest.mark.databases("postgresql")
@pytest.mark.timeout(300)  # about 40 s of CPU: longer than the default on a machine shared with other work
def test_three_senders_mail_each_of_5000_recipients_once_and_status_shows_each_share(project: Project) -> None:
    addresses = many(project, 5000)
    light(project)
    handler = RecordingHandler()
    with SmtpServer(handler) as server:
        use_smtp(project, server.port, max_connections=8)
        senders = [start_sender(project, f"sender{i}") for i in range(3)]  # at the same instant
        wait_for(lambda: (all_joined(project, 3) and len(handler.received) >= 1000)
                 or any(s.poll() is not None for s in senders))
        live = project.run("status", CAMPAIGN_ID)
        for sender in senders:
            sender.wait(timeout=240)
        outputs = [output(project, f"sender{i}") for i in range(3)]
    received = handler.recipients()
    assert received == {a: 1 for a in addresses}, "somebody was mailed twice, or not at all"
    for sender, text in zip(senders, outputs, strict=True):
        assert sender.returncode == 0, text
    # Planned once: one sender planned, the other two joined its plan (and said so).
    runs = project.sql("select id, sender, plan_run_id from runs order by id")
    planners = {plan for _, _, plan in runs}
    assert len(planners) == 1 and planners <= {run_id for run_id, _, _ in runs}, runs
    assert sum("joined the plan of" in text for text in outputs) == 2
    # Each sender reports what it sent; together, everyone; the status shows the same shares.
    sent = {f"{HOST}:{sender.pid}": sent_by_summary(text) for sender, text in zip(senders, outputs, strict=True)}
    assert sum(sent.values()) == 5000 and all(sent.values()), sent
    assert live.exit_code == 0 and "Senders:" in live.output, live.output
    assert {name for name, columns in sender_lines(live.output).items() if columns[1] == "sending"} == set(sent)
    after = project.run("status", CAMPAIGN_ID)
    table = sender_lines(after.output)
    assert {name: int(columns[2]) for name, columns in table.items()} == sent, after.output
    assert {columns[1] for columns in table.values()} == {"finished"}
    assert counts(after.output)["sent"] == 5000


@pytest.mark.databases("postgresql")
def test_after_the_list_changed_senders_starting_together_again_plan_once_and_mail_each_new_contact_once(
        project: Project) -> None:
    """A rerun after changes: one of the senders starting together decides (its decisions alone),
    the other joins its plan; each new contact is mailed once, nobody again."""
    first = many(project, 60)
    rerun: list[int] = []  # the last run before the rerun, once it starts

    def until_both_have_a_plan(_: object) -> None:
        """In the rerun, no message goes before both senders have a plan: neither may finish (and
        the other then plan anew) before the other started, however slowly processes start here."""
        if rerun:
            wait_for(lambda: project.sql("select count(*) from runs where id > ? and plan_run_id is not null",
                                         rerun[0]) == [(2,)], timeout=120)

    handler = RecordingHandler(on_data=until_both_have_a_plan)
    with SmtpServer(handler) as server:
        use_smtp(project, server.port, max_connections=2)
        for name in ("a0", "a1"):
            start_sender(project, name)
        for process in list(_STARTED):
            process.wait(timeout=120)
        assert [p.returncode for p in _STARTED] == [0, 0], [output(project, n) for n in ("a0", "a1")]
        before = project.sql("select max(id) from runs")[0][0]
        rerun.append(before)
        more = [f"new{i}@later.example" for i in range(40)]
        with project.csv.open("a") as csv:
            csv.write("".join(f"{a},N{i},L,Co,CTO,software,b2b,Salon VivaTech 2026,2026-06-01\n"
                              for i, a in enumerate(more)))
        again = [start_sender(project, name) for name in ("b0", "b1")]
        for process in again:
            process.wait(timeout=120)
    assert [p.returncode for p in again] == [0, 0], [output(project, n) for n in ("b0", "b1")]
    assert handler.recipients() == {a: 1 for a in first + more}
    plans = project.sql("select id, plan_run_id from runs where id > ? order by id", before)
    assert len(plans) == 2 and len({plan for _, plan in plans}) == 1 and plans[0][1] in {i for i, _ in plans}
    assert sum("joined the plan of" in output(project, n) for n in ("b0", "b1")) == 1
    # The decisions of the rerun are its planner's: every row of the new contacts planned by it.
    assert project.sql("select distinct run_id from send_log where address_key like 'new%'") == [(plans[0][1],)]

@pytest.mark.databases("postgresql")
@pytest.mark.timeout(300)
def test_a_sender_killed_midway_leaves_only_its_rows_in_flight_uncertain(project: Project) -> None:
    addresses = many(project, 5000)
    light(project)
    handler = RecordingHandler()
    with SmtpServer(handler) as server:
        use_smtp(project, server.port, max_connections=8)
        senders = [start_sender(project, f"sender{i}") for i in range(3)]
        victim, survivors = senders[0], senders[1:]
        wait_for(lambda: all_joined(project, 3) or victim.poll() is not None)
        [(victim_run,)] = project.sql("select id from runs where sender = ?", f"{HOST}:{victim.pid}")
        wait_for(lambda: (len(handler.received) >= 1500 and sent_by(project, victim_run) >= 100)
                 or victim.poll() is not None)
        assert victim.poll() is None, output(project, "sender0")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        for sender in survivors:
            sender.wait(timeout=240)
        rerun = project.send()  # without --retry-uncertain
    received = handler.recipients()
    assert max(received.values()) == 1, "somebody was mailed twice"
    rows = project.sql("select address_key, state, claimed_by from send_log")
    uncertain = {address for address, state, _ in rows if state == "uncertain"}
    # Only the dead sender's rows in flight may be uncertain: at most one per connection.
    assert {by for _, state, by in rows if state == "uncertain"} <= {victim_run}
    assert len(uncertain) <= 8, uncertain
    # Everything else went out once, the rows the dead sender had reserved too (by the others).
    assert {address for address, state, _ in rows if state != "uncertain"} == set(addresses) - uncertain
    assert {state for _, state, _ in rows if state != "uncertain"} == {"sent"}
    assert all(received[a] == 1 for a in set(addresses) - uncertain)
    for index, sender in enumerate(survivors, 1):
        text = output(project, f"sender{index}")
        # Not finished only while uncertain rows wait for a decision; no failure.
        assert sender.returncode == (4 if "uncertain" in text.split("Summary of this run")[-1] else 0), text
        assert "failed" not in counts(text)
    assert any(f"{HOST}:{victim.pid} stopped while sending this campaign" in output(project, f"sender{i}")
               for i in (1, 2)) or not uncertain
    # The rerun sends nobody again: the uncertain stay so until someone decides.
    assert rerun.exit_code == (4 if uncertain else 0), rerun.output
    assert handler.recipients() == received
    status = project.run("status", CAMPAIGN_ID).output
    assert sender_lines(status)[f"{HOST}:{victim.pid}"][1] == "gone", status


def _plan_as_another_machine(project: Project, name: str, reserved: int, in_flight: int, fingerprint: str = "") -> int:
    """A sender on another machine, as the database sees it: registered, its plan made, `reserved`
    rows taken, of which `in_flight` claimed (`sending`). Returns its run id."""
    ws = open_workspace(project.config, {"MAILER_SECRET": SECRET})
    try:
        prepared = prepare_campaign(ws, project.campaign)
        ws.store.campaigns.record(CAMPAIGN_ID, "prospecting", "fr", "prospects")
        other = register(ws.store, CAMPAIGN_ID, fingerprint, name)
        decide_campaign(ws, prepared, run_id=other.run_id, keep_recipients=False)
        other.planned()
        ids = [log_id for log_id, _ in ws.store.sendlog.reserve(CAMPAIGN_ID, other.run_id, other.run_id, reserved)]
        for log_id in ids[:in_flight]:
            project.sql("update send_log set state = 'sending', message_id = ? where id = ?", f"<{log_id}@x>", log_id)
        return other.run_id
    finally:
        ws.close()


@pytest.mark.databases("postgresql")
def test_a_live_sender_on_another_machine_is_left_alone_and_recovered_once_its_heartbeat_expired(
        project: Project) -> None:
    addresses = many(project, 60)
    handler = RecordingHandler()
    with SmtpServer(handler) as server:
        use_smtp(project, server.port, max_connections=2)
        other = _plan_as_another_machine(project, "sender-7.example:4242", reserved=10, in_flight=3)
        theirs = {a for a, by in project.sql("select address_key, claimed_by from send_log") if by == other}
        # It is alive (its heartbeat goes on, as that machine's process would renew it): this sender
        # joins its plan and takes only the rest.
        with open_workspace(project.config, {"MAILER_SECRET": SECRET}) as ws:
            beat = Heartbeat(ws.store, other, every=1).start()
            try:
                joined = project.send()
            finally:
                beat.stop()
        assert joined.exit_code == 0, joined.output
        assert "joined the plan of sender-7.example:4242" in joined.output
        assert "Still sending this campaign: sender-7.example:4242" in joined.output
        assert set(handler.recipients()) == set(addresses) - theirs
        assert sorted(s for a, s in states(project).items() if a in theirs) == ["planned"] * 7 + ["sending"] * 3
        status = project.run("status", CAMPAIGN_ID).output
        assert sender_lines(status)["sender-7.example:4242"][1:] == ["sending", "0", "0", "0", "0", "3", "7"], status

        # Its heartbeat stopped: once expired, it is dead; only its rows in flight become uncertain and
        # a new sender sends what it had reserved.
        silent = utcnow() - timedelta(seconds=SENDER_EXPIRY_SECONDS + 5)
        project.sql("update runs set heartbeat_at = ? where id = ?", silent, other)
        gone = project.run("status", CAMPAIGN_ID, "--show", "uncertain").output
        assert counts(gone)["uncertain"] == 3 and "sending" not in counts(gone), gone
        assert sender_lines(gone)["sender-7.example:4242"][1] == "gone"
        rerun = project.send()
    assert rerun.exit_code == 4, rerun.output  # finished; the 3 uncertain wait for a decision
    assert "3 deliveries were interrupted by a crash and are marked uncertain" in rerun.output
    assert handler.recipients() == {a: 1 for a in addresses if states(project)[a] != "uncertain"}
    assert sorted(states(project).values()) == ["sent"] * 57 + ["uncertain"] * 3


@pytest.mark.databases("postgresql")
def test_a_sender_with_other_files_than_the_one_sending_or_deciding_again_under_it_is_refused(
        project: Project) -> None:
    many(project, 20)
    _plan_as_another_machine(project, "sender-7.example:4242", reserved=5, in_flight=1, fingerprint="0123456789ab")
    other_files = project.send()
    assert other_files.exit_code == 2, other_files.output
    assert "is being sent by sender-7.example:4242 (since " in other_files.output
    assert "with another version of its file or templates (0123456789ab there, " in other_files.output
    project.sql("update runs set fingerprint = ''")  # the same files (no version known: not compared)
    again = project.send("--retry-uncertain")
    assert again.exit_code == 2, again.output
    assert "--retry-uncertain decides again over campaign 2026-12-cloud-audit, which sender-7.example:4242" \
        in again.output
    assert project.sql("select state, count(*) from send_log group by state order by state") == \
        [("planned", 19), ("sending", 1)]  # neither sent nor decided anything


@pytest.mark.databases("postgresql")
def test_a_sender_recovers_the_rows_of_a_dead_one_and_never_those_of_a_live_one(project: Project) -> None:
    many(project, 40)
    dead = _plan_as_another_machine(project, "sender-8.example:1", reserved=10, in_flight=2)
    ws = open_workspace(project.config, {"MAILER_SECRET": SECRET})
    live = register(ws.store, CAMPAIGN_ID, "", "sender-9.example:2")
    live.join(ws.store.campaigns.runs([dead])[0])
    taken = [i for i, _ in ws.store.sendlog.reserve(CAMPAIGN_ID, dead, live.run_id, 5)]
    project.sql("update send_log set state = 'sending' where id = ?", taken[0])
    me = register(ws.store, CAMPAIGN_ID, "", f"{HOST}:{os.getpid()}")
    me.plan_run_id = dead
    assert me.recover_dead().given_back == 0  # both alive: nothing is touched
    project.sql("update runs set heartbeat_at = ? where id = ?", utcnow() - timedelta(minutes=5), dead)
    found = me.recover_dead()
    ws.close()
    assert (found.senders, found.uncertain, found.given_back) == (["sender-8.example:1"], 2, 8)
    by = {(state, claimed_by): n for state, claimed_by, n in project.sql(
        "select state, claimed_by, count(*) from send_log group by state, claimed_by")}
    assert by == {("uncertain", dead): 2, ("planned", None): 40 - 2 - 5,
                  ("sending", live.run_id): 1, ("planned", live.run_id): 4}


@pytest.mark.databases("postgresql")
def test_the_rate_budget_hands_out_each_slot_to_one_sender(project: Project) -> None:
    """Senders taking slots of one campaign at once: the slots follow each other, none shared, so N
    senders at rate R send at R together (bench/bench_senders.py measures it)."""
    ws = open_workspace(project.config, {"MAILER_SECRET": SECRET})
    ws.store.campaigns.record(CAMPAIGN_ID, "prospecting", "fr", "prospects")
    taken: list[tuple[float, float]] = []  # (seconds from now to the first slot, when asked)
    lock = threading.Lock()

    def sender() -> None:
        for _ in range(20):
            asked = time.monotonic()
            ahead = ws.store.campaigns.take_send_slots(CAMPAIGN_ID, 5, 1.0)  # 5 slots, 1 s apart
            with lock:
                taken.append((asked + ahead, asked))

    threads = [threading.Thread(target=sender) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ws.close()
    starts = sorted(start for start, _ in taken)
    # 60 blocks of 5 s, back to back: each starts 5 s after the one before (give or take the time
    # the calls take, well under a second here), whatever sender took it.
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert len(starts) == 60
    assert all(4.5 < gap < 5.5 for gap in gaps), gaps


def test_an_opt_out_posted_to_serve_while_a_sender_runs_stops_its_message(project: Project) -> None:
    addresses = many(project, 40)
    last = addresses[-1]
    with open_workspace(project.config, {"MAILER_SECRET": SECRET}) as ws:
        token = sign(ws.keys, CAMPAIGN_ID, "fr", ws.hash_address(last))
    posted = threading.Event()

    def hold_until_posted(_: object) -> None:
        if len(handler.received) == 5:  # the server stalls here until the opt-out was answered
            posted.wait(timeout=30)

    handler = RecordingHandler(on_data=hold_until_posted)
    with SmtpServer(handler) as server, MailerServe(project, startup_seconds=60) as serve:
        use_smtp(project, server.port, max_connections=2)
        sender = start_sender(project, "sender")
        wait_for(lambda: len(handler.received) >= 5)
        answer = httpx.post(f"{serve.base}/u/{token}", data={"List-Unsubscribe": "One-Click"}, timeout=30)
        posted.set()
        sender.wait(timeout=60)
    assert answer.status_code == 200, answer.text
    assert sender.returncode == 0, output(project, "sender")
    assert last not in handler.recipients()
    assert handler.recipients() == {a: 1 for a in addresses[:-1]}
    assert project.sql("select state, rule from send_log where address_key = ?", last) == [("blocked", "suppressed")]


@pytest.mark.databases("sqlite")
def test_on_sqlite_a_second_sender_is_refused_saying_why_and_what_to_do(project: Project) -> None:
    many(project, 40)
    handler = RecordingHandler(delay=0.05)
    with SmtpServer(handler) as server:
        use_smtp(project, server.port, max_connections=1)
        first = start_sender(project, "first")
        wait_for(lambda: len(handler.received) >= 2)
        second = project.send()
        first.wait(timeout=60)
    assert second.exit_code == 1
    error = next(line for line in second.output.splitlines() if line.startswith("Error:"))
    assert re.search(rf"is being sent by another process \(host {re.escape(HOST)}, pid {first.pid}, ", error), error
    assert "on SQLite one process at a time sends a campaign" in error
    assert "share a PostgreSQL database ([database] url)" in second.output
    assert first.returncode == 0, output(project, "first")
