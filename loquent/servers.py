"""Run an ASGI app under uvicorn: the one place that knows how.

Three forms, one set of rules (project log config, graceful shutdown, no signal handlers of
uvicorn's own where the caller owns shutdown):

- ``serve`` — blocking, in the main process, with worker processes: ``loquent serve`` and
  ``loquent simulate serve``. uvicorn's loggers are routed to the project's redacting
  handler in every process it spawns (``uvicorn_log_config``).
- ``ServerTask`` — a task in the current event loop: ``loquent demo`` runs the app and the
  simulator side by side and stops them in order on Ctrl-C.
- ``ServerThread`` — a background thread with its own loop: tests (the app, the simulator, a
  webhook receiver) next to code running on their own loop.

The embedded forms leave the process's logging as it is (the app's factory configures it) and
only make uvicorn's loggers propagate to it, so their lines go through the same formatter.
A socket is bound before the server starts, so port 0 becomes a known free port and a busy
port is an ``OSError`` at the call site, not a log line from inside uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Generator
from types import TracebackType
from typing import Any

import uvicorn

from loquent.logging import route_uvicorn_loggers, uvicorn_log_config

LOOPBACK = "127.0.0.1"
# Seconds open requests (SSE streams included) get to finish once shutdown starts.
EMBEDDED_GRACEFUL_SHUTDOWN_S = 2
SERVE_GRACEFUL_SHUTDOWN_S = 5


class ServerStartError(RuntimeError):
    """The server ended before it was ready (uvicorn has logged why)."""


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one); ``OSError`` if it is taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signals to its owner, which decides when it stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None]:
        yield


def _embedded(app: Any, log_level: str) -> _EmbeddedServer:
    route_uvicorn_loggers()
    return _EmbeddedServer(
        uvicorn.Config(
            app,
            log_level=log_level,
            log_config=None,  # keep the process's (the project's) handler: see above
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=EMBEDDED_GRACEFUL_SHUTDOWN_S,
        )
    )


class ServerTask:
    """``app`` served as a task of the running loop, on an already bound socket."""

    def __init__(self, app: Any, sock: socket.socket, name: str, log_level: str = "warning"):
        self.name = name
        self.port = int(sock.getsockname()[1])
        self._sock = sock
        self._server = _embedded(app, log_level)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> asyncio.Task[None]:
        server = self._server
        task = asyncio.create_task(server.serve(sockets=[self._sock]), name=self.name)
        self.task = task
        while not server.started:
            if task.done():
                # uvicorn has logged why; it ends a failed startup with SystemExit.
                with contextlib.suppress(BaseException):
                    task.result()
                raise ServerStartError(f"the {self.name} could not start (see the log above)")
            await asyncio.sleep(0.02)
        return task

    def should_exit(self) -> None:
        """Begin a graceful shutdown; ``stop`` waits for it."""
        self._server.should_exit = True

    async def stop(self) -> None:
        self.should_exit()
        if self.task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self.task


class ServerThread:
    """``app`` served from a thread of its own; ``with ServerThread(app) as s: s.url``."""

    def __init__(
        self, app: Any, host: str = LOOPBACK, port: int = 0, log_level: str = "warning"
    ) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._log_level = log_level
        self._server: _EmbeddedServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def app(self) -> Any:
        """The ASGI app being served, as it was given."""
        return self._app

    def start(self, timeout_s: float = 20.0) -> ServerThread:
        sock = bind(self._host, self._port)
        self._port = int(sock.getsockname()[1])
        server = _embedded(self._app, self._log_level)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn:{self._port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ServerStartError(f"server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._server = None
        self._thread = None

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve(
    app: Any,
    *,
    host: str,
    port: int,
    log_level: str,
    log_json: bool = False,
    factory: bool = False,
    workers: int = 1,
    keep_alive_s: int = 5,
    proxy_headers: bool = True,
) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully. ``app`` is an import string
    (``"module:attr"``) when there are several workers: each process imports it."""
    uvicorn.run(
        app,
        factory=factory,
        host=host,
        port=port,
        workers=workers,
        timeout_graceful_shutdown=SERVE_GRACEFUL_SHUTDOWN_S,
        timeout_keep_alive=keep_alive_s,
        proxy_headers=proxy_headers,
        log_level=log_level.lower(),
        # Every line, uvicorn's access and error lines included, goes through our redacting
        # formatter (JSON with LOQUENT_LOG_JSON), in every worker process.
        log_config=uvicorn_log_config(json_logs=log_json, level=log_level),
    )
