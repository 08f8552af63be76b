"""HTTP endpoints for Kubernetes and Prometheus: ``/livez``, ``/readyz`` and ``/metrics``.

Liveness is real progress, never the broker: the poll loop beats on every turn (it keeps turning while the
broker is away or every partition is paused, so a broker outage does not restart every pod), and the
inference thread must not sit on one micro-batch for longer than the timeout. A timer of its own would
stay green while the loop or the model hung, which is how a frozen pod used to look healthy. Readiness
means the model is loaded and this member has partitions to work on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from consumer.ops import metrics


@dataclass
class HealthState:
    """What the probes report; the service updates it, the HTTP handlers only read it."""

    liveness_timeout_s: float = 30.0
    heartbeat: float = field(default_factory=time.monotonic)
    #: monotonic time the inference thread started its current batch; None while it waits for work
    inference_busy_since: float | None = None
    model_loaded: bool = False
    assigned_partitions: int = 0
    stopping: bool = False

    def beat(self) -> None:
        self.heartbeat = time.monotonic()
        metrics.LAST_HEARTBEAT.set(time.time())

    def inference(self, busy: bool) -> None:
        """Called by the inference thread around each micro-batch."""
        self.inference_busy_since = time.monotonic() if busy else None

    def live(self) -> tuple[bool, str]:
        now = time.monotonic()
        age = now - self.heartbeat
        if age > self.liveness_timeout_s:
            return False, f"poll loop last turned {age:.1f}s ago (limit {self.liveness_timeout_s}s)"
        busy_since = self.inference_busy_since
        if busy_since is not None and now - busy_since > self.liveness_timeout_s:
            return False, f"inference thread stuck on one batch for {now - busy_since:.1f}s"
        return True, f"poll loop turned {age:.2f}s ago"

    def ready(self) -> tuple[bool, str]:
        if self.stopping:
            return False, "shutting down"
        if not self.model_loaded:
            return False, "model bundle not loaded yet"
        if self.assigned_partitions == 0:
            return False, "no partitions assigned"
        return True, f"model loaded, {self.assigned_partitions} partitions assigned"


def build_app(state: HealthState) -> web.Application:
    async def livez(_: web.Request) -> web.Response:
        ok, why = state.live()
        return web.Response(status=200 if ok else 503, text=why + "\n")

    async def readyz(_: web.Request) -> web.Response:
        ok, why = state.ready()
        return web.Response(status=200 if ok else 503, text=why + "\n")

    async def metrics_handler(_: web.Request) -> web.Response:
        body = generate_latest(metrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.add_routes([web.get("/livez", livez), web.get("/readyz", readyz), web.get("/metrics", metrics_handler)])
    return app


async def start_health_server(state: HealthState, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start the endpoints on the running loop; returns the runner (to clean up) and the bound port."""
    runner = web.AppRunner(build_app(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server  # aiohttp has no public accessor for the bound port when port=0
    bound = server.sockets[0].getsockname()[1] if server and server.sockets else port
    return runner, bound
