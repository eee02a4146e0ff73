"""`mailer preview`: what a reviewer sees, before and after a send, in files and in a browser."""
from __future__ import annotations

import shutil

from conftest import Project
from playwright.sync_api import sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def preview(project: Project, *args: str) -> tuple[str, list[str]]:
    out = project.root / "preview"
    result = project.run("preview", str(project.campaign), "--out", str(out), *args)
    assert result.exit_code == 0, result.output
    return result.output, sorted(p.name for p in out.iterdir())


def test_after_a_send_preview_says_what_was_sent_and_renders_it_on_request(project: Project) -> None:
    assert project.send().exit_code == 0
    output, files = preview(project)
    assert "Wrote 0 messages" in output
    assert "2 messages were already sent: --include-sent renders them too" in output
    assert files == ["index.html"]
    output, files = preview(project, "--include-sent")
    assert "Wrote 2 messages" in output
    assert [f for f in files if f.endswith(".eml")] == ["00001-claire@client.example.eml",
                                                       "00002-paul@telco.example.eml"]
    output, files = preview(project, "--to", "Paul@Telco.example")
    assert "paul@telco.example" in output.lower() and "already sent" in output
    assert files == ["00001-paul@telco.example.eml", "00001-paul@telco.example.html", "index.html"]


def test_preview_to_a_blocked_person_renders_it_marked_with_the_rule(project: Project) -> None:
    output, files = preview(project, "--to", "marc@soft.example")
    assert "marc@soft.example: would not be sent: not-relevant," in output
    assert "00001-marc@soft.example.eml" in files
    page = (project.root / "preview" / "00001-marc@soft.example.html").read_text()
    assert "would not be sent: not-relevant" in page
    assert project.sql("select count(*) from send_log") == [(0,)]


def test_a_new_preview_replaces_the_files_of_the_last_one_and_nothing_else(project: Project) -> None:
    _, files = preview(project)
    assert len([f for f in files if f.endswith(".eml")]) == 2
    mine = project.root / "preview" / "notes.txt"
    mine.write_text("the reviewer's own notes")
    assert project.run("suppress", "add", "paul@telco.example").exit_code == 0
    output, files = preview(project)
    assert "replacing 5 files of the previous preview" in output
    assert files == ["00001-claire@client.example.eml", "00001-claire@client.example.html", "index.html",
                     "notes.txt"]
    assert mine.read_text() == "the reviewer's own notes"


def test_index_and_message_pages_in_a_browser(project: Project) -> None:
    project.run("suppress", "add", "paul@telco.example")
    preview(project)
    index = project.root / "preview" / "index.html"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(index.as_uri())
            rows = page.locator("tbody tr")
            assert rows.count() == 3
            text = page.locator("tbody").inner_text()
            assert "Claire Durand <claire@client.example>" in text and "would be sent" in text
            assert "paul@telco.example" in text and "would not be sent: suppressed" in text
            assert "marc@soft.example" in text and "would not be sent: not-relevant" in text
            assert "Claire, votre audit cloud offert" in text
            page.get_by_role("link", name="message").first.click()
            page.wait_for_load_state()
            headers = page.locator("table.headers").inner_text()
            for expected in ("Subject\tClaire, votre audit cloud offert", "From\tJeanne Martin <jeanne@acme.example>",
                             "To\tClaire Durand <claire@client.example>", "Decision\twould be sent"):
                assert expected in headers
            frame = page.frame_locator("iframe")
            link = frame.get_by_role("link", name="se désabonner en un clic")
            link.wait_for()
            assert link.is_visible()
            assert link.get_attribute("href").startswith("https://mail.acme.fr/u/")
            page.screenshot(path=str(project.root / "preview-page.png"), full_page=True)
        finally:
            browser.close()
