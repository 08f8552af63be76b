"""Safe decoding of downloaded image bytes into RGB Pillow images.

The bytes come from vendors, so decoding is an attack surface like the download itself: a format plugin
nobody meant to expose, a 64 KB PNG that declares 40 000 x 40 000 pixels and would allocate gigabytes, a
truncated file that Pillow would silently pad with grey if ``LOAD_TRUNCATED_IMAGES`` were on. This module
accepts only the formats it is told to, enforces a pixel limit per call, and turns every failure into an
:class:`ImageRejected` with one of three statuses the output event can report.

It runs in a worker thread pool, so it touches no process-wide state: not ``Image.MAX_IMAGE_PIXELS``
(another thread, or another library in the process, relies on it) and not the ``warnings`` filters
(``warnings.catch_warnings`` is not thread-safe). Instead the limit it applies is the smaller of the
caller's ``max_pixels`` and Pillow's own ``MAX_IMAGE_PIXELS``, so any image for which Pillow would only
emit a ``DecompressionBombWarning`` is rejected as an error here.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Literal

from PIL import Image, UnidentifiedImageError

DecodeStatus = Literal["unsupported_format", "decompression_bomb", "decode_error"]

#: Background that transparent product shots (PNG/WebP/GIF cut-outs) are composited onto. Dropping the
#: alpha channel instead would show whatever colour the transparent pixels happen to hold, often black.
_BACKGROUND = (255, 255, 255)


#: EXIF orientation tag value -> the transpose that puts the picture upright (what ``ImageOps.exif_transpose``
#: does, applied to the converted copy so that the image is not copied twice).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112


class ImageRejected(Exception):
    """The bytes are not an image this service will decode; ``status`` goes into the output event."""

    def __init__(self, status: DecodeStatus, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status: DecodeStatus = status
        self.reason = reason

    def __reduce__(self) -> tuple[type[ImageRejected], tuple[DecodeStatus, str]]:
        return (type(self), (self.status, self.reason))


def pixel_limit(max_pixels: int) -> int:
    """The limit actually applied: never looser than Pillow's global one, which we must not disable."""
    global_limit = Image.MAX_IMAGE_PIXELS
    return max_pixels if global_limit is None else min(max_pixels, global_limit)


def decode_image(
    data: bytes,
    *,
    allowed_formats: Sequence[str],
    max_pixels: int,
    draft_size: tuple[int, int] | None,
) -> Image.Image:
    """Decode ``data`` into a fully loaded RGB image, or raise :class:`ImageRejected`.

    ``allowed_formats`` are Pillow format names (``"JPEG"``, ``"PNG"``...); only their plugins get to
    parse the bytes. ``max_pixels`` (width x height) is checked on the header, before any pixel buffer
    is allocated. ``draft_size`` lets a JPEG decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, much
    faster than decoding full size and resizing): the result is the smallest of those scales that still
    covers ``draft_size`` in both dimensions, so the model's preprocessing always downsamples. Every other
    format (PNG, WebP, GIF) decodes at full size, then is reduced at once by the largest integer factor
    that still covers ``draft_size`` (a box filter), so no full-size picture outlives this call: a burst of
    6000 x 6000 PNGs costs 2 decode threads' worth of full-size pixels, not one per event in flight. EXIF
    orientation is applied, transparency is composited onto white.
    """
    formats = [f.upper() for f in allowed_formats]
    limit = pixel_limit(max_pixels)
    try:
        opened = Image.open(io.BytesIO(data), formats=formats)
    except UnidentifiedImageError as exc:
        raise ImageRejected("unsupported_format", f"not one of {', '.join(formats)}") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Error: over twice Pillow's global limit. Warning: only when someone turned the warning into an
        # error with a warnings filter; either way the image is a bomb by our own limit too.
        raise ImageRejected("decompression_bomb", str(exc)) from exc
    except Exception as exc:  # a plugin choking on a corrupt header raises almost anything
        raise ImageRejected("decode_error", f"cannot read header: {type(exc).__name__}: {exc}") from exc

    with opened as im:
        _check_pixels(im.size, limit)
        if draft_size is not None and im.format == "JPEG":
            im.draft("RGB", draft_size)
        try:
            im.load()
            _check_pixels(im.size, limit)  # a GIF's first frame may be larger than its logical screen
            rgb = _to_rgb(im)
            if draft_size is not None:
                rgb = reduce_to_cover(rgb, draft_size)
            transpose = _ORIENTATION_TRANSPOSE.get(_orientation(im))
            if transpose is not None:
                rgb = rgb.transpose(transpose)
        except ImageRejected:
            raise
        except Image.DecompressionBombError as exc:
            raise ImageRejected("decompression_bomb", str(exc)) from exc
        except Exception as exc:  # truncated data, corrupt scans, bad EXIF...
            raise ImageRejected("decode_error", f"{type(exc).__name__}: {exc}") from exc
    return rgb


def reduce_to_cover(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``im`` shrunk by the largest integer factor that keeps it at least ``size`` in both dimensions."""
    factor = min(im.width // max(1, size[0]), im.height // max(1, size[1]))
    return im.reduce(factor) if factor >= 2 else im


def _check_pixels(size: tuple[int, int], limit: int) -> None:
    """Raise ``decompression_bomb`` when ``size`` has more pixels than ``limit``."""
    width, height = size
    if width * height > limit:
        pixels = width * height
        raise ImageRejected("decompression_bomb", f"{width}x{height} = {pixels} pixels exceeds {limit}")


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1 = upright). A corrupt EXIF block is not worth losing the image over."""
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:
        return 1


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any mode to RGB, flattening transparency onto a white background."""
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, _BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if im.mode == "RGB":
        return im.copy()  # detach from the file object that is about to be closed
    return im.convert("RGB")
