"""The unsubscribe page in a real headless browser (Debian's chromium driven by Playwright)."""
from __future__ import annotations

import email
import re
import shutil
from email import policy

from conftest import SECRET, Project
from playwright.sync_api import sync_playwright
from web_server import UnsubscribeServer

from mailer import open_workspace

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_open_the_footer_link_click_the_button_and_the_address_is_suppressed(project: Project) -> None:
    assert project.send().exit_code == 0
    raw = project.messages()[0]
    message = email.message_from_bytes(raw, policy=policy.default)
    html = message.get_body(("html",)).get_content()
    # The link a person clicks is the one in the footer of the HTML part.
    link = re.search(r'<a href="(https://mail\.acme\.fr/u/[^"]+)"', html).group(1)
    workspace = open_workspace(project.config, {"MAILER_SECRET": SECRET})
    with UnsubscribeServer(workspace) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(link.replace("https://mail.acme.fr", server.url))
            assert page.locator("h1").inner_text() == "Se désabonner"
            assert "Acme SAS" in page.content()
            assert project.sql("select count(*) from suppressions") == [(0,)]  # opening the page changed nothing
            page.get_by_label("Pourquoi ? (facultatif)").select_option("not-relevant")
            page.get_by_role("button", name="Me désabonner").click()
            page.wait_for_load_state()
            assert page.locator("h1").inner_text() == "Vous êtes désabonné·e"
            assert "ne vous enverra plus de messages" in page.get_by_role("status").inner_text()
            page.screenshot(path=str(project.root / "confirmation.png"))
        finally:
            browser.close()
    workspace.close()
    assert project.sql("select origin, reason from suppressions") == [("link", "not-relevant")]
    to = message["To"].addresses[0].addr_spec
    project.campaign.write_text(project.campaign.read_text().replace("2026-12-cloud-audit", "2027-01-next"))
    project.send()
    later = [email.message_from_bytes(m, policy=policy.default)["To"].addresses[0].addr_spec
             for m in project.messages()]
    assert later.count(to) == 1  # the first campaign's message only
