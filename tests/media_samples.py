"""Images that carry metadata, built with Pillow, for the cleaner's tests and the e2e suite."""
from __future__ import annotations

import io

from PIL import Image, PngImagePlugin

GPS_IFD = 0x8825


def photo(size=(64, 48), colour=(200, 30, 40)) -> Image.Image:
    image = Image.new("RGB", size, colour)
    image.paste((0, 255, 0), (0, 0, 8, 8))  # a marker block, to check orientation
    return image


def jpeg_with_exif(orientation: int = 1, size=(64, 48), artist: str = "Alice",
                   comment: bytes = b"secret-comment") -> bytes:
    """A JPEG with EXIF GPS (Paris), camera, date, artist, a comment and an ICC profile."""
    exif = Image.Exif()
    exif[0x010F] = "Canon"  # Make
    exif[0x013B] = artist  # Artist
    exif[0x0132] = "2024:05:06 07:08:09"  # DateTime
    exif[0x0112] = orientation
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)})
    out = io.BytesIO()
    photo(size).save(out, "JPEG", exif=exif.tobytes(), comment=comment,
                     icc_profile=b"icc-profile-name" * 4)
    return out.getvalue()


def png_with_text(author: str = "Alice", size=(40, 30)) -> bytes:
    """An RGBA PNG with tEXt, iTXt, zTXt and XMP chunks, and an (empty) eXIf chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", author)
    info.add_itxt("Comment", "secret-comment", lang="en")
    info.add_text("Software", "Canon", zip=True)
    info.add_text("XML:com.adobe.xmp", f"<x:xmpmeta>{author}</x:xmpmeta>")
    image = Image.new("RGBA", size, (10, 20, 30, 128))
    out = io.BytesIO()
    image.save(out, "PNG", pnginfo=info, exif=Image.Exif().tobytes())
    return out.getvalue()


def has_metadata(data: bytes) -> list[str]:
    """What metadata an image still carries, as Pillow sees it (empty when clean)."""
    found = []
    with Image.open(io.BytesIO(data)) as image:
        if dict(image.getexif()):
            found.append("exif")
        for key in ("exif", "icc_profile", "comment", "xmp", "photoshop"):
            if key in image.info:
                found.append(key)
        if getattr(image, "text", None):
            found.append("text chunks")
    for chunk in (b"tEXt", b"iTXt", b"zTXt", b"eXIf", b"Exif\x00", b"http://ns.adobe.com/xap"):
        if chunk in data:
            found.append(repr(chunk))
    return found
