"""A real uvicorn server running the unsubscribe app on a free port, in a thread."""
from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn
from smtp_server import free_port

from mailer import Workspace
from mailer.server import create_app


class UnsubscribeServer:
    def __init__(self, workspace: Workspace, **options: Any) -> None:
        """`options` go to `create_app` (e.g. a short `body_deadline`)."""
        self.port = free_port()
        config = uvicorn.Config(create_app(workspace, **options), host="127.0.0.1", port=self.port,
                                log_level="warning", access_log=False, lifespan="off", http="h11")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> UnsubscribeServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
