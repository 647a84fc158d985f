"""Cost of cleaning one image, in process: bridge/media/clean.py's clean_image and thumbnail.

Photo-like test images (smooth gradients with noise, so JPEG sizes are realistic) carrying
EXIF GPS, built with Pillow; the same cleaner the bridge runs in a thread for each relayed
image. No homeserver: the download and upload are network costs, measured by bench/relay.py
for messages in general.

    python bench/media.py [-n 20] [--megapixels 12] [--json FILE]

Prints median and p95 per image for a JPEG and a PNG of that size, and the sizes in and out.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from bridge.lab import figures  # noqa: E402
from bridge.media.clean import clean_image, thumbnail  # noqa: E402

GPS_IFD = 0x8825


def photo(megapixels: float, fmt: str) -> bytes:
    width = int((megapixels * 1_000_000 * 4 / 3) ** 0.5)
    height = int(width * 3 / 4)
    gradient = Image.linear_gradient("L").resize((width, height))
    noise = Image.effect_noise((width, height), 40)
    image = Image.merge("RGB", (gradient, noise, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    exif = Image.Exif()
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (48.0, 51.0, 29.0)})
    out = io.BytesIO()
    image.save(out, fmt, exif=exif.tobytes(), **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def measure(data: bytes, n: int) -> dict:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        clean = clean_image(data, max_pixels=500_000_000)
        thumbnail(clean)
        samples.append((time.perf_counter() - start) * 1000)
    return {**figures.summary(samples), "bytes_in": len(data), "bytes_out": len(clean.data)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--megapixels", type=float, default=12)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {"megapixels": args.megapixels}
    for fmt in ("JPEG", "PNG"):
        result = measure(photo(args.megapixels, fmt), args.n)
        results[fmt.lower()] = result
        print(f"{fmt} {args.megapixels} MP: median {result['median_ms']} ms, p95 "
              f"{result['p95_ms']} ms (n={result['n']}), {result['bytes_in']} -> "
              f"{result['bytes_out']} bytes")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
