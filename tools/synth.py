"""Synthetic slides written with tifffile (container) and imagecodecs (codecs).

Realistic enough that decode cost and pixel statistics resemble real slides: H&E-like tissue
(Beer-Lambert mix of haematoxylin nuclei and eosin stroma) in islands on a noisy near-white
background, or fluorescence blobs per channel. Used by the tests, ``make demo`` and benchmarks.

    python -m tools.synth svs OUT.svs --width 40000 --height 30000
    python -m tools.synth ome OUT.ome.tiff --width 4000 --height 3000 --channels 3 --z 2 --t 2
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
from collections.abc import Callable, Iterator, Sequence

import imagecodecs
import numpy as np
import tifffile
from PIL import Image, ImageDraw, ImageFilter

TILE = 256
APERIO_HEADER = "Aperio Image Library v12.0.15"
_HEMA = np.array([0.650, 0.704, 0.286], np.float32)  # Ruifrok & Johnston stain vectors
_EOSIN = np.array([0.072, 0.990, 0.105], np.float32)
_GLASS = np.array([242.0, 240.0, 244.0], np.float32)


# -- content ------------------------------------------------------------------------------------
def _smooth(rng, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-variance noise correlated over ~``scale`` pixels (float32, shape (h, w))."""
    h, w = shape
    sh, sw = max(2, int(h / scale) + 2), max(2, int(w / scale) + 2)
    small = Image.fromarray(rng.standard_normal((sh, sw), dtype=np.float32), "F")
    big = np.asarray(small.resize((int(sw * scale), int(sh * scale)), Image.Resampling.BICUBIC))[:h, :w]
    big = big - big.mean()
    return big / (big.std() + 1e-6)


