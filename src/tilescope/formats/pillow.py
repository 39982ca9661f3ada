"""Plain rasters through Pillow: PNG, JPEG, BMP, GIF and WebP (TIFFs go to the TIFF drivers).

One Scene with one level whose single piece is the whole file: the engine decodes it once (the
shared cache keeps it, or the slide keeps it when it is larger than the cache allows), refuses it
above ``max_decode_pixels`` before decoding, and serves downscaled reads from it by the box filter.
Palette, bilevel and CMYK images are converted to RGB(A) or greyscale; animated GIF/WebP give
their first frame.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from ..codecs import Codec
from ..engine import GridPlane, Layout
from ..errors import TooLargeError
from ..model import Scene, Slide, make_levels
from ..source import PieceList, SourceFile, local

if TYPE_CHECKING:
    from ..engine import Options
    from ..source import ByteSource
    from . import Probe

NAME = "Pillow"
OPENSLIDE_VENDOR = None  # openslide reads these as ImageSlide, not as a vendor's slide

_COMPRESSION = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp", "GIF": "lzw", "BMP": "none"}
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"GIF87a", b"GIF89a")
# Pillow mode -> (mode converted to, dtype, channel names)
_MODES = {"1": ("L", np.uint8, ("Y",)), "L": ("L", np.uint8, ("Y",)), "LA": ("LA", np.uint8, ("Y", "A")),
          "P": ("RGB", np.uint8, ("R", "G", "B")), "PA": ("RGBA", np.uint8, ("R", "G", "B", "A")),
          "RGB": ("RGB", np.uint8, ("R", "G", "B")), "RGBA": ("RGBA", np.uint8, ("R", "G", "B", "A")),
          "RGBX": ("RGB", np.uint8, ("R", "G", "B")), "CMYK": ("RGB", np.uint8, ("R", "G", "B")),
          "YCbCr": ("RGB", np.uint8, ("R", "G", "B")), "LAB": ("RGB", np.uint8, ("R", "G", "B")),
          "HSV": ("RGB", np.uint8, ("R", "G", "B")), "I;16": ("I;16", np.uint16, ("Y",)),
          "I;16L": ("I;16", np.uint16, ("Y",)), "I;16B": ("I;16", np.uint16, ("Y",)),
          "I": ("I", np.int32, ("Y",)), "F": ("F", np.float32, ("Y",))}


class WholeFile(PieceList):
    """One piece: the file's bytes."""

    def __init__(self):
        super().__init__(1, "image")

    def fetch(self, source: ByteSource, index: int) -> bytes:
        return source.pread(0, source.size)


def detect(probe: Probe) -> bool:
    h = probe.head
    return h.startswith(_MAGIC) or (h[:4] == b"RIFF" and h[8:12] == b"WEBP")


def _image(data, path: str):
    from PIL import Image  # loaded when a plain image is opened, not by every tilescope import

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    except Image.DecompressionBombError as e:
        raise TooLargeError(f"{path}: {e} (Pillow's PIL.Image.MAX_IMAGE_PIXELS)") from None


def open(probe: Probe, options: Options) -> Slide:
    path = probe.path
    with _image(path if local(probe.source) else SourceFile(probe.source), path) as im:
        fmt, mode, (w, h) = im.format, im.mode, im.size
        icc = im.info.get("icc_profile")
        frames = getattr(im, "n_frames", 1)
        dpi = im.info.get("dpi")
    target, dtype, names = _MODES.get(mode, ("RGB", np.uint8, ("R", "G", "B")))

    def decode(data: Any, ph: int, pw: int, out: np.ndarray | None) -> np.ndarray:
        with _image(data, path) as im:
            if im.mode != target:
                im = im.convert(target)
            a = np.asarray(im)
        return a.reshape(a.shape[0], a.shape[1], -1).astype(dtype, copy=False)

    codec = Codec(f"pillow-{fmt.lower()}", np.dtype(dtype), len(names), decode)
    plane = GridPlane(WholeFile(), codec, (w, h), (w, h))
    layout = Layout.single(plane)
    props = {"format": fmt, "mode": mode, "frames": frames}
    if dpi:  # recorded, not turned into mpp: 72 or 96 dpi is a screen default, not a measurement
        props["dpi"] = [float(v) for v in dpi[:2]]
    slide = Slide(probe.source, NAME, options, vendor=fmt.lower(), properties={"pillow": props},
                  icc_profile=icc)
    scene = Scene(slide, name="main", levels=make_levels([((w, h), (w, h), layout)]), channel_names=names,
                  dtype=dtype, compression=_COMPRESSION.get(fmt, fmt.lower()), compression_raw=fmt,
                  brightfield=len(names) >= 3)
    slide.set_contents([scene], {})
    return slide
