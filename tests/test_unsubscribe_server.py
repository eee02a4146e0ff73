"""`mailer serve`: a real uvicorn server and a real HTTP client."""
from __future__ import annotations

import email
import re
from collections.abc import Iterator
from email import policy

import httpx
import pytest
from conftest import SECRET, Project, counts
from test_tokens import respellings
from web_server import UnsubscribeServer

from mailer import open_workspace

BOTH_DATABASES = True  # also run on PostgreSQL when MAILER_TEST_POSTGRES_URL is set


def unsubscribe_urls(project: Project) -> dict[str, str]:
    """address -> https URL from each sent message's List-Unsubscribe header."""
    found = {}
    for raw in project.messages():
        message = email.message_from_bytes(raw, policy=policy.default)
        url = re.search(r"<(https://[^>]+)>", message["List-Unsubscribe"]).group(1)
        found[message["To"].addresses[0].addr_spec] = url
    return found


@pytest.fixture
def served(project: Project) -> Iterator[tuple[Project, UnsubscribeServer, dict[str, str]]]:
    assert project.send().exit_code == 0
    base = "https://mail.acme.example"
    workspace = open_workspace(project.config, {"MAILER_SECRET": SECRET})
    with UnsubscribeServer(workspace) as server:
        urls = {a: u.replace(base, server.url) for a, u in unsubscribe_urls(project).items()}
        yield project, server, urls
    workspace.close()


def test_one_click_post_suppresses_at_once_and_a_new_run_skips_the_address(served) -> None:
    project, server, urls = served
    response = httpx.post(urls["claire@client.example"], data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    assert "Acme SAS ne vous enverra plus de messages" in response.text
    assert "set-cookie" not in response.headers
    rows = project.sql("select scope, origin, campaign_id, length(value) from suppressions")
    assert rows == [("address", "one-click", "2026-12-cloud-audit", 64)]
    project.campaign.write_text(project.campaign.read_text().replace("2026-12-cloud-audit", "2027-01-next"))
    result = project.send()
    assert counts(result.output)["suppressed"] == 1 and counts(result.output)["sent"] == 1


def test_multipart_one_click_post_as_some_providers_send_it(served) -> None:
    project, server, urls = served
    response = httpx.post(urls["paul@telco.example"], files={"List-Unsubscribe": (None, "One-Click")})
    assert response.status_code == 200
    assert project.sql("select origin from suppressions") == [("one-click",)]


def test_repeated_posts_are_idempotent(served) -> None:
    project, server, urls = served
    for _ in range(3):
        assert httpx.post(urls["paul@telco.example"], data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert project.sql("select count(*) from suppressions") == [(1,)]


def test_get_shows_a_page_with_one_button_and_never_unsubscribes(served) -> None:
    project, server, urls = served
    response = httpx.get(urls["claire@client.example"])
    assert response.status_code == 200
    assert '<html lang="fr">' in response.text
    assert "Acme SAS" in response.text and 'method="post"' in response.text
    assert response.text.count("<button") == 1
    assert "claire" not in response.text.lower()
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert project.sql("select count(*) from suppressions") == [(0,)]


def test_the_page_form_posts_with_a_reason_and_no_personal_data(served) -> None:
    project, server, urls = served
    response = httpx.post(urls["claire@client.example"], data={"via": "page", "reason": "too-many"})
    assert response.status_code == 200
    assert project.sql("select origin, reason from suppressions") == [("link", "too-many")]
    free_text = httpx.post(urls["paul@telco.example"], data={"via": "page", "reason": "I am Paul Martin"})
    assert free_text.status_code == 200
    assert project.sql("select reason from suppressions where reason like '%Paul%'") == []


def test_english_tokens_get_the_english_page(project: Project) -> None:
    project.campaign.write_text(project.campaign.read_text().replace('locale = "fr"', 'locale = "en"'))
    project.send()
    workspace = open_workspace(project.config, {"MAILER_SECRET": SECRET})
    with UnsubscribeServer(workspace) as server:
        url = next(iter(unsubscribe_urls(project).values())).replace("https://mail.acme.example", server.url)
        page = httpx.get(url)
        done = httpx.post(url, data={"List-Unsubscribe": "One-Click"})
    workspace.close()
    assert '<html lang="en">' in page.text and "Unsubscribe" in page.text
    assert "will not send you any more messages" in done.text


@pytest.mark.parametrize("mangle", [
    lambda url: url[:-2] + ("AA" if not url.endswith("AA") else "BB"),
    lambda url: url.replace(".fr.", ".en."),
    lambda url: url.rsplit("/", 1)[0] + "/garbage",
    lambda url: url.rsplit("/", 1)[0] + "/" + "A" * 300,
])
def test_tampered_or_garbage_tokens_get_a_400_and_nothing_is_recorded(served, mangle) -> None:
    project, server, urls = served
    url = mangle(urls["claire@client.example"])
    assert httpx.get(url).status_code == 400
    response = httpx.post(url, data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 400 and "Invalid link" in response.text
    assert project.sql("select count(*) from suppressions") == [(0,)]


def test_a_respelled_signature_gets_a_400_and_nothing_is_recorded(served) -> None:
    project, server, urls = served
    base, token = urls["claire@client.example"].rsplit("/", 1)
    alternatives = respellings(token, 4)  # the same MAC bytes, other unused low bits
    assert len(alternatives) == 3
    with httpx.Client() as client:
        for alternative in alternatives:
            assert client.get(f"{base}/{alternative}").status_code == 400
            response = client.post(f"{base}/{alternative}", data={"List-Unsubscribe": "One-Click"})
            assert response.status_code == 400 and "Invalid link" in response.text
    assert project.sql("select count(*) from suppressions") == [(0,)]


def test_a_token_signed_for_an_unknown_campaign_is_refused(served) -> None:
    project, server, urls = served
    from mailer.tokens import sign
    workspace = open_workspace(project.config, {"MAILER_SECRET": SECRET})
    token = sign(workspace.keys, "never-sent", "fr", workspace.hash_address("claire@client.example"))
    workspace.close()
    assert httpx.post(f"{server.url}/u/{token}", data={"List-Unsubscribe": "One-Click"}).status_code == 400
    assert project.sql("select count(*) from suppressions") == [(0,)]


def test_a_suppression_survives_the_deletion_of_the_contact(served) -> None:
    project, server, urls = served
    project.sql("delete from list_members")
    project.sql("delete from contacts")
    assert httpx.post(urls["claire@client.example"], data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert project.sql("select count(*) from suppressions") == [(1,)]


def test_healthz(served) -> None:
    project, server, urls = served
    response = httpx.get(f"{server.url}/healthz")
    assert response.status_code == 200 and response.text == "ok\n"


def test_mailer_serve_command_runs_the_endpoint(project: Project) -> None:
    import os
    import subprocess
    import sys
    import time

    from smtp_server import free_port
    assert project.send().exit_code == 0
    url = next(iter(unsubscribe_urls(project).values()))
    port = free_port()
    env = dict(os.environ, MAILER_SECRET=SECRET)
    server = subprocess.Popen([sys.executable, "-m", "mailer", "--config", str(project.config), "serve",
                               "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                assert httpx.get(f"{base}/healthz").status_code == 200
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "mailer serve did not start"
                time.sleep(0.05)
        response = httpx.post(url.replace("https://mail.acme.example", base), data={"List-Unsubscribe": "One-Click"})
        assert response.status_code == 200
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=10)
    assert project.sql("select origin from suppressions") == [("one-click",)]
    assert "POST /u/… 200" in output  # the access log, without the token
    assert "claire" not in output and "paul" not in output