def tissue_pool(seed: int = 0, size: int = 2048) -> np.ndarray:
    """A (size, size, 3) uint8 patch of H&E-like tissue texture."""
    rng = np.random.default_rng(seed)
    eosin = 0.55 + 0.22 * _smooth(rng, (size, size), 48) + 0.12 * _smooth(rng, (size, size), 10) \
        + 0.06 * _smooth(rng, (size, size), 3)
    nuclei = Image.new("L", (size, size))
    draw = ImageDraw.Draw(nuclei)
    cell = _smooth(rng, (size, size), 160)
    n = size * size // 260
    xs, ys = rng.integers(0, size, n), rng.integers(0, size, n)
    keep = rng.random(n) < 1 / (1 + np.exp(-1.6 * cell[ys, xs]))
    for x, y, r, e, v in zip(xs[keep].tolist(), ys[keep].tolist(), rng.uniform(3.5, 8.5, n).tolist(),
                             rng.uniform(0.55, 1.0, n).tolist(), rng.integers(110, 230, n).tolist(),
                             strict=False):
        draw.ellipse((x - r, y - r * e, x + r, y + r * e), fill=v)
    haem = np.asarray(nuclei.filter(ImageFilter.GaussianBlur(1.1)), np.float32) / 140.0
    haem = haem * (1 + 0.35 * _smooth(rng, (size, size), 1.5)) + 0.12 + 0.05 * _smooth(rng, (size, size), 5)
    holes = np.clip((_smooth(rng, (size, size), 90) - 1.3) * 3.0, 0, 1)
    amount = 1 - holes
    od = (np.clip(haem, 0, None) * amount)[..., None] * (_HEMA * 1.05) \
        + (np.clip(eosin, 0.02, None) * amount)[..., None] * (_EOSIN * 0.62)
    rgb = _GLASS * np.exp(-od) + 2.2 * rng.standard_normal((size, size, 3), dtype=np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


class Tissue:
    """Level-0 tiles of an H&E-like slide of any size, made on demand (the slide never sits in
    memory whole): tissue islands cut from a texture pool, blended into background."""

    def __init__(self, width: int, height: int, seed: int = 0, tile: int = TILE):
        rng = np.random.default_rng(seed)
        self.width, self.height, self.tile_size = width, height, tile
        self.pool = tissue_pool(seed)
        self.background = [np.clip(_GLASS + 1.4 * rng.standard_normal((tile, tile, 3), dtype=np.float32),
                                   0, 255).astype(np.uint8) for _ in range(8)]
        self.nx, self.ny = -(-width // tile), -(-height // tile)
        # tissue probability per 16 px, with the slide border kept clear
        mh, mw = self.ny * tile // 16 + 2, self.nx * tile // 16 + 2
        v = _smooth(rng, (mh, mw), max(mh, mw) / 6) + 0.4 * _smooth(rng, (mh, mw), max(mh, mw) / 24)
        yy, xx = np.mgrid[0:mh, 0:mw].astype(np.float32)
        edge = np.maximum(np.abs(xx / mw - 0.5), np.abs(yy / mh - 0.5)) * 2
        v -= 2.0 * np.clip(edge - 0.75, 0, None) / 0.25
        self.mask = np.clip((v - np.quantile(v, 0.4)) * 4.0, 0, 1).astype(np.float32)
        span = self.pool.shape[0] - 4 * tile  # 4x4-tile blocks of continuous texture
        self.offsets = rng.integers(0, span, size=(-(-self.ny // 4), -(-self.nx // 4), 2))

    def tile(self, ty: int, tx: int) -> np.ndarray:
        t = self.tile_size
        oy, ox = self.offsets[ty // 4, tx // 4]
        py, px = oy + (ty % 4) * t, ox + (tx % 4) * t
        tissue = self.pool[py:py + t, px:px + t]
        bg = self.background[(ty * 7 + tx * 13) % len(self.background)]
        s = t // 16
        m = self.mask[ty * s:ty * s + s + 1, tx * s:tx * s + s + 1]
        if m.max() <= 0:
            out = bg.copy()
        elif m.min() >= 1:
            out = tissue.copy()
        else:
            alpha = np.asarray(Image.fromarray(m, "F").resize((t, t), Image.Resampling.BILINEAR))[..., None]
            out = (bg + (tissue.astype(np.float32) - bg) * alpha).astype(np.uint8)
        # beyond the image edge scanners pad with white
        out[max(0, self.height - ty * t):] = 255
        out[:, max(0, self.width - tx * t):] = 255
        return out

    def tiles(self) -> Iterator[np.ndarray]:
        for ty in range(self.ny):
            for tx in range(self.nx):
                yield self.tile(ty, tx)

    def array(self) -> np.ndarray:
        """The whole level 0 (only for small slides)."""
        t = self.tile_size
        out = np.empty((self.ny * t, self.nx * t, 3), np.uint8)
        for ty in range(self.ny):
            for tx in range(self.nx):
                out[ty * t:(ty + 1) * t, tx * t:(tx + 1) * t] = self.tile(ty, tx)
        return out[:self.height, :self.width]


def area_downsample(a: np.ndarray, f: int) -> np.ndarray:
    """Mean over f x f blocks (edge blocks partial), rounded; the reference area filter."""
    h, w = a.shape[:2]
    W = -(-w // f) * f
    rest = a.shape[2:]
    out = np.empty((-(-h // f), W // f, *rest), a.dtype)
    band = f * max(1, (1 << 23) // (W * int(np.prod(rest)) * f))  # float64 band of <= 64 MiB
    for y0 in range(0, h, band):
        part = a[y0:y0 + band]
        ph = part.shape[0]
        H = -(-ph // f) * f
        pad = np.pad(part.astype(np.float64), ((0, H - ph), (0, W - w)) + ((0, 0),) * len(rest))
        cnt = np.pad(np.ones((ph, w)), ((0, H - ph), (0, W - w)))
        s = pad.reshape(H // f, f, W // f, f, *rest).sum(axis=(1, 3))
        n = cnt.reshape(H // f, f, W // f, f).sum(axis=(1, 3)).reshape(H // f, W // f, *([1] * len(rest)))
        out[y0 // f:y0 // f + H // f] = np.rint(s / n)
    return out


# -- encoders -----------------------------------------------------------------------------------
def _jpeg_segments(b: bytes):
    i = 2
    while True:
        marker, length = b[i + 1], (b[i + 2] << 8) | b[i + 3]
        yield marker, i, i + 2 + length
        if marker == 0xDA:
            return
        i += 2 + length


class AbbreviatedJpeg:
    """Encode tiles as Aperio does: shared tables in JPEGTables, abbreviated streams per tile."""

    def __init__(self, quality: int = 80, rgb: bool = False, tile: int = TILE):
        self.quality, self.rgb = quality, rgb
        self.tables, _ = self._split(self._encode(np.zeros((tile, tile, 3), np.uint8)))
        self.jpegtables = b"\xff\xd8" + self.tables + b"\xff\xd9"

    def _encode(self, rgb: np.ndarray) -> bytes:
        return imagecodecs.jpeg8_encode(rgb, level=self.quality, colorspace="RGB",
                                        outcolorspace="RGB" if self.rgb else "YCBCR",
                                        subsampling="444" if self.rgb else "420", optimize=False)

    @staticmethod
    def _split(b: bytes) -> tuple[bytes, bytes]:
        tables, keep, end = [], [b"\xff\xd8"], 0
        for marker, s, e in _jpeg_segments(b):
            if marker in (0xDB, 0xC4):
                tables.append(b[s:e])
            elif marker != 0xE0:  # drop JFIF; keep Adobe APP14, which says R, G, B are untransformed
                keep.append(b[s:e])
            end = e
        return b"".join(tables), b"".join(keep) + b[end:]

    def __call__(self, rgb: np.ndarray) -> bytes:
        tables, body = self._split(self._encode(rgb))
        if tables != self.tables:
            raise RuntimeError("JPEG tables differ between tiles")
        return body


def _ycbcr(rgb: np.ndarray) -> np.ndarray:
    f = rgb.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    out = np.stack([0.299 * r + 0.587 * g + 0.114 * b,
                    128 - 0.168736 * r - 0.331264 * g + 0.5 * b,
                    128 + 0.5 * r - 0.418688 * g - 0.081312 * b], axis=-1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _tile_encoder(compression: str, quality: int):
    """(tifffile write kwargs, encode(tile) -> bytes or None when tifffile encodes itself)."""
    if compression in ("jpeg", "jpeg-rgb"):
        enc = AbbreviatedJpeg(quality, rgb=compression == "jpeg-rgb")
        if compression == "jpeg":
            return dict(compression=7, jpegtables=enc.jpegtables, photometric="rgb", subsampling=(2, 2)), enc
        # Photometric RGB: tiles hold untransformed R, G, B (an Adobe marker says so), no subsampling
        return dict(compression=7, jpegtables=enc.jpegtables, photometric="rgb", subsampling=(1, 1),
                    compressionargs={"outcolorspace": "rgb"}), enc
    if compression == "jpeg2000-rgb":  # Aperio 33005: J2K with its own colour transform
        return dict(compression=33005, photometric="rgb"), \
            lambda t: imagecodecs.jpeg2k_encode(t, level=quality, codecformat="j2k")
    if compression == "jpeg2000-ycbcr":  # Aperio 33003: YCbCr components, no J2K transform
        return dict(compression=33003, photometric="rgb"), \
            lambda t: imagecodecs.jpeg2k_encode(_ycbcr(t), level=quality, codecformat="j2k", mct=False)
    return dict(compression=compression, photometric="rgb"), None


def _write_tiles(tw, tiles: Iterator[np.ndarray], shape, encoder, kw, tile, workers, **extra):
    if encoder is None:
        tw.write(tiles, shape=shape, dtype=np.uint8, tile=(tile, tile), **kw, **extra)
        return
    tw.write(_ordered_map(encoder, tiles, workers), shape=shape, dtype=np.uint8, tile=(tile, tile),
             **kw, **extra)


def _ordered_map(fn, items: Iterator, workers: int, window: int = 256) -> Iterator:
    """``map(fn, items)`` on a thread pool, in order, with at most ``window`` items in flight."""
    from collections import deque

    with cf.ThreadPoolExecutor(workers) as ex:
        pending: deque = deque()
        for item in items:
            pending.append(ex.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _array_tiles(a: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    h, w = a.shape[:2]
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            t = np.full((tile, tile, 3), 255, np.uint8)
            part = a[y:y + tile, x:x + tile]
            t[:part.shape[0], :part.shape[1]] = part
            yield t


# -- writers ------------------------------------------------------------------------------------
def write_svs(path, width: int = 4000, height: int = 3000, *, tile: int = TILE,
              downsamples: Sequence[int] = (1, 4, 16), compression: str = "jpeg", quality: int = 80,
              bigtiff: bool = False, mpp: float | str = 0.499, magnification: float | str = 20,
              seed: int = 0, associated: Sequence[str] = ("thumbnail", "label", "macro"),
              description: str | None = None, icc_profile: bytes | None = None,
              workers: int | None = None) -> str:
    """An Aperio SVS: tiled pyramid (``downsamples`` of level 0, integer multiples of the first
    after 1), stripped thumbnail, LZW label and JPEG macro pages, Aperio ImageDescription.

    compression: "jpeg" (YCbCr 4:2:0, shared JPEGTables), "jpeg-rgb" (Photometric RGB, as older
    Aperio files), "jpeg2000-rgb" (33005), "jpeg2000-ycbcr" (33003), or a tifffile name ("lzw",
    "none", "zlib"). ``description`` replaces the level-0 description verbatim; ``icc_profile``
    is embedded in level 0 (InterColorProfile).
    """
    path = os.fspath(path)
    workers = workers or os.cpu_count() or 2
    src = Tissue(width, height, seed, tile)
    kw, enc = _tile_encoder(compression, quality)
    f1 = downsamples[1] if len(downsamples) > 1 else 8
    acc = np.empty((src.ny * tile // f1, src.nx * tile // f1, 3), np.uint8)

    def level0_tiles():
        for ty in range(src.ny):
            for tx in range(src.nx):
                t = src.tile(ty, tx)
                s = tile // f1
                acc[ty * s:(ty + 1) * s, tx * s:(tx + 1) * s] = area_downsample(t, f1)
                yield t

    codec_text = (f"JPEG/RGB Q={quality}" if compression.startswith("jpeg-") or compression == "jpeg"
                  else f"J2K/YUV16 Q={quality}" if "2000" in compression else "RAW")
    mpp_text = f"{mpp:.4f}" if isinstance(mpp, float) else str(mpp)

    def desc(w, h, extra=""):
        return (f"{APERIO_HEADER}\r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) {extra}"
                f"{codec_text}|AppMag = {magnification}|MPP = {mpp_text}")

    d0 = description if description is not None else (
        desc(width, height) + f"|StripeWidth = 2040|ScanScope ID = SYNTH01|Filename = synthetic|"
        f"Date = 01/01/26|Time = 12:00:00|Time Zone = GMT+0000|Left = 25.0|Top = 20.0|"
        f"OriginalWidth = {width}|OriginalHeight = {height}|Filmstrip = 0")
    common = dict(metadata=None, software=False)
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
        _write_tiles(tw, level0_tiles(), (height, width, 3), enc, kw, tile, workers, description=d0,
                     iccprofile=icc_profile, **common)
        base = acc[:height // f1, :width // f1]
        if "thumbnail" in associated:
            tw_ = 1024 if width >= height else max(1, round(1024 * width / height))
            th_ = max(1, round(height * tw_ / width))
            thumb = _resize(base, (tw_, th_))
            tw.write(thumb, photometric="rgb", compression="jpeg", compressionargs={"level": quality},
                     subsampling=(2, 2), rowsperstrip=16, description=f"{APERIO_HEADER}\r\n{width}x{height} "
                     f"-> {tw_}x{th_} - |AppMag = {magnification}|MPP = {mpp_text}", **common)
        prev, prev_f = base, f1
        for f in downsamples[1:]:
            lv = area_downsample(prev, f // prev_f) if f != prev_f else prev
            lw, lh = width // f, height // f
            lv = lv[:lh, :lw]
            _write_tiles(tw, _array_tiles(lv, tile), (lh, lw, 3), enc, kw, tile, workers,
                         description=desc(lw, lh, f"-> {lw}x{lh} "), **common)
            prev, prev_f = lv, f
        if "label" in associated:
            label = make_label()
            tw.write(label, photometric="rgb", compression="lzw", rowsperstrip=16, subfiletype=1,
                     description=f"{APERIO_HEADER}\r\nlabel {label.shape[1]}x{label.shape[0]}", **common)
        if "macro" in associated:
            macro = make_macro(prev)
            tw.write(macro, photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                     subsampling=(2, 2), rowsperstrip=16, subfiletype=9,
                     description=f"{APERIO_HEADER}\r\nmacro {macro.shape[1]}x{macro.shape[0]}", **common)
    return path


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize(size, Image.Resampling.BOX))


def make_label(w: int = 387, h: int = 463) -> np.ndarray:
    im = Image.new("RGB", (w, h), (250, 250, 250))
    d = ImageDraw.Draw(im)
    d.text((20, 40), "SYNTH-0001", fill=(0, 0, 0))
    d.text((20, 80), "H&E 20x", fill=(0, 0, 0))
    rng = np.random.default_rng(1)
    x = 30
    while x < w - 30:  # a barcode-like pattern
        bw = int(rng.integers(2, 6))
        if rng.random() < 0.5:
            d.rectangle((x, 180, x + bw - 1, 420), fill=(0, 0, 0))
        x += bw
    return np.asarray(im)


def make_macro(overview: np.ndarray, w: int = 1280, h: int = 431) -> np.ndarray:
    im = np.full((h, w, 3), 235, np.uint8)
    im[:, :330] = (200, 205, 210)
    im[35:395, 15:315] = _resize(make_label(), (300, 360))
    im[15:415, 370:1250] = _resize(overview, (880, 400))
    return im


def fluorescence(width: int, height: int, channels: int, *, z: int = 1, t: int = 1, dtype=np.uint16,
                 seed: int = 0) -> np.ndarray:
    """(t, c, z, h, w) blobs per channel that drift with z and t, on a dark background."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    peak = np.iinfo(dtype).max * 0.8 if dtype.kind in "ui" else 1.0
    out = np.empty((t, channels, z, height, width), dtype)
    for c in range(channels):
        im = Image.new("L", (width + 64, height + 64))
        d = ImageDraw.Draw(im)
        n = width * height // (900 * (c + 1))
        for x, y, r in zip(rng.integers(0, width + 64, n).tolist(), rng.integers(0, height + 64, n).tolist(),
                           rng.uniform(2, 9 + 4 * c, n).tolist(), strict=True):
            d.ellipse((x - r, y - r, x + r, y + r), fill=int(rng.integers(60, 255)))
        base = np.asarray(im.filter(ImageFilter.GaussianBlur(1.5 + c)), np.float32) / 255
        for ti in range(t):
            for zi in range(z):
                dx, dy = 3 * ti + zi, 2 * ti
                plane = base[dy:dy + height, dx:dx + width] * (1 - 0.15 * zi)
                noise = rng.standard_normal((height, width), dtype=np.float32) * 0.01
                out[ti, c, zi] = np.clip((plane + noise + 0.02) * peak, 0, peak).astype(dtype)
    return out


def write_ome(path, width: int = 2000, height: int = 1500, *, channels: int = 3, z: int = 1, t: int = 1,
              dtype=np.uint16, tile: int = TILE, levels: int = 3, compression: str = "zlib",
              channel_names: Sequence[str] | None = None, mpp: float = 0.325, z_step: float = 1.5,
              t_step: float = 2.0, seed: int = 0) -> str:
    """An OME-TIFF (BigTIFF) with TCZYX planes and a SubIFD pyramid halving each level."""
    path = os.fspath(path)
    data = fluorescence(width, height, channels, z=z, t=t, dtype=dtype, seed=seed)
    names = list(channel_names or ["DAPI", "FITC", "TRITC", "Cy5", "Cy7"][:channels])
    names += [f"Ch{i}" for i in range(len(names), channels)]
    meta = {"axes": "TCZYX", "Channel": {"Name": names}, "PhysicalSizeX": mpp, "PhysicalSizeY": mpp,
            "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm", "PhysicalSizeZ": z_step,
            "PhysicalSizeZUnit": "µm", "TimeIncrement": t_step, "TimeIncrementUnit": "s"}
    opts = dict(tile=(tile, tile), compression=compression, photometric="minisblack")
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(data, subifds=levels - 1, metadata=meta, **opts)
        level = data
        for _ in range(1, levels):
            level = area_downsample(level.transpose(3, 4, 0, 1, 2), 2).transpose(2, 3, 4, 0, 1)
            tw.write(level, subfiletype=1, metadata=None, **opts)
    return path


def write_tiff(path, width: int = 3000, height: int = 2000, *, tile: int | None = TILE,
               downsamples: Sequence[int] = (1, 2, 4), pyramid: str = "pages", compression: str = "zlib",
               bigtiff: bool = True, mpp: float | None = 0.25, seed: int = 0, planar: bool = False,
               predictor: bool = False) -> str:
    """A generic RGB TIFF: tiled (or stripped, ``tile=None``) pyramid as following pages or as
    SubIFDs (``pyramid="subifds"``); resolution tags in centimetres from ``mpp``."""
    path = os.fspath(path)
    base = Tissue(width, height, seed).array()
    opts = dict(compression=compression, photometric="rgb", metadata=None,
                planarconfig="separate" if planar else "contig")
    if predictor:
        opts["predictor"] = True
    if tile:
        opts["tile"] = (tile, tile)
    else:
        opts["rowsperstrip"] = 64
    if mpp:
        opts.update(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    levels = [base] + [area_downsample(base, f) for f in downsamples[1:]]
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
        for i, lv in enumerate(levels):
            a = np.moveaxis(lv, -1, 0) if planar else lv
            extra = {}
            if pyramid == "subifds":
                extra = {"subifds": len(levels) - 1} if i == 0 else {"subfiletype": 1}
            elif i:
                extra = {"subfiletype": 1}
            tw.write(a, **opts, **extra)
    return path


def _philips_attr(name: str, value, pmsvr: str = "IString") -> str:
    return f'<Attribute Name="{name}" Group="0x0000" Element="0x0000" PMSVR="{pmsvr}">{value}</Attribute>'


def philips_xml(level_sizes, spacing_mm: float, label_jpeg: bytes, macro_jpeg: bytes) -> str:
    """A Philips ``DPUfsImport`` XML document: DICOM-keyed attributes, one WSI ``DPScannedImage``
    with a ``PixelDataRepresentation`` per level (pixel spacing in mm, padded size), and label and
    macro ``DPScannedImage``s holding Base64 JPEGs."""
    import base64

    def pair(v):
        return f"&quot;{v:.9g}&quot; &quot;{v:.9g}&quot;"
    reps = "".join(
        '<DataObject ObjectType="PixelDataRepresentation">'
        + _philips_attr("DICOM_PIXEL_SPACING", pair(spacing_mm * f), "IDoubleArray")
        + _philips_attr("PIIM_PIXEL_DATA_REPRESENTATION_NUMBER", i, "IUInt32")
        + _philips_attr("PIIM_PIXEL_DATA_REPRESENTATION_COLUMNS", w, "IUInt32")
        + _philips_attr("PIIM_PIXEL_DATA_REPRESENTATION_ROWS", h, "IUInt32")
        + "</DataObject>" for i, (w, h, f) in enumerate(level_sizes))

    def assoc(kind, data):
        return ('<DataObject ObjectType="DPScannedImage">' + _philips_attr("PIM_DP_IMAGE_TYPE", kind)
                + _philips_attr("PIM_DP_IMAGE_DATA", base64.b64encode(data).decode()) + "</DataObject>")
    wsi = ('<DataObject ObjectType="DPScannedImage">'
           + _philips_attr("DICOM_PIXEL_SPACING", pair(spacing_mm), "IDoubleArray")
           + _philips_attr("PIM_DP_IMAGE_TYPE", "WSI")
           + _philips_attr("PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE", f"<Array>{reps}</Array>",
                           "IDataObjectArray")
           + "</DataObject>")
    return ('<?xml version="1.0" encoding="UTF-8" ?><DataObject ObjectType="DPUfsImport">'
            + _philips_attr("DICOM_MANUFACTURER", "PHILIPS")
            + _philips_attr("DICOM_SOFTWARE_VERSIONS", "&quot;4.0.3&quot;", "IStringArray")
            + _philips_attr("PIM_DP_SCANNED_IMAGES", f"<Array>{wsi}{assoc('LABELIMAGE', label_jpeg)}"
                            f"{assoc('MACROIMAGE', macro_jpeg)}</Array>", "IDataObjectArray")
            + "</DataObject>")


def write_philips(path, width: int = 2000, height: int = 1500, *, tile: int = TILE,
                  downsamples: Sequence[int] = (1, 4, 16), spacing_mm: float = 0.00025, seed: int = 0,
                  sparse: Sequence[int] = (0, 1)) -> str:
    """A Philips TIFF export: tiled JPEG levels whose TIFF sizes are padded to whole tiles (as
    Philips writes them), the DPUfsImport XML with per-level pixel spacings and Base64 label and
    macro JPEGs, Software "Philips ...", and level-0 tiles ``sparse`` left out (offset and byte
    count 0, as Philips does outside the scanned regions)."""
    import io

    path = os.fspath(path)
    src = Tissue(width, height, seed, tile)
    full = np.concatenate([np.concatenate([src.tile(ty, tx) for tx in range(src.nx)], axis=1)
                           for ty in range(src.ny)], axis=0)[:height, :width]

    def jpeg(a):
        b = io.BytesIO()
        Image.fromarray(a).save(b, "JPEG", quality=90)
        return b.getvalue()
    label = make_label()
    macro = make_macro(area_downsample(full[: height // 16 * 16, : width // 16 * 16], 16))
    levels, sizes = [], []
    for f in downsamples:
        lv = area_downsample(full[: height // f * f, : width // f * f], f) if f > 1 else full
        ph, pw = -(-lv.shape[0] // tile) * tile, -(-lv.shape[1] // tile) * tile
        padded = np.full((ph, pw, 3), 255, np.uint8)
        padded[: lv.shape[0], : lv.shape[1]] = lv
        levels.append(padded)
        sizes.append((pw, ph, f))
    xml = philips_xml(sizes, spacing_mm, jpeg(label), jpeg(macro))
    with tifffile.TiffWriter(path) as tw:
        for i, lv in enumerate(levels):
            tw.write(lv, tile=(tile, tile), photometric="rgb", compression="jpeg",
                     compressionargs={"level": 85}, subsampling=(2, 2), subfiletype=1 if i else 0,
                     description=xml if i == 0 else f"level={i}", software="Philips DP v1.0", metadata=None)
        tw.write(label, photometric="rgb", compression="jpeg", rowsperstrip=32, description="Label",
                 software="Philips DP v1.0", metadata=None)
    if sparse:
        with tifffile.TiffFile(path) as tf:
            offs, cnts = tf.pages[0].tags["TileOffsets"], tf.pages[0].tags["TileByteCounts"]
            size = 4 if offs.dtype in (4, 9) else 8
            spots = [(offs.valueoffset, cnts.valueoffset, size)]
        with open(path, "r+b") as f:
            for ov, cv, size in spots:
                for i in sparse:
                    for at in (ov + i * size, cv + i * size):
                        f.seek(at)
                        f.write(bytes(size))
    return path


QPI_NAMES = ("DAPI", "Opal 520", "Opal 570", "Opal 690", "Autofluorescence")
QPI_COLORS = ("0,0,255", "0,255,0", "255,255,0", "255,0,0", "128,128,128")


def qpi_description(image_type: str, name: str = "", color: str = "", objective: str = "20x") -> str:
    """A PerkinElmer/Akoya per-page ``PerkinElmer-QPI-ImageDescription`` XML."""
    chan = f"<Name>{name}</Name><Color>{color}</Color>" if name else ""
    return ('<?xml version="1.0" encoding="utf-8"?><PerkinElmer-QPI-ImageDescription>'
            "<DescriptionVersion>2</DescriptionVersion>"
            "<AcquisitionSoftware>PerkinElmer-QPI</AcquisitionSoftware>"
            f"<ImageType>{image_type}</ImageType><Identifier>synthetic</Identifier>"
            f"<SlideID>SYNTH-1</SlideID>{chan}<Objective>{objective}</Objective>"
            "</PerkinElmer-QPI-ImageDescription>")


def write_qptiff(path, width: int = 2000, height: int = 1500, *, channels: int = 4, tile: int = 512,
                 min_size: int = 400, mpp: float = 0.4972, seed: int = 0) -> str:
    """A PerkinElmer/Akoya QPTIFF in its page order: one tiled page per channel at full resolution,
    a thumbnail, then per halving one page per channel, an overview and a label; every page with
    its QPI XML (ImageType, channel Name and Color), resolution in pixels per centimetre."""
    path = os.fspath(path)
    data = fluorescence(width, height, channels, dtype=np.uint8, seed=seed)[0, :, 0]
    res = (1e4 / mpp, 1e4 / mpp)
    kw = dict(software="PerkinElmer-QPI", metadata=None, resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        def channel_pages(a, image_type, scale):
            for c in range(channels):
                tw.write(a[c], tile=(tile, tile), compression="zlib", photometric="minisblack",
                         description=qpi_description(image_type, QPI_NAMES[c % 5], QPI_COLORS[c % 5]),
                         resolution=(res[0] / scale, res[1] / scale), subfiletype=int(scale > 1), **kw)
        channel_pages(data, "FullResolution", 1)
        rgb = np.stack([data[min(c, channels - 1)] for c in (3, 1, 0)], axis=-1)
        thumb = rgb[::8, ::8]
        tw.write(thumb, photometric="rgb", compression="jpeg", description=qpi_description("Thumbnail"),
                 subfiletype=1, **kw)
        level, scale = data, 1
        while min(level.shape[1:]) >= min_size:
            h2, w2 = level.shape[1] // 2 * 2, level.shape[2] // 2 * 2
            level = np.stack([area_downsample(level[c, :h2, :w2, None], 2)[..., 0] for c in range(channels)])
            scale *= 2
            channel_pages(level, "ReducedResolution", scale)
        tw.write(make_macro(rgb[::4, ::4]), photometric="rgb", compression="jpeg",
                 description=qpi_description("Overview"), subfiletype=1, **kw)
        tw.write(make_label(), photometric="rgb", compression="lzw", description=qpi_description("Label"),
                 subfiletype=1, **kw)
    return path


SCN_NS = "http://www.leica-microsystems.com/scn/2010/10/01"


def write_scn(path, *, regions: Sequence[tuple[int, int, int, int]] = ((400, 300, 1500, 1100),
                                                                     (2600, 900, 1200, 900)),
              slide_px: tuple[int, int] = (4400, 2400), nm_per_px: int = 500, macro_nm_per_px: int = 8000,
              tile: int = 256, downsamples: Sequence[int] = (1, 4), seed: int = 0) -> str:
    """A Leica SCN (BigTIFF): an XML ``collection`` (size in nm) of a brightfield macro image
    covering the collection and main images placed at ``regions`` ((x, y, w, h) in main-image pixels
    of ``nm_per_px``), each with pyramid ``dimension``s pointing at their TIFF directories; the macro
    comes first (IFD 0, tiled), the XML is its ImageDescription."""
    import base64

    path = os.fspath(path)
    cw, ch = slide_px[0] * nm_per_px, slide_px[1] * nm_per_px
    src = Tissue(slide_px[0], slide_px[1], seed, tile)
    full = np.concatenate([np.concatenate([src.tile(ty, tx) for tx in range(src.nx)], axis=1)
                           for ty in range(src.ny)], axis=0)[:slide_px[1], :slide_px[0]]
    mf = macro_nm_per_px // nm_per_px
    macro = area_downsample(full[: slide_px[1] // mf * mf, : slide_px[0] // mf * mf], mf)
    pages, images, nm = [macro], [], [macro_nm_per_px]

    def image_xml(name, w, h, x_nm, y_nm, vw, vh, dims):
        dim = "".join(f'<dimension sizeX="{dw}" sizeY="{dh}" r="{r}" ifd="{ifd}"/>'
                      for r, (dw, dh, ifd) in enumerate(dims))
        return (f'<image name="{name}" uuid="urn:uuid:{name}">'
                f"<creationDate>2026-11-23T12:00:00.00Z</creationDate>"
                '<device model="Leica SCN400;Leica SCN" '
                'version="1.5.1.10804 2012/05/10 13:29:07;1.5.1.10864"/>'
                f'<pixels sizeX="{w}" sizeY="{h}">{dim}</pixels>'
                f'<view sizeX="{vw}" sizeY="{vh}" offsetX="{x_nm}" offsetY="{y_nm}" spacingZ="0"/>'
                f"<scanSettings><objectiveSettings><objective>20</objective></objectiveSettings>"
                f"<illuminationSettings><numericalAperture>0.4</numericalAperture>"
                f"<illuminationSource>brightfield</illuminationSource></illuminationSettings></scanSettings>"
                f"</image>")
    mh, mw = macro.shape[:2]
    images.append(image_xml("macro", mw, mh, 0, 0, cw, ch, [(mw, mh, 0)]))
    for k, (x, y, w, h) in enumerate(regions):
        dims = []
        for f in downsamples:
            a = full[y:y + h, x:x + w]
            a = area_downsample(a[: h // f * f, : w // f * f], f) if f > 1 else a
            dims.append((a.shape[1], a.shape[0], len(pages)))
            pages.append(a)
            nm.append(nm_per_px * f)
        images.append(image_xml(f"region{k}", w, h, x * nm_per_px, y * nm_per_px, w * nm_per_px,
                                h * nm_per_px, dims))
    barcode = base64.b64encode(b"SYNTH-SCN-1").decode()
    xml = (f'<?xml version="1.0" encoding="utf-8"?><scn xmlns="{SCN_NS}"><collection name="synthetic" '
           f'uuid="urn:uuid:collection" sizeX="{cw}" sizeY="{ch}"><barcode>{barcode}</barcode>'
           + "".join(images) + "</collection></scn>")
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, (a, n) in enumerate(zip(pages, nm, strict=True)):
            tw.write(a, tile=(tile, tile), photometric="rgb", compression="jpeg",
                     compressionargs={"level": 85}, subsampling=(2, 2),
                     description=xml if i == 0 else None, resolution=(1e7 / n, 1e7 / n),
                     resolutionunit="CENTIMETER", metadata=None, software=False)
    return path


def _jpeg_restart(a: np.ndarray, quality: int, subsampling: int, row_mcus: bool) -> tuple[bytes, list[int]]:
    """A baseline JPEG (Pillow / libjpeg) with restart markers, and the byte offset of each restart
    interval's entropy-coded data from the JPEG's start (NDPI's McuStarts). The interval is the
    largest divisor of the MCUs per row up to 16, or the whole row with ``row_mcus``."""
    import io

    mcu = 8 if subsampling == 0 else 16
    per_row = -(-a.shape[1] // mcu)
    mcus = per_row if row_mcus else max(d for d in range(1, 17) if per_row % d == 0)
    b = io.BytesIO()
    Image.fromarray(a).save(b, "JPEG", quality=quality, restart_marker_blocks=mcus, subsampling=subsampling)
    data = b.getvalue()
    pos = 2
    while True:  # walk the segments to the start of scan
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2:pos + 4], "big")
        pos += 2 + length
        if marker == 0xDA:
            break
    starts = [pos]
    k = data.find(b"\xff", pos)
    while k != -1 and k + 1 < len(data):
        if 0xD0 <= data[k + 1] <= 0xD7:
            starts.append(k + 2)
        k = data.find(b"\xff", k + 2)
    return data, starts


def write_ndpi(path, width: int = 3840, height: int = 2880, *, downsamples: Sequence[int] = (1, 4, 16),
               focal_planes: Sequence[int] = (0,), lens: float = 20.0, mpp: float = 0.4536, seed: int = 0,
               quality: int = 85, subsampling: int = 0, mcu_starts: bool = True, gap: int = 0) -> str:
    """A Hamamatsu NDPI: classic TIFF with NDPI's 64-bit IFD links (8-byte first and next IFD
    offsets, a high-bits word per entry after each IFD), one page per level and focal plane holding
    the whole level as one JPEG strip with restart markers (McuStarts: where each restart interval
    starts), SourceLens (the objective; -1 for the macro), the focal plane number (65424), X/Y
    offsets from the slide centre, a property map, and a macro page. ``subsampling`` is Pillow's
    (0 = 4:4:4, 1 = 4:2:2): openslide decodes each restart interval on its own, which needs
    chroma not subsampled vertically. ``mcu_starts=False`` leaves the McuStarts tag out (readers
    must find the restart markers themselves). ``gap`` leaves a hole of that many bytes before the
    first level's JPEG (a sparse file): offsets beyond 4 GB, in NDPI's high-bits words."""
    import struct

    path = os.fspath(path)
    src = Tissue(width, height, seed, TILE)
    full = np.concatenate([np.concatenate([src.tile(ty, tx) for tx in range(src.nx)], axis=1)
                           for ty in range(src.ny)], axis=0)[:height, :width]
    pages = []
    for z in focal_planes:
        base = np.clip(full.astype(np.int16) - 8 * abs(z), 0, 255).astype(np.uint8) if z else full
        for f in downsamples:
            lv = area_downsample(base[: height // f * f, : width // f * f], f) if f > 1 else base
            jpeg, starts = _jpeg_restart(lv, quality, subsampling, row_mcus=False)
            pages.append((lv.shape[1], lv.shape[0], jpeg, starts if mcu_starts else [], lens, z, mpp * f))
    macro = make_macro(area_downsample(full[: height // 16 * 16, : width // 16 * 16], 16))
    jpeg, starts = _jpeg_restart(macro, 90, 0, row_mcus=True)
    pages.append((macro.shape[1], macro.shape[0], jpeg, [], -1.0, 0, mpp * 16))
    props = b"Objective.Lens.Magnificant=20.0\r\nNDP.S/N=SYNTH001\r\nProduct=NanoZoomer\r\n\0"

    with open(path, "wb") as f:
        f.write(b"II*\0" + bytes(8))  # NDPI: the first-IFD offset is 8 bytes too
        link, first = 4, True
        for w, h, jpeg, starts, src_lens, plane, px in pages:
            if f.tell() % 2:
                f.write(b"\0")
            rational = struct.pack("<2I", round(1e4 / px * 1000), 1000)
            make, model, ref = b"Hamamatsu\0", b"C13220\0", b"SYNTH-NDPI-1\0"
            blobs = {258: struct.pack("<3H", 8, 8, 8), 271: make, 272: model, 282: rational, 283: rational,
                     65427: ref, 65449: props}
            if starts:
                blobs[65426] = struct.pack(f"<{len(starts)}I", *starts)
            tags = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, None), (259, 3, 1, 7), (262, 3, 1, 2),
                    (271, 2, len(make), None), (272, 2, len(model), None), (273, 4, 1, None), (277, 3, 1, 3),
                    (278, 4, 1, h), (279, 4, 1, len(jpeg)), (282, 5, 1, None), (283, 5, 1, None),
                    (296, 3, 1, 3), (65420, 4, 1, 1),
                    (65421, 11, 1, struct.unpack("<I", struct.pack("<f", src_lens))[0]),
                    (65422, 9, 1, 1500000), (65423, 9, 1, (-2500000) & 0xFFFFFFFF),
                    (65424, 9, 1, plane & 0xFFFFFFFF)]
            if starts:
                tags.append((65426, 4, len(starts), None))
            tags += [(65427, 2, len(ref), None), (65449, 2, len(props), None)]
            pos = f.tell()
            cursor = pos + 2 + 12 * len(tags) + 8 + 4 * len(tags)
            where = {}
            for tag, _, _, _ in tags:
                if tag in blobs and len(blobs[tag]) > 4:
                    where[tag] = cursor
                    cursor += len(blobs[tag]) + len(blobs[tag]) % 2
            data_pos = cursor + (gap if first else 0)
            first = False
            body, high = struct.pack("<H", len(tags)), b""
            for tag, typ, count, value in tags:
                if tag == 273:
                    value = data_pos
                elif tag in blobs:
                    value = where.get(tag) or int.from_bytes(blobs[tag].ljust(4, b"\0"), "little")
                body += struct.pack("<HHII", tag, typ, count, value & 0xFFFFFFFF)
                high += struct.pack("<I", value >> 32)  # NDPI: the high 32 bits of every entry's value
            body += bytes(8) + high  # next IFD (linked below), then the high words
            f.seek(link)
            f.write(struct.pack("<Q", pos))  # NDPI's IFD links are 64-bit
            f.seek(pos)
            f.write(body)
            for tag in where:
                f.write(blobs[tag] + b"\0" * (len(blobs[tag]) % 2))
            f.seek(data_pos)
            f.write(jpeg)
            link = pos + 2 + 12 * len(tags)
    return path


def _bif_tile_number(col: int, row: int, cols: int, rows: int) -> int:
    """Ventana's 1-based tile number of grid (col, row): rows counted from the bottom, every
    second one (from the bottom) right to left."""
    r = rows - 1 - row
    c = cols - 1 - col if r % 2 else col
    return r * cols + c + 1


def write_bif(path, *, cols: int = 6, rows: int = 4, tile: int = 256, overlap: tuple[int, int] = (16, 12),
              magnification: float = 40.0, mpp: float = 0.25, seed: int = 0, quality: int = 90) -> str:
    """A Ventana BIF (BigTIFF): one scanned area of ``cols`` x ``rows`` camera tiles that overlap
    their neighbours by ``overlap`` pixels, stored as a plain TIFF tile grid (level 0) with the
    stitching in the level-0 XMP (EncodeInfo: AoiOrigin, ImageInfo, a TileJointInfo per joint with
    Ventana's bottom-up serpentine tile numbering); level 1 holds 2x2 level-0 tiles per TIFF tile at
    half size, as Ventana's do; an iScan XMP on the first page (Magnification, ScanRes), a "Label
    Image" and a "Thumbnail". The camera tiles are cut from one image, so overlaps agree."""
    path = os.fspath(path)
    ox, oy = overlap
    ax, ay = tile - ox, tile - oy
    width, height = ax * (cols - 1) + tile, ay * (rows - 1) + tile
    src = Tissue(width, height, seed, TILE)
    full = np.concatenate([np.concatenate([src.tile(ty, tx) for tx in range(src.nx)], axis=1)
                           for ty in range(src.ny)], axis=0)[:height, :width]
    cams = [[full[r * ay:r * ay + tile, c * ax:c * ax + tile] for c in range(cols)] for r in range(rows)]
    level0 = np.concatenate([np.concatenate(row, axis=1) for row in cams], axis=0)
    half = tile // 2
    l1c, l1r = -(-cols // 2), -(-rows // 2)
    level1 = np.full((l1r * tile, l1c * tile, 3), 255, np.uint8)
    for r in range(rows):
        for c in range(cols):
            level1[r * half:(r + 1) * half, c * half:(c + 1) * half] = area_downsample(cams[r][c], 2)
    joints = []
    for r in range(rows):
        for c in range(cols):
            if c + 1 < cols:
                joints.append((_bif_tile_number(c, r, cols, rows), _bif_tile_number(c + 1, r, cols, rows),
                               "RIGHT", ox, 0))
            if r > 0:
                joints.append((_bif_tile_number(c, r, cols, rows), _bif_tile_number(c, r - 1, cols, rows),
                               "UP", 0, oy))
    joint_xml = "".join(f'<TileJointInfo FlagJoined="1" Confidence="100" Direction="{d}" Tile1="{t1}" '
                        f'Tile2="{t2}" OverlapX="{x}" OverlapY="{y}"/>' for t1, t2, d, x, y in joints)
    grid = f'NumRows="{rows}" NumCols="{cols}" Pos-X="0" Pos-Y="0"'
    encode = ('<?xml version="1.0" encoding="utf-8"?><EncodeInfo Ver="2"><SlideInfo>'
              f'<AoiInfo XIMAGESIZE="{tile}" YIMAGESIZE="{tile}" {grid}/></SlideInfo><SlideStitchInfo>'
              f'<ImageInfo AOIScanned="1" AOIIndex="0" Width="{tile}" Height="{tile}" {grid}>{joint_xml}'
              '</ImageInfo></SlideStitchInfo><AoiOrigin><AOI0 OriginX="0" OriginY="0"/></AoiOrigin>'
              "</EncodeInfo>")
    iscan = ('<?xml version="1.0" encoding="utf-8"?><Metadata><iScan BuildVersion="3.3.1.1" '
             f'Magnification="{magnification:g}" ScanRes="{mpp}" UnitNumber="SYNTH-BIF" '
             'ScannerModel="VENTANA DP 200" SlideAnnotation="synthetic"/></Metadata>')
    label = make_label()
    thumb = np.asarray(Image.fromarray(level0[::8, ::8]))
    common = dict(metadata=None, software=False)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(label, photometric="rgb", compression="jpeg", rowsperstrip=64, description="Label Image",
                 extratags=[(700, 1, len(iscan), iscan.encode(), True)], **common)
        tw.write(thumb, photometric="rgb", compression="jpeg", rowsperstrip=64, description="Thumbnail",
                 **common)
        jpeg = dict(tile=(tile, tile), photometric="rgb", compression="jpeg",
                    compressionargs={"level": quality})
        tw.write(level0, description=f"level=0 mag={magnification:g} quality={quality}", **jpeg,
                 extratags=[(700, 1, len(encode), encode.encode(), True)], **common)
        tw.write(level1, description=f"level=1 mag={magnification / 2:g} quality={quality}", **jpeg, **common)
    return path


SCANIMAGE_MAGIC = 117637889


def scanimage_header(channels: int, slices: int, volumes: int, frames_per_slice: int, *,
                     zstep: float = 2.0, fps: float = 30.0) -> str:
    """Frame-invariant ScanImage settings as MATLAB-evaluable ``SI.x.y = value`` lines."""
    save = "[" + ";".join(str(c + 1) for c in range(channels)) + "]" if channels > 1 else "1"
    lines = [
        "SI.VERSION_MAJOR = 2022", "SI.VERSION_MINOR = 1", "SI.acqState = 'grab'",
        f"SI.hChannels.channelSave = {save}",
        "SI.hChannels.channelName = {" + " ".join(f"'Channel {c + 1}'" for c in range(max(4, channels)))
        + "}",
        f"SI.hStackManager.enable = {'true' if slices > 1 else 'false'}",
        f"SI.hStackManager.numSlices = {slices}", f"SI.hStackManager.actualNumSlices = {slices}",
        f"SI.hStackManager.framesPerSlice = {frames_per_slice}",
        f"SI.hStackManager.stackZStepSize = {zstep}",
        f"SI.hFastZ.enable = {'true' if volumes > 1 else 'false'}",
        f"SI.hFastZ.numVolumes = {volumes}", f"SI.hFastZ.actualNumVolumes = {volumes}",
        f"SI.hRoiManager.scanFrameRate = {fps}", "SI.hRoiManager.linesPerFrame = 512",
        "SI.hScan2D.channelsInputRanges = {[-1 1] [-1 1] [-1 1] [-1 1]}",
        "SI.hMotors.axesPosition = [0 0 -120.5]", "SI.objectiveResolution = 15",
    ]
    return "\n".join(lines) + "\n"


def scanimage3_header(channels: int, slices: int, frames_per_slice: int, *, zstep: float = 1.5,
                      fps: float = 8.138) -> str:
    """A ScanImage 3.x ImageDescription: ``state.x.y=value`` assignments separated by carriage
    returns, as ScanImage 3.5-3.8 writes them in every frame (saved channels as flags)."""
    lines = [
        "state.configPath='C:\\Users\\lab\\ScanImage'", "state.configName='twophoton'",
        "state.software.version=3.8", "state.software.minorRev=1", "state.software.beta=0",
        "state.acq.externallyTriggered=0", f"state.acq.numberOfZSlices={slices}",
        f"state.acq.zStepSize={zstep}", "state.acq.numAvgFramesSave=1", "state.acq.averaging=0",
        f"state.acq.numberOfFrames={frames_per_slice}", f"state.acq.numberOfChannelsSave={channels}",
        *(f"state.acq.savingChannel{n}={int(n <= channels)}" for n in range(1, 5)),
        *(f"state.acq.acquiringChannel{n}={int(n <= channels)}" for n in range(1, 5)),
        f"state.acq.frameRate={fps}", "state.acq.zoomFactor=2.5", "state.acq.pixelsPerLine=512",
        "state.acq.linesPerFrame=512", "state.acq.msPerLine=2", "state.acq.scanAngleMultiplierFast=1",
        "state.motor.absZPosition=-320.5", f"state.motor.zStepSize={zstep}",
        "state.motor.stepDelay=0.1", "state.internal.triggerTimeString='11/23/2012 12:00:00.000'",
        "state.init.eom.maxPower=[30 100]",
    ]
    return "\r".join(lines) + "\r"


def scanimage_roi_json() -> str:
    import json

    return json.dumps({"RoiGroups": {"imagingRoiGroup": {"ver": 1, "classname": "scanimage.mroi.RoiGroup",
                                                          "name": "Default Imaging ROI Group",
                                                          "rois": {"ver": 1, "name": "Default Imaging Roi",
                                                                   "zs": 0, "scanfields": {"centerXY": [0, 0],
                                                                                           "sizeXY": [1, 1],
                                                                                           "pixelResolutionXY":
                                                                                           [512, 512]}}},
                                    "photostimRoiGroups": None, "integrationRoiGroup": None}}, indent=1)


def scanimage_frame_description(i: int, fps: float = 30.0) -> str:
    """ScanImage's per-frame ImageDescription for frame ``i`` (0-based)."""
    return (f"frameNumbers = {i + 1}\nacquisitionNumbers = 1\nframeNumberAcquisition = {i + 1}\n"
            f"frameTimestamps_sec = {i / fps:.6f}\nacqTriggerTimestamps_sec = \n"
            f"nextFileMarkerTimestamps_sec = \nendOfAcquisition = 0\nendOfAcquisitionMode = 0\n"
            f"dcOverVoltage = 0\nepoch = [2026 11 23 12 0 0.000]\nauxTrigger0 = []\nauxTrigger1 = []\n"
            f"auxTrigger2 = []\nauxTrigger3 = []\nI2CData = {{{{{i * 7 % 255}, [1 2]}}}}\n")


def write_scanimage(path, width: int = 128, height: int = 96, *, channels: int = 2, slices: int = 3,
                    volumes: int = 2, frames_per_slice: int = 1, bigtiff: bool = True, seed: int = 0,
                    frames: Iterator[np.ndarray] | None = None, version: int | None = None) -> str:
    """A ScanImage stack in ScanImage's documented layout: int16 frames, one uncompressed strip
    each, channels interleaved fastest, then frames of a slice, slices, volumes. BigTIFF files
    carry the static block after the header (magic 117637889, version 4, the ``SI.`` lines and the
    ROI group JSON) and the same text in every frame's Software and Artist tags; classic TIFF files
    (older ScanImage) carry ``scanimage.SI.`` lines in every frame's ImageDescription instead.
    ``version=3`` writes ScanImage 3.x's layout: classic TIFF, only the ``\\r``-separated
    ``state.`` header (:func:`scanimage3_header`) in every frame's ImageDescription (volumes are
    repeated acquisitions then). ``frames`` supplies the pixels (default: noise with a moving blob,
    from ``seed``)."""
    import struct

    path = os.fspath(path)
    n = channels * slices * volumes * frames_per_slice
    if version == 3:
        bigtiff = False
        header_text = scanimage3_header(channels, slices, frames_per_slice)
    else:
        header_text = scanimage_header(channels, slices, volumes, frames_per_slice)
    roi = scanimage_roi_json()
    si = (header_text + "\0").encode()
    rj = (roi + "\0").encode()
    if frames is None:
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:height, 0:width]

        def make():
            for i in range(n):
                cy, cx = height / 2 + 20 * np.sin(i / 5), width / 2 + 20 * np.cos(i / 7)
                blob = 3000 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 200.0)
                yield (rng.normal(50, 15, (height, width)) + blob + 100 * (i % channels)).astype(np.int16)
        frames = make()
    if bigtiff:
        head = struct.pack("<2sHHHQ", b"II", 43, 8, 0, 0)
        head += struct.pack("<IIII", SCANIMAGE_MAGIC, 4, len(si), len(rj)) + si + rj
        ifd_head, entry, nxt, long_type = "<Q", "<HHQQ", "<Q", 16
        inline = 8
    else:
        head = struct.pack("<2sHI", b"II", 42, 0)
        ifd_head, entry, nxt, long_type = "<H", "<HHII", "<I", 4
        inline = 4
    esize, hsize, nsize = struct.calcsize(entry), struct.calcsize(ifd_head), struct.calcsize(nxt)
    with open(path, "wb") as f:
        f.write(head)
        first_ptr = 8 if bigtiff else 4
        prev_next = first_ptr
        for i, frame in enumerate(frames):
            frame = np.ascontiguousarray(frame, "<i2")
            desc = header_text if version == 3 else scanimage_frame_description(i)
            if not bigtiff and version != 3:
                desc += "".join(f"scanimage.{ln}\n" for ln in header_text.splitlines())
            blobs = {270: (desc + "\0").encode()}
            if bigtiff:
                blobs[305], blobs[315] = si, rj
            pos = f.tell()
            if pos % 2:
                f.write(b"\0")
                pos += 1
            tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 16), (259, 3, 1, 1), (262, 3, 1, 1),
                    (270, 2, len(blobs[270]), None), (273, long_type, 1, None), (277, 3, 1, 1),
                    (278, 4, 1, height), (279, long_type, 1, frame.nbytes), (284, 3, 1, 1)]
            if bigtiff:
                tags += [(305, 2, len(si), None), (315, 2, len(rj), None)]
            tags += [(339, 3, 1, 2)]
            ifd_len = hsize + esize * len(tags) + nsize
            cursor = pos + ifd_len
            out_of_line = {}
            for tag, _, count, _ in tags:
                if tag in blobs and count > inline:
                    out_of_line[tag] = cursor
                    cursor += len(blobs[tag]) + (len(blobs[tag]) % 2)
            data_pos = cursor
            body = struct.pack(ifd_head, len(tags))
            for tag, typ, count, value in tags:
                if tag in blobs:
                    value = out_of_line.get(tag) or int.from_bytes(blobs[tag].ljust(inline, b"\0"), "little")
                elif tag == 273:
                    value = data_pos
                body += struct.pack(entry, tag, typ, count, value)
            body += struct.pack(nxt, 0)
            f.seek(prev_next)
            f.write(struct.pack(nxt, pos))
            f.seek(pos)
            f.write(body)
            for tag in out_of_line:
                f.write(blobs[tag] + b"\0" * (len(blobs[tag]) % 2))
            f.write(frame.tobytes())
            prev_next = pos + hsize + esize * len(tags)
    return path


def patch_czi_metadata(path, edit: Callable) -> None:
    """Change a CZI's XML metadata the way a later save does: ``edit(root)`` changes the parsed
    document, which is appended as a new metadata segment with the file header pointed at it
    (pylibCZIrw writes only some of what Zen writes)."""
    import struct
    from xml.etree import ElementTree as ET

    import pylibCZIrw.czi as pyczi

    with pyczi.open_czi(os.fspath(path)) as d:
        root = ET.fromstring(d.raw_metadata)
    edit(root)
    xml = ET.tostring(root)
    body = struct.pack("<ii", len(xml), 0) + bytes(248) + xml
    with open(path, "r+b") as f:
        at = f.seek(0, 2)
        f.write(b"ZISRAWMETADATA".ljust(16, b"\0") + struct.pack("<qq", len(body), len(body)) + body)
        f.seek(32 + 60)  # the file header's metadata position
        f.write(struct.pack("<q", at))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tools.synth", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["svs", "ome", "tiff"])
    ap.add_argument("out")
    ap.add_argument("--width", type=int, default=4000)
    ap.add_argument("--height", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compression", default=None)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--z", type=int, default=1)
    ap.add_argument("--t", type=int, default=1)
    ap.add_argument("--downsamples", default="1,4,16", help="SVS/TIFF pyramid, e.g. 1,4,16,64")
    a = ap.parse_args(argv)
    kw = {"compression": a.compression} if a.compression else {}
    ds = [int(v) for v in a.downsamples.split(",")]
    if a.kind == "svs":
        write_svs(a.out, a.width, a.height, seed=a.seed, downsamples=ds, **kw)
    elif a.kind == "ome":
        write_ome(a.out, a.width, a.height, channels=a.channels, z=a.z, t=a.t, seed=a.seed, **kw)
    else:
        write_tiff(a.out, a.width, a.height, seed=a.seed, downsamples=ds, **kw)
    print(a.out)


if __name__ == "__main__":
    main()
