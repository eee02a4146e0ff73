"""mailer init (a sample project) and mailer serve (the unsubscribe endpoint)."""
from __future__ import annotations

import errno
import os
import shutil
import socket
from importlib import resources
from pathlib import Path

import click

from ..errors import MailerError
from . import Env, cli, pass_env

#: request line and headers; a token URL is under 500 bytes and providers send no cookies
MAX_HEADER_BYTES = 16 * 1024
#: open connections (and requests in progress); past it uvicorn answers 503
MAX_CONNECTIONS = 100
#: an idle keep-alive connection is closed after this
KEEP_ALIVE_SECONDS = 5
#: seconds a client has to send a request's headers (slow-loris clients would fill the connections)
HEADER_SECONDS = 10


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False), default=".")
def init(directory: str) -> None:
    """Write a working sample: config.toml, a campaign, templates and contacts.

    Never overwrites a file that exists.

    \b
    Example:  mailer init demo && cd demo && mailer send campaigns/cloud-audit.toml
    """
    target = Path(directory)
    sample = resources.files("mailer") / "sample"
    written, kept = [], []
    with resources.as_file(sample) as source:
        for path in sorted(Path(source).rglob("*")):
            relative = path.relative_to(source)
            if path.is_dir() or "__pycache__" in relative.parts or relative.parts[:2] == ("templates", "footer"):
                continue
            destination = target / relative
            if destination.exists():
                kept.append(relative)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)
            written.append(relative)
    for name in written:
        click.echo(f"  wrote {target / name}")
    for name in kept:
        click.echo(f"  kept  {target / name} (exists)")
    # The sample's database: created here, as `mailer db init` does (no other command creates one).
    from ..workspace import create_database
    url, created, notes = create_database(target / "config.toml", os.environ)
    for note in notes:
        click.echo(f"Note: {note}", err=True)
    if created:
        click.echo(f"  created the database {url}")
    click.echo(f"\nNext: cd {target} && mailer check campaigns/cloud-audit.toml")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
@pass_env
def serve(env: Env, host: str, port: int) -> None:
    """Run the one-click unsubscribe endpoint ([unsubscribe] base_url must reach it).

    POST /u/TOKEN unsubscribes at once (RFC 8058 one-click, or the page's
    button); GET /u/TOKEN shows a page with one button; GET /healthz answers ok.
    Put it behind a TLS proxy in production, or run the ASGI app
    `mailer.server:app_from_environment` under any ASGI server.

    \b
    Limits (what a hostile client can hold):
      request body   16 KiB, else 413 (Content-Length checked before reading)
      body deadline  10 s from the request's start, else 408
      headers        16 KiB, else 400
      connections    100 at once, else 503
      keep-alive     5 s idle, then closed
      headers time   10 s from the connection (or the last answer), else closed

    \b
    Example:  mailer serve --host 0.0.0.0 --port 8080
    """
    import logging

    import uvicorn

    from ..server import create_app, header_deadline_protocol
    app = create_app(env.workspace())
    listening = _listen(host, port)  # before saying where: a port in use is one line, exit 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    click.echo(f"Unsubscribe endpoint on http://{host}:{port}/ (public URL: {env.workspace().config.unsubscribe.base_url})")
    # h11, not httptools even when installed: the header limit below is h11's
    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_level="warning", server_header=False,
                            http=header_deadline_protocol(HEADER_SECONDS),
                            h11_max_incomplete_event_size=MAX_HEADER_BYTES, limit_concurrency=MAX_CONNECTIONS,
                            timeout_keep_alive=KEEP_ALIVE_SECONDS)
    uvicorn.Server(config).run(sockets=[listening])


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one sentence saying why there cannot be one."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise MailerError(f"cannot listen on {host}:{port}: {exc.strerror}",
                          hint="--host takes an address of this machine, e.g. 127.0.0.1 or 0.0.0.0") from None
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
        listening.listen(2048)
    except OSError as exc:
        listening.close()
        reason = "the port is in use by another program" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise MailerError(f"cannot listen on {host}:{port}: {reason}",
                          hint="choose another port with --port, or stop the program using it") from None
    listening.set_inheritable(True)
    return listening
