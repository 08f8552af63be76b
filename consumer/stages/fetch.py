"""Bounded, SSRF-guarded downloads of vendor image URLs, decoded off the event loop.

Every URL in a product event is attacker-controlled as far as we are concerned, and one slow or hostile
vendor must not stall a partition. So a fetch:

* validates the URL (http/https, a host, no credentials, no numeric-IPv4 tricks) and refuses IP-literal
  hosts the SSRF guard forbids, *before* anything is sent; DNS names are checked by
  :class:`~consumer.stages.ssrf.GuardedResolver` at connect time, on every answer;
* follows redirects itself (``allow_redirects=False``), re-validating every hop the same way, so a public
  URL cannot bounce us to ``169.254.169.254``;
* runs under one deadline (``total_timeout_s``) covering every hop, retry and backoff, with a separate
  TCP connect timeout; retries only connection errors, 5xx and 429, with jittered exponential backoff,
  never sooner than a ``Retry-After`` the server sent (and not at all when that is past the deadline);
* checks the status, the Content-Type allow-list and Content-Length, then streams the body counting bytes,
  because Content-Length is optional and can lie (chunked bodies have none);
* decodes in the executor with :func:`~consumer.stages.decode.decode_image` (format allow-list, pixel limit,
  every format reduced to the model's decode size at once) and, when given ``to_views``, turns the picture
  into the model's views in the same call, so neither the body nor the picture outlives the decode;
* holds the body, then the views, inside a :class:`~consumer.stages.budget.MemoryBudget` when given one:
  the views' bytes stay reserved until the caller releases ``FetchResult.reservation`` (after inference).

:meth:`ImageFetcher.fetch` never raises (other than ``CancelledError``): each outcome is a
:class:`FetchResult` whose ``status`` goes into the enriched event, so a product whose images all fail is
still enriched from its text and says why each image failed. See ``docs/fetching.md`` for the statuses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import functools
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, Literal, get_args

import aiohttp
import structlog
from PIL import Image
from yarl import URL

from consumer.ops import metrics
from consumer.ops.settings import FetchSettings
from consumer.stages.budget import MemoryBudget, Reservation
from consumer.stages.decode import ImageRejected, decode_image
from consumer.stages.ssrf import BlockedAddressError, GuardedResolver, literal_refusal, parse_ip

log = structlog.get_logger(__name__)

FetchStatus = Literal[
    "ok",
    "invalid_url",
    "blocked_address",
    "too_many_redirects",
    "connection_error",
    "timeout",
    "http_error",
    "bad_content_type",
    "too_large",
    "unsupported_format",
    "decompression_bomb",
    "decode_error",
    "skipped",
]
#: Every status a :class:`FetchResult` can carry, in the order ``docs/fetching.md`` documents them.
FETCH_STATUSES: tuple[str, ...] = get_args(FetchStatus)

_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_MAX_URL_LENGTH = 8192
#: ``images[].url`` in schemas/attributes-enriched.v1.json.
_MAX_DISPLAY_URL = 2048
_CHUNK_BYTES = 64 * 1024
#: Non-standard Content-Types that CDNs and vendor shops really send for JPEG/PNG.
_CONTENT_TYPE_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png"}
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_HOSTNAME = re.compile(r"^[A-Za-z0-9_.-]+$")
#: A host made only of decimal/hex/octal-looking labels: inet_aton would turn ``0x7f.1`` or
#: ``2130706433`` into 127.0.0.1. Canonical dotted quads are parsed as IP literals before this is asked.
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*\.?$", re.IGNORECASE)


@dataclass(frozen=True)
class FetchResult:
    """The outcome of fetching one image URL; ``to_json`` is its entry in the event's ``images[]``."""

    url: str
    status: str
    reason: str | None
    http_status: int | None
    nbytes: int | None
    elapsed_ms: float
    image: Image.Image | None = field(default=None, repr=False, compare=False)
    #: the model's views of the image (``to_views`` given); ``image`` is then None
    views: Any = field(default=None, repr=False, compare=False)
    #: budget bytes still held for ``views``; release once they are no longer needed
    reservation: Reservation | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The JSON-able summary (no pixels) that the output event carries."""
        return {
            "url": self.url,
            "status": self.status,
            "reason": self.reason,
            "http_status": self.http_status,
            "bytes": self.nbytes,
            "elapsed_ms": round(self.elapsed_ms, 1),
        }


class _Failure(Exception):
    """Ends a fetch with ``status``; ``retryable`` marks connection errors, 5xx and 429, ``retry_after_s``
    the wait a server asked for."""

    def __init__(self, status: FetchStatus, reason: str, *, retryable: bool = False,
                 retry_after_s: float | None = None) -> None:
        super().__init__(f"{status}: {reason}")
        self.status: FetchStatus = status
        self.reason = reason
        self.retryable = retryable
        self.retry_after_s = retry_after_s


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


_DELAY_SECONDS = re.compile(r"[0-9]+")


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """The wait a ``Retry-After`` header asks for (RFC 9110: delay-seconds or an HTTP-date), in seconds.

    ``None`` when the header is absent or unreadable (then our own backoff applies); a date in the past is 0.
    Why honour it: a vendor CDN that sheds load with 503/429 says when it will serve again, and retrying
    sooner only adds to the load it is shedding.
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class _Progress:
    """What one fetch has seen so far, for the result and for an honest timeout reason."""

    phase: str = "connecting"
    http_status: int | None = None
    nbytes: int | None = None
    retries: int = 0


