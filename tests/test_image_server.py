"""The loopback image server: real HTTP, exact bytes, 404s, no path traversal, injected delays and errors."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path

import pytest

from consumer.devtools.image_server import ImageServer


@pytest.fixture
def served(tmp_path: Path) -> Path:
    """An images/ folder with two photos, and a secret beside it that must never be served."""
    root = tmp_path / "images"
    root.mkdir()
    (root / "1.jpg").write_bytes(b"\xff\xd8\xff\xe0 first photo \x00\x01\xff\xd9")
    (root / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n second")
    (tmp_path / "styles.csv").write_text("id,secret\n1,do-not-serve\n")
    return root


def _get(server: ImageServer, path: str) -> tuple[int, bytes, str]:
    """GET with the path sent exactly as written (http.client does not normalise ``..``)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read(), response.getheader("Content-Type", "")
    finally:
        conn.close()


def test_serves_exact_bytes_with_content_type(served: Path) -> None:
    with ImageServer(served) as server:
        assert server.base_url == f"http://127.0.0.1:{server.port}" and server.port > 0
        status, body, ctype = _get(server, "/images/1.jpg")
        assert (status, body, ctype) == (200, (served / "1.jpg").read_bytes(), "image/jpeg")
        status, body, ctype = _get(server, "/images/2.png")
        assert (status, body, ctype) == (200, (served / "2.png").read_bytes(), "image/png")
        status, body, _ = _get(server, "/")
        assert status == 200 and json.loads(body) == {"images": 2}
        assert server.url_for("1.jpg") == f"{server.base_url}/images/1.jpg"
        assert server.requests["1.jpg"] == 1


def test_serves_the_sample_catalog(image_server: ImageServer, sample_catalog: Path) -> None:
    photo = next((sample_catalog.parent / "images").iterdir())
    status, body, ctype = _get(image_server, f"/images/{photo.name}")
    assert (status, ctype) == (200, "image/jpeg") and body == photo.read_bytes()


def test_missing_file_is_404(served: Path) -> None:
    with ImageServer(served) as server:
        assert _get(server, "/images/nope.jpg")[0] == 404
        assert _get(server, "/images/")[0] == 404
        assert _get(server, "/elsewhere/1.jpg")[0] == 404


@pytest.mark.parametrize(
    "path",
    [
        "/images/../styles.csv",
        "/images/..%2fstyles.csv",
        "/images/..%2Fstyles.csv",
        "/images/%2e%2e%2fstyles.csv",
        "/images/..%5cstyles.csv",
        "/images/%2e%2e",
        "/images/..",
        "/../styles.csv",
        "/images/%2fetc%2fpasswd",
        "/images/1.jpg%00.png",
    ],
)
def test_path_traversal_is_refused(served: Path, path: str) -> None:
    with ImageServer(served) as server:
        status, body, _ = _get(server, path)
    assert status in (400, 403, 404)
    assert b"do-not-serve" not in body and b"root:" not in body


def test_symlink_out_of_root_is_refused(served: Path) -> None:
    (served / "link.jpg").symlink_to(served.parent / "styles.csv")
    with ImageServer(served) as server:
        assert _get(server, "/images/link.jpg")[0] == 404


def test_delay_and_status_injection(served: Path) -> None:
    with ImageServer(served, delay_s={"1.jpg": 0.4}, status={"2.png": 503}) as server:
        started = time.monotonic()
        assert _get(server, "/images/1.jpg")[0] == 200
        assert time.monotonic() - started >= 0.4
        assert _get(server, "/images/2.png")[0] == 503
        server.status.pop("2.png")  # read per request: a test can heal a failing image mid-run
        assert _get(server, "/images/2.png")[0] == 200
        assert server.requests["2.png"] == 2


def test_stop_closes_the_port_even_with_a_request_in_flight(served: Path) -> None:
    server = ImageServer(served, delay_s={"1.jpg": 30.0}).start()
    port = server.port
    conn = http.client.HTTPConnection(server.host, port, timeout=30)
    conn.request("GET", "/images/1.jpg")  # parked in its 30 s delay
    time.sleep(0.1)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 5
    conn.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    server.stop()  # idempotent
