"""A loopback HTTP server for catalog photos, for ``enrich demo`` and tests.

Why: the consumer downloads vendor image URLs over real HTTP; tests and the demo should exercise that same
path (aiohttp client, timeouts, retries, size caps) rather than a stub. The server runs its own event loop
in a background thread so synchronous code (the demo, pytest fixtures) can start it with a ``with`` block.
Fault injection for tests: ``delay_s`` (a slow image) and ``status`` (an image that answers e.g. 500), both
keyed by file name and read per request, so a test may change them while the server runs; ``routes`` adds
handlers at other paths (misbehaving servers: endless bodies, redirects, lies in headers).
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

from aiohttp import web

__all__ = ["Handler", "ImageServer"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ImageServer:
    """Serves ``root/<name>`` at ``/images/<name>`` (one path segment, no traversal) and ``/`` (file count).

    >>> with ImageServer(Path("catalog/images")) as server:
    ...     url = f"{server.base_url}/images/15970.jpg"
    """

    def __init__(
        self,
        root: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        delay_s: dict[str, float] | None = None,
        status: dict[str, int] | None = None,
        routes: Mapping[str, Handler] | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.host = host
        self.port = port
        self.delay_s: dict[str, float] = dict(delay_s or {})
        self.status: dict[str, int] = dict(status or {})
        self.routes: dict[str, Handler] = dict(routes or {})
        self.requests: Counter[str] = Counter()  # file name -> requests seen (retries show up here)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port`` (no trailing slash); image URLs are ``base_url + "/images/" + name``."""
        return f"http://{self.host}:{self.port}"

    def url_for(self, name: str) -> str:
        """The URL serving ``root/name``."""
        return f"{self.base_url}/images/{quote(name, safe='')}"

    # ------------------------------------------------------------------------------------------ handlers
    async def _index(self, request: web.Request) -> web.Response:
        count = sum(1 for p in self.root.iterdir() if p.is_file()) if self.root.is_dir() else 0
        return web.json_response({"images": count})

    async def _image(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.requests[name] += 1
        # aiohttp has already percent-decoded the segment: refuse anything that could leave root.
        if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
            raise web.HTTPNotFound()
        path = (self.root / name).resolve()
        if path.parent != self.root or not path.is_file():
            raise web.HTTPNotFound()
        delay = self.delay_s.get(name, 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        status = self.status.get(name)
        if status is not None:
            return web.Response(status=status, text=f"injected status {status}")
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return web.Response(body=path.read_bytes(), content_type=content_type)

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_get("/images/{name}", self._image)
        for path, handler in self.routes.items():
            app.router.add_get(path, handler)
        return app

    # ----------------------------------------------------------------------------------------- lifecycle
    async def _start_site(self) -> int:
        # handler_cancellation: a handler still sleeping or streaming when its client hangs up ends with it.
        runner = web.AppRunner(self._app(), handler_cancellation=True, access_log=None)
        await runner.setup()
        # A short shutdown timeout: stop() must not wait out a test's artificially delayed request.
        site = web.TCPSite(runner, self.host, self.port, shutdown_timeout=0.5)
        await site.start()
        self._runner = runner
        server = site._server  # the only way aiohttp exposes the bound port when port=0
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else self.port

    def start(self) -> Self:
        """Bind and serve in a daemon thread; returns once the port accepts connections."""
        if self._thread is not None:
            raise RuntimeError("image server already started")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="image-server", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self.port = asyncio.run_coroutine_threadsafe(self._start_site(), loop).result(timeout=30)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close the server and its loop and join the thread. Idempotent."""
        loop, thread, runner = self._loop, self._thread, self._runner
        self._loop = self._thread = self._runner = None
        if loop is None or thread is None:
            return
        if runner is not None:
            # Shutting down anyway: a failed or slow cleanup must not keep the thread alive.
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        if not thread.is_alive():
            loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
