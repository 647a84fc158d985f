"""The image cleaner: decode with Pillow, re-encode the pixels alone.

Nothing of the original file survives but its pixels (orientation applied): no EXIF (GPS,
camera, dates), XMP, IPTC, ICC profile, comments or PNG text chunks, because the output is a
new image made from raw pixel bytes and saved with no extra info. Pure (bytes in, bytes out);
CPU-bound, so callers run it in a thread.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

THUMBNAIL_BOX = (800, 600)  # thumbnails only for images larger than this (as clients do)
JPEG_QUALITY = 90
_INPUT_FORMATS = ("JPEG", "PNG", "GIF", "WEBP")  # what clients send as images and stickers


class Unclean(Exception):
    """The image cannot be cleaned; args[0] is the refusal reason (a message key suffix)."""


@dataclass(frozen=True)
class CleanImage:
    data: bytes
    mimetype: str
    width: int
    height: int


def clean_image(data: bytes, max_pixels: int) -> CleanImage:
    """The image re-encoded from its pixels: JPEG stays JPEG, anything else becomes PNG."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=_INPUT_FORMATS) as source:
                width, height = source.size  # from the header, before any pixel is decoded
                if width * height > max_pixels or width < 1 or height < 1:
                    raise Unclean("media_too_big")
                fmt = source.format
                ImageOps.exif_transpose(source, in_place=True)  # orientation applied
                pixels = _plain_mode(source)
                # A fresh image holding only the pixels: its info dict (exif, icc_profile,
                # text, ...) is empty, so the encoder has nothing to write but pixels.
                fresh = Image.new(pixels.mode, pixels.size)
                fresh.paste(pixels)
                del pixels
    except Unclean:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Unclean("media_too_big") from None
    except Exception:  # noqa: BLE001 - hostile files raise all sorts (OSError, struct.error,
        # SyntaxError, ValueError, MemoryError...): whatever it is, the image is refused.
        raise Unclean("media_unreadable") from None
    if fmt == "JPEG" and fresh.mode == "RGB":
        return _encode(fresh, "JPEG")
    return _encode(fresh, "PNG")


def thumbnail(image: CleanImage) -> CleanImage | None:
    """A smaller copy for clients' previews, made from the cleaned image; None when the
    image is small enough to be its own preview."""
    if image.width <= THUMBNAIL_BOX[0] and image.height <= THUMBNAIL_BOX[1]:
        return None
    with Image.open(io.BytesIO(image.data)) as clean:
        clean.thumbnail(THUMBNAIL_BOX)  # our own clean output: nothing else in it
        small = Image.new(clean.mode, clean.size)
        small.paste(clean)
    return _encode(small, "JPEG" if image.mimetype == "image/jpeg" else "PNG")


def _plain_mode(image: Image.Image) -> Image.Image:
    """RGB, or RGBA when the image has transparency (palettes, CMYK, 16-bit converted)."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    wanted = "RGBA" if has_alpha else "RGB"
    return image if image.mode == wanted else image.convert(wanted)


def _encode(image: Image.Image, fmt: str) -> CleanImage:
    out = io.BytesIO()
    if fmt == "JPEG":
        image.save(out, "JPEG", quality=JPEG_QUALITY)
    else:
        # zlib's fastest level: about 3x faster than the default on photos (bench/media.py)
        # for about 10% more bytes; the bridge relays while the user waits.
        image.save(out, "PNG", compress_level=1)
    return CleanImage(out.getvalue(), f"image/{fmt.lower()}", image.width, image.height)

