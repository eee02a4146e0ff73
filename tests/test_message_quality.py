"""Every sample campaign message, as `mailer send` writes it, scored offline by SpamAssassin
(`spamassassin -L -t`, local rules only: no DNS, no network), stays at or below 0.5.

The messages are those of the sample `mailer init` writes (mailer/sample) and of the campaigns
in the repository (campaigns/, templates/, contacts/: links to the sample today, then scored
once), sent to the maildir outbox. One
SpamAssassin process scores them all (it takes a few seconds to load its rules). A message
above the bar is fixed in how mailer builds it (headers, MIME structure, text and HTML), never
by telling SpamAssassin to score less.
"""
from __future__ import annotations

import mailbox
import os
import re
import shutil
import subprocess
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import SECRET

from mailer.cli import cli

REPOSITORY = Path(__file__).resolve().parent.parent
SAMPLE = REPOSITORY / "mailer" / "sample"
MAX_SCORE = 0.5
SCORE = re.compile(r"score=(-?[\d.]+) required=[\d.]+ tests=(.*)", re.S)


def sent_messages(root: Path, sources: Path | None) -> list[bytes]:
    """The .eml files a send of each campaign in `root`/campaigns writes: the sample's (`mailer
    init`), with the campaigns, templates and contacts of `sources` when given."""
    runner = CliRunner()
    environment = {"MAILER_SECRET": SECRET, "MAILER_CONFIG": ""}
    result = runner.invoke(cli, ["init", str(root)], env=environment, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    if sources is not None:
        for folder in ("campaigns", "templates", "contacts"):
            shutil.rmtree(root / folder)
            shutil.copytree(sources / folder, root / folder)
    campaigns = sorted((root / "campaigns").glob("*.toml"))
    assert campaigns
    for campaign in campaigns:
        sent = runner.invoke(cli, ["--config", str(root / "config.toml"), "send", str(campaign), "--yes"],
                             env=environment, catch_exceptions=False)
        assert sent.exit_code == 0, sent.output
    return [p.read_bytes() for p in sorted((root / "outbox" / "new").iterdir())]


def spamassassin_scores(messages: list[bytes], home: Path) -> list[tuple[float, str]]:
    """(score, rules that fired) of each message, in order, from one `spamassassin -L -t` run
    (which does not write them back in the order given: they are told apart by Message-ID)."""
    command = shutil.which("spamassassin")
    if command is None:
        pytest.fail("this test needs SpamAssassin: apt-get install spamassassin (.ci/run installs it)")
    box = home / "messages.mbox"
    folder = mailbox.mbox(box)
    for data in messages:
        folder.add(mailbox.mboxMessage(data))
    folder.close()
    scored = home / "scored.mbox"
    with box.open("rb") as given, scored.open("wb") as out:
        done = subprocess.run([command, "-L", "-t", "--mbox", "--cf=use_bayes 0"], stdin=given, stdout=out,
                              stderr=subprocess.PIPE, env={**os.environ, "HOME": str(home)}, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    found = {}
    for message in mailbox.mbox(scored):
        status = " ".join(str(message["X-Spam-Status"]).split())
        match = SCORE.search(status)
        assert match, status
        found[str(message["Message-ID"])] = (float(match.group(1)), match.group(2))
    return [found[str(message_from_bytes(data, policy=policy.compat32)["Message-ID"])] for data in messages]


def test_every_sample_message_scores_at_most_half_a_point(tmp_path: Path) -> None:
    messages = sent_messages(tmp_path / "sample", None)
    if (REPOSITORY / "campaigns").resolve() != (SAMPLE / "campaigns").resolve():
        messages += sent_messages(tmp_path / "repository", REPOSITORY)
    assert len(messages) >= 3
    scores = spamassassin_scores(messages, tmp_path)
    lines = []
    for data, (score, rules) in zip(messages, scores, strict=True):
        headers = message_from_bytes(data, policy=policy.default)
        lines.append(f"{score:5.1f}  {headers['To']}  ({headers['Subject']}): {rules}")
    print("\n".join(lines))  # pytest -s shows every score
    assert all(score <= MAX_SCORE for score, _ in scores), "\n".join(lines)
