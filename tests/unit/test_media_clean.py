"""The image cleaner: pixels cross, metadata never does; what cannot be cleaned is refused."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from bridge.media.clean import THUMBNAIL_BOX, Unclean, clean_image, thumbnail
from tests.media_samples import GPS_IFD, has_metadata, jpeg_with_exif, photo, png_with_text

SECRETS = [b"Alice", b"Canon", b"2024:05:06", b"secret-comment", b"48.8", b"Exif", b"tEXt",
           b"iTXt", b"zTXt", b"XML:com.adobe.xmp", b"icc-profile-name"]


def assert_clean(data: bytes) -> None:
    for secret in SECRETS:
        assert secret not in data, secret
    assert has_metadata(data) == []


def test_the_fixtures_really_carry_the_metadata():
    jpeg, png = jpeg_with_exif(), png_with_text()
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.getexif().get_ifd(GPS_IFD)[1] == "N" and image.getexif()[0x013B] == "Alice"
    with Image.open(io.BytesIO(png)) as image:
        assert image.text["Author"] == "Alice" and image.text["Comment"] == "secret-comment"
    assert b"Alice" in jpeg and b"tEXt" in png and b"zTXt" in png and b"iTXt" in png
    assert has_metadata(jpeg) and has_metadata(png)


def test_jpeg_exif_gps_camera_date_comment_and_icc_are_gone():
    clean = clean_image(jpeg_with_exif(), max_pixels=10_000)
    assert (clean.mimetype, clean.width, clean.height) == ("image/jpeg", 64, 48)
    assert_clean(clean.data)
    with Image.open(io.BytesIO(clean.data)) as image:
        assert image.format == "JPEG"
        assert dict(image.getexif()) == {} and "icc_profile" not in image.info
        assert "comment" not in image.info and "exif" not in image.info
        assert image.getpixel((32, 24))[0] > 150  # the pixels did cross


def test_png_text_chunks_are_gone_and_transparency_kept():
    clean = clean_image(png_with_text(), max_pixels=10_000)
    assert (clean.mimetype, clean.width, clean.height) == ("image/png", 40, 30)
    assert_clean(clean.data)
    with Image.open(io.BytesIO(clean.data)) as image:
        assert image.text == {} and image.mode == "RGBA"
        assert image.getpixel((5, 5)) == (10, 20, 30, 128)


def test_orientation_is_applied_then_dropped():
    # Orientation 6: the viewer rotates 90° clockwise; the marker block moves top-right.
    clean = clean_image(jpeg_with_exif(orientation=6), max_pixels=10_000)
    assert (clean.width, clean.height) == (48, 64)
    with Image.open(io.BytesIO(clean.data)) as image:
        assert 0x0112 not in image.getexif()
        r, g, b = image.getpixel((44, 3))
        assert g > 150 and r < 100


@pytest.mark.parametrize("fmt, mimetype", [("GIF", "image/png"), ("WEBP", "image/png")])
def test_other_formats_become_png(fmt, mimetype):
    out = io.BytesIO()
    photo().save(out, fmt)
    assert clean_image(out.getvalue(), max_pixels=10_000).mimetype == mimetype


def test_too_many_pixels_is_refused_before_decoding():
    # A tiny file that would decode to 100 megapixels: refused from its header.
    out = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(out, "PNG")
    assert len(out.getvalue()) < 100_000
    with pytest.raises(Unclean) as refused:
        clean_image(out.getvalue(), max_pixels=50_000_000)
    assert refused.value.args == ("media_too_big",)
    with pytest.raises(Unclean) as refused:
        clean_image(jpeg_with_exif(), max_pixels=64 * 48 - 1)
    assert refused.value.args == ("media_too_big",)


def test_pillow_bomb_guard_is_refused_as_too_big(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow's own guard trips first
    with pytest.raises(Unclean) as refused:
        clean_image(jpeg_with_exif(), max_pixels=10_000)
    assert refused.value.args == ("media_too_big",)


@pytest.mark.parametrize("data", [
    b"", b"not an image at all", b"%PDF-1.4\n", jpeg_with_exif()[:200],
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
])
def test_unknown_or_broken_bytes_are_refused(data):
    with pytest.raises(Unclean) as refused:
        clean_image(data, max_pixels=10_000)
    assert refused.value.args == ("media_unreadable",)


def test_formats_pillow_reads_but_clients_do_not_send_are_refused():
    out = io.BytesIO()
    photo().save(out, "TIFF")  # TIFF carries its own tags: not accepted as an image
    with pytest.raises(Unclean):
        clean_image(out.getvalue(), max_pixels=10_000)


def test_thumbnail_made_from_the_clean_image_only_when_large():
    assert thumbnail(clean_image(jpeg_with_exif(), max_pixels=10_000)) is None
    big = clean_image(jpeg_with_exif(size=(1600, 1000)), max_pixels=2_000_000)
    small = thumbnail(big)
    assert small is not None and small.mimetype == "image/jpeg"
    assert (small.width, small.height) == (800, 500)
    assert small.width <= THUMBNAIL_BOX[0] and small.height <= THUMBNAIL_BOX[1]
    assert_clean(small.data)
