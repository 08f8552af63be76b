"""Safe image decoding: format allow-list, pixel limit without global state, draft mode, RGB output."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from consumer.stages.decode import ImageRejected, decode_image, pixel_limit

FORMATS = ["JPEG", "PNG", "WEBP", "GIF"]


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def gradient_jpeg(size: tuple[int, int]) -> bytes:
    """A JPEG with real content (a gradient), cheap to make even at 2000x2000."""
    return encode(Image.linear_gradient("L").resize(size).convert("RGB"), "JPEG", quality=85)


def png_declaring(width: int, height: int) -> bytes:
    """A valid tiny PNG whose IHDR claims ``width`` x ``height``: a decompression bomb's header.

    Patching the header rather than saving a real 20000x20000 image keeps the test from allocating
    hundreds of megabytes on a shared CI machine; Pillow rejects on the header either way.
    """
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = 8  # after the PNG signature: length (4), b"IHDR" (4), data (13), crc (4)
    assert data[ihdr + 4 : ihdr + 8] == b"IHDR"
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21]))
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    return bytes(data)


def decode(data: bytes, **overrides: object) -> Image.Image:
    kwargs: dict[str, object] = {"allowed_formats": FORMATS, "max_pixels": 40_000_000, "draft_size": None}
    kwargs.update(overrides)
    return decode_image(data, **kwargs)  # type: ignore[arg-type]


def test_jpeg_decodes_to_loaded_rgb() -> None:
    im = decode(gradient_jpeg((64, 48)))
    assert im.mode == "RGB" and im.size == (64, 48)
    im.getpixel((0, 0))  # fully loaded: no file object behind it


def test_png_with_alpha_is_flattened_on_white() -> None:
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    im = decode(encode(rgba, "PNG"))
    assert im.mode == "RGB"
    assert im.getpixel((4, 4)) == (255, 255, 255)


def test_palette_gif_and_grayscale_png_become_rgb() -> None:
    assert decode(encode(Image.new("P", (5, 5), 3), "GIF")).mode == "RGB"
    assert decode(encode(Image.new("L", (5, 5), 128), "PNG")).getpixel((0, 0)) == (128, 128, 128)


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    data = encode(Image.new("RGB", (40, 20)), "JPEG", exif=exif.tobytes())
    assert decode(data).size == (20, 40)


def test_draft_mode_decodes_large_jpeg_at_reduced_scale() -> None:
    data = gradient_jpeg((2000, 2000))
    started = time.perf_counter()
    im = decode(data, draft_size=(224, 224))
    elapsed = time.perf_counter() - started
    # libjpeg scales by 1/2, 1/4 or 1/8: the smallest scale that still covers the requested size.
    assert im.size == (250, 250)
    assert 224 <= im.width < 2 * 224 and 224 <= im.height < 2 * 224
    assert im.mode == "RGB"
    assert elapsed < 1.0  # a full 2000x2000 decode plus resize is several times slower


def test_draft_size_never_goes_below_the_request() -> None:
    assert decode(gradient_jpeg((300, 300)), draft_size=(224, 224)).size == (300, 300)


def test_png_is_reduced_to_cover_the_decode_size_at_once() -> None:
    # no full-size picture leaves the decode: PNG has no draft mode, so it is box-reduced right after loading
    data = encode(Image.new("RGB", (650, 600)), "PNG")
    assert decode(data, draft_size=(100, 100)).size == (109, 100)  # reduce() rounds up
    # never below the requested size, never enlarged
    assert decode(encode(Image.new("RGB", (190, 400)), "PNG"), draft_size=(100, 100)).size == (190, 400)
    assert decode(encode(Image.new("RGBA", (40, 30)), "PNG"), draft_size=(100, 100)).size == (40, 30)


def test_format_outside_allow_list_is_unsupported() -> None:
    bmp = encode(Image.new("RGB", (4, 4)), "BMP")
    with pytest.raises(ImageRejected) as info:
        decode(bmp)
    assert info.value.status == "unsupported_format"
    png = encode(Image.new("RGB", (4, 4)), "PNG")
    with pytest.raises(ImageRejected) as info:
        decode(png, allowed_formats=["JPEG"])
    assert info.value.status == "unsupported_format"


def test_non_image_bytes_are_unsupported() -> None:
    with pytest.raises(ImageRejected) as info:
        decode(b"<html><body>not found</body></html>")
    assert info.value.status == "unsupported_format"


def test_truncated_jpeg_is_a_decode_error() -> None:
    data = gradient_jpeg((256, 256))
    with pytest.raises(ImageRejected) as info:
        decode(data[: len(data) // 2])
    assert info.value.status == "decode_error"


def test_corrupt_png_data_is_a_decode_error() -> None:
    data = bytearray(encode(Image.linear_gradient("L"), "PNG"))
    data[60:80] = b"\x00" * 20  # inside the IDAT stream
    with pytest.raises(ImageRejected) as info:
        decode(bytes(data))
    assert info.value.status == "decode_error"


def test_bomb_beyond_pillow_global_limit_is_rejected() -> None:
    with pytest.raises(ImageRejected) as info:
        decode(png_declaring(20000, 20000))
    assert info.value.status == "decompression_bomb"


def test_bomb_between_our_limit_and_pillows_is_rejected_by_ours() -> None:
    with pytest.raises(ImageRejected) as info:
        decode(png_declaring(7000, 7000), max_pixels=40_000_000)  # 49 M: Pillow alone would accept it
    assert info.value.status == "decompression_bomb"
    assert "49000000 pixels" in info.value.reason


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_warning_range_is_an_error_even_with_a_looser_configured_limit() -> None:
    assert Image.MAX_IMAGE_PIXELS is not None
    pixels = Image.MAX_IMAGE_PIXELS + 1_000_000  # Pillow would only warn
    side = int(pixels**0.5) + 1
    with pytest.raises(ImageRejected) as info:
        decode(png_declaring(side, side), max_pixels=10 * Image.MAX_IMAGE_PIXELS)
    assert info.value.status == "decompression_bomb"
    assert pixel_limit(10 * Image.MAX_IMAGE_PIXELS) == Image.MAX_IMAGE_PIXELS


def test_per_call_limit_leaves_global_limit_alone_across_threads() -> None:
    before = Image.MAX_IMAGE_PIXELS
    small = encode(Image.new("RGB", (20, 20)), "PNG")
    barrier = threading.Barrier(4)

    def strict() -> str:
        barrier.wait()
        try:
            decode(small, max_pixels=100)
        except ImageRejected as exc:
            return exc.status
        return "ok"

    def lenient() -> str:
        barrier.wait()
        return "ok" if decode(small, max_pixels=1000).size == (20, 20) else "bad"

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(strict if i % 2 else lenient) for i in range(4)]
        outcomes = [f.result() for f in futures]
    assert outcomes == ["ok", "decompression_bomb", "ok", "decompression_bomb"]
    assert before == Image.MAX_IMAGE_PIXELS


def test_image_rejected_is_picklable_for_process_pools() -> None:
    import pickle

    exc = pickle.loads(pickle.dumps(ImageRejected("decode_error", "truncated")))
    assert (exc.status, exc.reason) == ("decode_error", "truncated")