class ImageFetcher:
    """Downloads and decodes product images through one shared, guarded ``aiohttp`` session.

    Use as an async context manager; the session (and its per-host connection pool) lives as long as
    the ``async with`` block, so connections to a CDN are reused across products. ``draft_size`` is the
    model's decode size (JPEG draft mode, and the size every format is reduced to); ``executor`` runs the
    CPU-bound decode (the loop's default executor when ``None``); ``to_views`` (the model's preprocessing)
    runs right after the decode in the same executor call; ``budget`` and ``view_bytes`` (the size of one
    image's views) bound image memory in flight.
    """

    def __init__(
        self,
        settings: FetchSettings,
        *,
        draft_size: tuple[int, int] | None = None,
        executor: concurrent.futures.Executor | None = None,
        to_views: Callable[[Image.Image], Any] | None = None,
        budget: MemoryBudget | None = None,
        view_bytes: int = 0,
    ) -> None:
        self._settings = settings
        self._draft_size = draft_size
        self._executor = executor
        self._to_views = to_views
        self._budget = budget
        self._view_bytes = view_bytes
        self._session: aiohttp.ClientSession | None = None
        self._resolver: GuardedResolver | None = None
        self._allowed_types = frozenset(t.strip().lower() for t in settings.allowed_content_types)

    async def __aenter__(self) -> ImageFetcher:
        """Create the one shared session: guarded resolver, connection limits, timeouts, no cookies."""
        s = self._settings
        self._resolver = GuardedResolver(allow_loopback=s.allow_loopback)
        connector = aiohttp.TCPConnector(
            limit=s.total_connections, limit_per_host=s.per_host_connections, resolver=self._resolver
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            trace_configs=[_phase_tracer()],
            # sock_connect, not connect: aiohttp's ``connect`` also counts time queued for a free
            # per-host slot, which is our own politeness limit, not the vendor being slow. The overall
            # deadline (total_timeout_s) is enforced around all hops and retries in fetch().
            timeout=aiohttp.ClientTimeout(total=s.total_timeout_s, sock_connect=s.connect_timeout_s),
            headers={"User-Agent": s.user_agent, "Accept": ", ".join(sorted(self._allowed_types))},
            # Cookies a vendor sets must not travel to the next vendor; proxies from the environment
            # would resolve the target themselves and so bypass the SSRF guard.
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close the session and the resolver (the connector does not own a resolver it was given)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._resolver is not None:
            await self._resolver.close()
            self._resolver = None

    async def fetch_all(self, urls: Sequence[str]) -> list[FetchResult]:
        """Fetch the first ``max_images_per_product`` URLs concurrently; the rest are ``skipped``.

        Results are in the order of ``urls``, one per URL.
        """
        limit = self._settings.max_images_per_product
        tasks = [asyncio.ensure_future(self.fetch(url)) for url in urls[:limit]]
        try:
            fetched = await asyncio.gather(*tasks)
        except BaseException:  # cancelled (a superseded event): give back what finished fetches hold
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is None:
                    reservation = task.result().reservation
                    if reservation is not None:
                        reservation.release()
            raise
        skipped = []
        for url in urls[limit:]:
            metrics.IMAGE_FETCHES.labels(status="skipped").inc()
            skipped.append(
                FetchResult(
                    _display_url(url), "skipped", f"over max_images_per_product={limit}", None, None, 0.0
                )
            )
        return [*fetched, *skipped]

    async def fetch(self, url: str) -> FetchResult:
        """Download and decode one image; never raises except ``CancelledError``.

        The network part (every redirect hop, retry and backoff) shares one ``total_timeout_s`` deadline;
        the decode runs afterwards in the executor.
        """
        if self._session is None:
            raise RuntimeError("ImageFetcher used outside 'async with'")
        started = time.perf_counter()
        progress = _Progress()
        image: Image.Image | None = None
        views: Any = None
        reservation: Reservation | None = None
        try:
            data = await self._download(url, progress)
            progress.phase = "decoding"
            if self._budget is not None:
                reservation = await self._budget.reserve(len(data) + self._view_bytes)
            decoded = await self._decode(data)
            del data  # the body is not needed once the picture (or its views) exists
            if reservation is not None:
                reservation.release(max(0, reservation.held - self._view_bytes))
            if self._to_views is None:
                image = decoded
            else:
                views = decoded
            status, reason = "ok", None
        except _Failure as failure:
            status, reason = failure.status, failure.reason
        except ImageRejected as rejected:
            status, reason = rejected.status, rejected.reason
        except Exception as exc:  # a bug must cost one image, not the product (or the partition)
            log.exception("unexpected image fetch failure", url=_display_url(url), phase=progress.phase)
            status = "decode_error" if progress.phase == "decoding" else "connection_error"
            reason = f"unexpected {type(exc).__name__}: {exc}"
        finally:
            if reservation is not None and views is None:
                reservation.release()  # failed (or cancelled): nothing to keep
        elapsed = time.perf_counter() - started
        metrics.IMAGE_FETCHES.labels(status=status).inc()
        metrics.IMAGE_FETCH_SECONDS.observe(elapsed)
        if status != "ok":
            log.debug("image fetch failed", url=_display_url(url), status=status, reason=reason)
        return FetchResult(
            url=_display_url(url),
            status=status,
            reason=reason,
            http_status=progress.http_status,
            nbytes=progress.nbytes,
            elapsed_ms=elapsed * 1000,
            image=image,
            views=views,
            reservation=reservation if views is not None else None,
        )

    async def _decode(self, data: bytes) -> Any:
        """Decode (and make the views) in the executor: Pillow releases the GIL, the loop keeps serving I/O."""
        if not data:
            raise ImageRejected("decode_error", "empty body")
        s = self._settings
        decode = functools.partial(
            decode_image, data, allowed_formats=s.allowed_formats, max_pixels=s.max_pixels,
            draft_size=self._draft_size,
        )
        to_views = self._to_views
        work = decode if to_views is None else (lambda: to_views(decode()))
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    async def _download(self, url: str, progress: _Progress) -> bytes:
        """Follow redirects and retries under the overall deadline; return the body or raise _Failure."""
        total = self._settings.total_timeout_s
        deadline = asyncio.get_running_loop().time() + total
        try:
            async with asyncio.timeout_at(deadline):
                return await self._follow_redirects(url, progress, deadline)
        except TimeoutError as exc:
            if isinstance(exc, aiohttp.ServerTimeoutError):  # aiohttp's own per-request timeouts
                raise _Failure("timeout", f"{exc or type(exc).__name__} while {progress.phase}") from exc
            reason = f"no complete response within {total:g} s (while {progress.phase})"
            raise _Failure("timeout", reason) from exc

    async def _follow_redirects(self, url: str, progress: _Progress, deadline: float) -> bytes:
        """Request ``url`` and each redirect target in turn, validating every hop before connecting."""
        max_redirects = self._settings.max_redirects
        target: str | URL = url
        visited: set[str] = set()
        for hop in range(max_redirects + 1):
            try:
                checked = self._validate(target)
            except _Failure as failure:
                if hop:
                    failure.reason += f" (redirect hop {hop}: {target})"
                raise
            visited.add(str(checked))
            try:
                location, body = await self._request_with_retries(checked, progress, deadline)
            except _Failure as failure:
                if hop and failure.status == "blocked_address":
                    failure.reason += f" (redirect hop {hop}: {checked})"
                raise
            if location is None:
                assert body is not None
                return body
            if str(location) in visited:
                raise _Failure("too_many_redirects", f"redirect loop back to {location}")
            target = location
        raise _Failure("too_many_redirects", f"more than {max_redirects} redirects")

    def _validate(self, target: str | URL) -> URL:
        """Parse and check one hop's URL; IP-literal hosts are checked against the SSRF guard here."""
        if isinstance(target, URL):
            url = target
        else:
            if not isinstance(target, str):
                raise _Failure("invalid_url", f"not a string: {type(target).__name__}")
            raw = target.strip()
            if len(raw) > _MAX_URL_LENGTH:
                raise _Failure("invalid_url", f"longer than {_MAX_URL_LENGTH} characters")
            if _CONTROL_CHARS.search(raw):
                raise _Failure("invalid_url", "control character in URL")
            try:
                url = URL(raw)
            except (ValueError, TypeError) as exc:
                raise _Failure("invalid_url", f"unparseable: {exc}") from exc
        if url.scheme not in ("http", "https"):
            raise _Failure("invalid_url", f"scheme {url.scheme!r} not allowed (http and https only)")
        host = url.host
        if not host:
            raise _Failure("invalid_url", "no host")
        if url.raw_user is not None or url.raw_password is not None:
            raise _Failure("invalid_url", "credentials in URL")
        if not url.port:
            raise _Failure("invalid_url", f"bad port {url.port}")
        if parse_ip(host) is None:
            if _NUMERIC_HOST.match(host):
                raise _Failure("invalid_url", f"non-canonical numeric IPv4 host {host!r}")
            if not _HOSTNAME.match(url.raw_host or ""):
                raise _Failure("invalid_url", f"bad host name {host!r}")
        refusal = literal_refusal(host, allow_loopback=self._settings.allow_loopback)
        if refusal is not None:
            raise _Failure("blocked_address", refusal)
        return url

    async def _request_with_retries(
        self, url: URL, progress: _Progress, deadline: float
    ) -> tuple[URL | None, bytes | None]:
        """One hop, retried on connection errors, 5xx and 429 while retries and the deadline allow."""
        s = self._settings
        loop = asyncio.get_running_loop()
        attempts = 0
        while True:
            attempts += 1
            try:
                return await self._request(url, progress)
            except _Failure as failure:
                if not failure.retryable or progress.retries >= s.retries:
                    if attempts > 1:
                        failure.reason += f" (after {_plural(attempts, 'attempt')})"
                    raise
                # Jitter so that many products hitting one failing CDN do not retry in lockstep.
                delay = s.backoff_s * (2**progress.retries) * random.uniform(0.5, 1.0)
                if failure.retry_after_s is not None:
                    delay = max(delay, failure.retry_after_s)  # the server said when; never sooner
                if loop.time() + delay >= deadline:
                    # Sleeping would only end in a timeout; the real failure is more useful.
                    if failure.retry_after_s is not None and failure.retry_after_s >= delay:
                        failure.reason += (f" (after {_plural(attempts, 'attempt')}; the server asked to retry after "
                                           f"{failure.retry_after_s:g} s, past the deadline)")
                    else:
                        failure.reason += f" (after {_plural(attempts, 'attempt')}; no time left to retry)"
                    raise
                progress.retries += 1
                progress.phase = f"backing off before retry {progress.retries}"
                await asyncio.sleep(delay)

    async def _request(self, url: URL, progress: _Progress) -> tuple[URL | None, bytes | None]:
        """One GET: returns ``(redirect target, None)`` or ``(None, body)``, or raises _Failure."""
        assert self._session is not None
        progress.phase = f"requesting {url.host}"
        progress.http_status = None
        progress.nbytes = None
        try:
            async with self._session.get(url, allow_redirects=False, trace_request_ctx=progress) as resp:
                if not 100 <= resp.status <= 599:  # the parser takes any 3 digits; the event schema does not
                    raise _Failure("http_error", f"invalid HTTP status {resp.status}")
                progress.http_status = resp.status
                if resp.status in _REDIRECT_CODES:
                    return self._redirect_target(resp), None
                if resp.status >= 500 or resp.status == 429:
                    raise _Failure("http_error", f"HTTP {resp.status}", retryable=True,
                                   retry_after_s=retry_after_seconds(resp.headers.get("Retry-After")))
                if not 200 <= resp.status < 300:
                    raise _Failure("http_error", f"HTTP {resp.status}")
                self._check_headers(resp)
                progress.phase = "reading body"
                return None, await self._read_capped(resp, progress)
        except _Failure:
            raise
        except aiohttp.ClientConnectorError as exc:
            blocked = _find_blocked(exc)
            if blocked is not None:
                raise _Failure("blocked_address", str(blocked)) from exc
            retryable = not isinstance(exc, aiohttp.ClientSSLError)  # a bad certificate stays bad
            raise _Failure("connection_error", _describe(exc), retryable=retryable) from exc
        except aiohttp.InvalidURL as exc:
            raise _Failure("invalid_url", _describe(exc)) from exc
        except TimeoutError:
            raise  # TimeoutError is an OSError: keep it from the clause below; _download maps it
        except (aiohttp.ClientError, OSError) as exc:
            # Disconnects, resets, truncated bodies (ClientPayloadError), malformed responses.
            blocked = _find_blocked(exc)
            if blocked is not None:
                raise _Failure("blocked_address", str(blocked)) from exc
            retryable = not isinstance(exc, aiohttp.ServerFingerprintMismatch)
            raise _Failure("connection_error", _describe(exc), retryable=retryable) from exc

    @staticmethod
    def _redirect_target(resp: aiohttp.ClientResponse) -> URL:
        """The absolute URL a 3xx response points to (relative Locations resolve against the hop)."""
        location = resp.headers.get("Location")
        if not location:
            raise _Failure("http_error", f"HTTP {resp.status} without Location")
        try:
            return resp.url.join(URL(location.strip()))
        except (ValueError, TypeError) as exc:
            raise _Failure("invalid_url", f"unparseable redirect Location {location[:200]!r}") from exc

    def _check_headers(self, resp: aiohttp.ClientResponse) -> None:
        """Content-Type allow-list, then refuse a declared Content-Length over the cap before reading."""
        if "Content-Type" not in resp.headers:
            raise _Failure("bad_content_type", "no Content-Type")
        content_type = _CONTENT_TYPE_ALIASES.get(resp.content_type, resp.content_type)
        if content_type not in self._allowed_types:
            raise _Failure("bad_content_type", f"Content-Type {resp.content_type!r} not allowed")
        cap = self._settings.max_bytes
        if resp.content_length is not None and resp.content_length > cap:
            resp.close()
            raise _Failure("too_large", f"Content-Length {resp.content_length} exceeds {cap} bytes")

    async def _read_capped(self, resp: aiohttp.ClientResponse, progress: _Progress) -> bytes:
        """Stream the body, never reading more than ``max_bytes + 1`` bytes whatever the headers said."""
        cap = self._settings.max_bytes
        body = bytearray()
        progress.nbytes = 0
        while True:
            chunk = await resp.content.read(min(_CHUNK_BYTES, cap + 1 - len(body)))
            if not chunk:
                return bytes(body)
            body += chunk
            progress.nbytes = len(body)
            metrics.IMAGE_FETCH_BYTES.inc(len(chunk))
            if len(body) > cap:
                resp.close()  # do not drain the rest into a pooled connection
                raise _Failure("too_large", f"body exceeded {cap} bytes")


def _phase_tracer() -> aiohttp.TraceConfig:
    """Keep ``_Progress.phase`` current, so that a timeout says *where* the time went.

    "waiting for a free connection" means our own per-host limit was the bottleneck, not the vendor;
    that distinction matters when tuning ``per_host_connections`` against ``total_timeout_s``.
    """
    tracer = aiohttp.TraceConfig()

    def on(signal: Any, phase: str) -> None:
        async def update(_session: aiohttp.ClientSession, ctx: Any, params: Any) -> None:
            progress = ctx.trace_request_ctx
            if isinstance(progress, _Progress):
                host = getattr(params, "host", None) or getattr(getattr(params, "url", None), "host", "")
                progress.phase = phase.format(host=host) if "{host}" in phase else phase

        signal.append(update)

    on(tracer.on_dns_resolvehost_start, "resolving {host}")
    on(tracer.on_connection_queued_start, "waiting for a free connection (per-host limit)")
    on(tracer.on_connection_create_start, "connecting")
    on(tracer.on_connection_create_end, "waiting for response headers")
    on(tracer.on_connection_reuseconn, "waiting for response headers")
    return tracer


def _find_blocked(exc: BaseException) -> BlockedAddressError | None:
    """The SSRF guard's refusal, wherever aiohttp wrapped it (``os_error``, ``__cause__``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, BlockedAddressError):
            return current
        seen.add(id(current))
        nested = getattr(current, "os_error", None)
        current = nested if isinstance(nested, BaseException) else (current.__cause__ or current.__context__)
    return None


def _describe(exc: BaseException) -> str:
    """A short, specific reason: the exception type plus its message (which may be empty)."""
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _display_url(url: object) -> str:
    """The URL as the output event shows it: a password masked, clipped to the schema's 2048 characters."""
    text = url if isinstance(url, str) else repr(url)
    try:
        parsed = URL(text.strip())
        if parsed.raw_password is not None:
            text = str(parsed.with_password("****"))
    except (ValueError, TypeError):
        pass
    return text[:_MAX_DISPLAY_URL]
