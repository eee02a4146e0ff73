"""`mailer serve`: a real uvicorn server and a real HTTP client."""
from __future__ import annotations

import email
import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from email import policy
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import SECRET, Project, counts
from smtp_server import free_port
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
    base = "https://mail.acme.fr"
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
        url = next(iter(unsubscribe_urls(project).values())).replace("https://mail.acme.fr", server.url)
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
    french = httpx.get(url, headers={"Accept-Language": "de-DE,fr-CA;q=0.8,en;q=0.5"})
    assert french.status_code == 400 and "Lien invalide" in french.text and 'lang="fr"' in french.text
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


class MailerServe:
    """`mailer serve` in its own process, as an operator runs it, on a free port."""

    def __init__(self, project: Project, startup_seconds: float = 20) -> None:
        self.startup_seconds = startup_seconds
        port = free_port()
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        env = dict(os.environ, MAILER_SECRET=SECRET)
        self.process = subprocess.Popen([sys.executable, "-m", "mailer", "--config", str(project.config), "serve",
                                         "--port", str(port)], env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.output = ""

    def __enter__(self) -> MailerServe:
        deadline = time.monotonic() + self.startup_seconds
        while True:
            try:
                assert httpx.get(f"{self.base}/healthz").status_code == 200
                return self
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    self.__exit__()  # not left running after the test
                    raise AssertionError(f"mailer serve did not start:\n{self.output}") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.output, _ = self.process.communicate(timeout=10)

    def rss_kib(self) -> int:
        """The server process's resident memory."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))


def test_mailer_serve_command_runs_the_endpoint(project: Project) -> None:
    assert project.send().exit_code == 0
    url = next(iter(unsubscribe_urls(project).values()))
    with MailerServe(project) as server:
        response = httpx.post(url.replace("https://mail.acme.fr", server.base),
                              data={"List-Unsubscribe": "One-Click"})
        assert response.status_code == 200
    assert project.sql("select origin from suppressions") == [("one-click",)]
    assert "POST /u/… 200" in server.output  # the access log, without the token
    assert "claire" not in server.output and "paul" not in server.output


def test_mailer_serve_on_a_port_in_use_says_so_in_one_line_and_exits_1(project: Project) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = project.run("serve", "--port", str(port))
    assert result.exit_code == 1, result.output
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use by another program" in result.output
    assert "--port" in result.output and "Errno" not in result.output and "Unsubscribe endpoint on" not in result.output


# ---------------------------------------------------------------- hostile clients

def post_headers(port: int, url: str, framing: str) -> socket.socket:
    """A raw connection that has sent a POST's request line and headers, and no body yet."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(f"POST {urlsplit(url).path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 f"Content-Type: application/x-www-form-urlencoded\r\n{framing}\r\n\r\n".encode())
    return sock


def answer(sock: socket.socket) -> bytes:
    """What the server sent until it closed the connection (a reset ends it too)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def stream_chunked(sock: socket.socket, total: int, size: int = 64 * 1024) -> int:
    """Send up to `total` bytes as a chunked body; the number sent before the server cut us off."""
    piece = f"{size:x}\r\n".encode() + b"a" * size + b"\r\n"
    sent = 0
    try:
        while sent < total:
            sock.sendall(piece)
            sent += size
        sock.sendall(b"0\r\n\r\n")
    except OSError:  # reset or broken pipe: the server closed the connection
        pass
    return sent


def test_a_body_declared_too_big_gets_413_before_it_is_sent(served) -> None:
    project, server, urls = served
    sock = post_headers(server.port, urls["claire@client.example"], "Content-Length: 300000000")
    with sock:
        reply = answer(sock)  # no byte of the body sent: the server answers at once
    assert reply.startswith(b"HTTP/1.1 413 ") and b"connection: close" in reply.lower()
    assert project.sql("select count(*) from suppressions") == [(0,)]


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(served) -> None:
    project, server, urls = served
    sock = post_headers(server.port, urls["claire@client.example"], "Transfer-Encoding: chunked")
    with sock:
        sock.sendall(b"8000\r\n" + b"a" * 0x8000 + b"\r\n")  # 32 KiB, and the body goes on
        assert sock.recv(65536).startswith(b"HTTP/1.1 413 ")
        sent = stream_chunked(sock, 50 * 1024 * 1024)
    assert sent < 50 * 1024 * 1024  # cut off: the server did not read it all
    assert project.sql("select count(*) from suppressions") == [(0,)]


def test_a_body_sent_byte_by_byte_is_cut_off_at_the_deadline(project: Project) -> None:
    assert project.send().exit_code == 0
    workspace = open_workspace(project.config, {"MAILER_SECRET": SECRET})
    with UnsubscribeServer(workspace, body_deadline=1.0) as server:
        url = next(iter(unsubscribe_urls(project).values()))
        sock = post_headers(server.port, url, "Content-Length: 1000")
        start = time.monotonic()
        reply = b""
        with sock:
            try:
                while time.monotonic() - start < 5:
                    if select.select([sock], [], [], 0.1)[0]:
                        reply = answer(sock)
                        break
                    sock.sendall(b"a")
            except OSError:  # the server closed the connection instead
                pass
            elapsed = time.monotonic() - start
    workspace.close()
    assert elapsed < 2.5, f"still connected after {elapsed:.1f} s"
    assert reply == b"" or reply.startswith(b"HTTP/1.1 408 ")
    assert project.sql("select count(*) from suppressions") == [(0,)]


def test_a_normal_chunked_one_click_post_still_unsubscribes(served) -> None:
    project, server, urls = served
    response = httpx.post(urls["paul@telco.example"], content=iter([b"List-Unsubscribe=", b"One-Click"]),
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200 and "transfer-encoding" in response.request.headers
    assert project.sql("select origin from suppressions") == [("one-click",)]


def test_mailer_serve_memory_stays_flat_under_big_bodies_and_headers_and_connections_are_bounded(
        project: Project) -> None:
    assert project.send().exit_code == 0
    url = next(iter(unsubscribe_urls(project).values()))
    with MailerServe(project) as server:
        url = url.replace("https://mail.acme.fr", server.base)
        with post_headers(server.port, url, "Transfer-Encoding: chunked") as warm_up:
            stream_chunked(warm_up, 1024 * 1024)
        before = server.rss_kib()
        sent = 0
        for _ in range(4):
            with post_headers(server.port, url, "Transfer-Encoding: chunked") as sock:
                sent += stream_chunked(sock, 50 * 1024 * 1024)
        with post_headers(server.port, url, "Content-Length: 300000000") as sock:
            assert answer(sock).startswith(b"HTTP/1.1 413 ")
        grown = server.rss_kib() - before
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            try:  # one header of 200 KB, arriving in several reads
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 200_000 + b"\r\n\r\n")
            except OSError:
                pass
            huge_header = answer(sock)
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(100)]
        try:
            busy = httpx.get(f"{server.base}/healthz")
        finally:
            for sock in idle:
                sock.close()
        assert httpx.post(url, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    print(f"mailer serve: {sent / 1e6:.1f} MB sent in 4 chunked uploads of 50 MB before the cut-off, "
          f"RSS {before} KiB before, {grown:+d} KiB after")
    assert sent < 4 * 50 * 1024 * 1024
    assert grown < 4 * 1024, f"mailer serve grew by {grown} KiB"
    assert huge_header == b"" or huge_header.startswith(b"HTTP/1.1 400 ")
    assert busy.status_code == 503
    assert project.sql("select origin from suppressions") == [("one-click",)]


def test_mailer_serve_closes_connections_that_trickle_their_headers(project: Project) -> None:
    """A slow-loris client (headers a byte at a time) used to hold a connection for good: 100 of
    them held every connection allowed, and one-click opt-outs got 503."""
    assert project.send().exit_code == 0
    url = next(iter(unsubscribe_urls(project).values()))
    with MailerServe(project) as server:
        url = url.replace("https://mail.acme.fr", server.base)
        slow = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(105)]
        started = time.monotonic()
        try:
            for sock in slow:
                sock.sendall(b"POST /u/x HTTP/1.1\r\nHost: x\r\n")
            assert httpx.get(f"{server.base}/healthz").status_code == 503  # all held
            trickler = slow[0]
            closed_after = None
            while time.monotonic() - started < 20:
                try:
                    trickler.sendall(b"X")  # one more header byte a second
                    ready, _, _ = select.select([trickler], [], [], 1.0)
                    if ready and trickler.recv(1024) == b"":
                        closed_after = time.monotonic() - started
                        break
                except OSError:
                    closed_after = time.monotonic() - started
                    break
            assert closed_after is not None and closed_after < 13, closed_after
            time.sleep(0.5)
            assert httpx.post(url, data={"List-Unsubscribe": "One-Click"}).status_code == 200
        finally:
            for sock in slow:
                sock.close()
    assert project.sql("select origin from suppressions") == [("one-click",)]
