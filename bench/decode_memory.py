"""Peak memory of decoding one big 16-bit PNG: converted whole (as before issue 24) and by
`cxr.data.untrusted_images.decode_grey` (16-bit data brought to 8 bits a strip of rows at a time).

Each measurement runs in a fresh process: Linux's peak RSS (VmHWM) is reset, the image decoded to
8-bit grey, and the rise of the peak printed. The PNG is black and written row by row (a few
hundred KB), as a hostile request's would be.

    python bench/decode_memory.py [--sides 4000 6000 7000]
"""

from __future__ import annotations

import argparse
import io
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def peak_rss() -> int:
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("VmHWM")).split()[1]) * 1024


def measure(side: int, way: str) -> None:
    """In this process: decode a side x side 16-bit PNG `way` (whole | strips); print the peak's rise."""
    import numpy as np
    from PIL import Image

    from cxr.data.images import bit_depth
    from cxr.data.untrusted_images import decode_grey
    from tests.test_untrusted_images import png_16bit

    data = png_16bit(side, side)
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := RSS now
    before = peak_rss()
    if way == "whole":
        with Image.open(io.BytesIO(data)) as img:
            pixels = np.asarray(img)
            scale = np.float32(255.0 / (2 ** bit_depth(pixels) - 1))
            np.rint(pixels.astype(np.float32) * scale).clip(0, 255).astype(np.uint8)
    else:
        decode_grey(data, "bench", max_pixels=side * side)
    print(f"{side} x {side} ({side * side / 1e6:.0f} M px), {way}: {(peak_rss() - before) / 1e6:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[4000, 6000, 7000])
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # side way: a measuring child
    args = parser.parse_args()
    if args.one:
        measure(int(args.one[0]), args.one[1])
        return
    print(f"{platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}")
    for side in args.sides:
        for way in ("whole", "strips"):
            subprocess.run([sys.executable, __file__, "--one", str(side), way], cwd=REPO, check=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
