"""Decode dispatch over imagecodecs: how one encoded piece becomes an (h, w, samples) array.

A :class:`Codec` is part of a format's description of a level; the engine calls
``codec.decode(data, h, w)`` for each piece and pastes the result. Codecs are built by drivers
from their format's parameters (``from_tiff`` for TIFF tags); no codec is written by hand here,
every byte goes through imagecodecs (which wraps libjpeg-turbo, OpenJPEG, zlib-ng, zstd, ...),
except JPEG decoded at 1/2, 1/4 or 1/8 in the DCT domain, which imagecodecs does not offer: that is
libjpeg-turbo again, through simplejpeg.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import imagecodecs
import numpy as np
import simplejpeg

from .errors import UnsupportedFormatError

# TIFF compression tags whose decoders return images; the others decompress bytes.
_TIFF_IMAGE_CODECS = {
    7: "jpeg", 34892: "jpeg", 33003: "jpeg2000", 33004: "jpeg2000", 33005: "jpeg2000",
    34712: "jpeg2000", 34887: "lerc", 34933: "png", 34934: "jpegxr", 22610: "jpegxr",
    50001: "webp", 50002: "jpegxl", 52546: "jpegxl",
}
_TIFF_BYTE_CODECS = {1: "none", 5: "lzw", 8: "deflate", 32946: "deflate", 32773: "packbits",
                     34925: "lzma", 50000: "zstd"}
# ``Scene.compression`` speaks one vocabulary for every format: these names (the codec families),
# "rle", "jpegls", or for an encoding outside them the format's own name in lower case; the
# format's raw value (TIFF tag, DICOM transfer syntax UID, ...) is ``Scene.compression_raw``.
COMPRESSIONS = ("none", "jpeg", "jpeg2000", "jpegls", "jpegxl", "jpegxr", "rle", "lzw", "deflate", "zstd",
                "packbits", "lzma", "png", "webp", "lerc")


def tiff_compression(code: int) -> str:
    """The vocabulary's name of a TIFF Compression tag value."""
    name = _TIFF_IMAGE_CODECS.get(code) or _TIFF_BYTE_CODECS.get(code)
    if name is None:
        from tifffile import TIFF

        try:
            name = TIFF.COMPRESSION(code).name.lower()  # type: ignore[attr-defined]  # tifffile's enum
        except ValueError:
            name = str(code)
    return name


@dataclass(frozen=True, eq=False)
class Codec:
    """How the pieces of one plane are encoded. ``decode`` returns (h', w', samples), where h', w'
    may be smaller than asked for the last strip of a stripped image.

    ``writes_out``: the decoder fills an ``out`` array of the piece's (h, w, samples) shape instead
    of allocating one, so the engine can choose where decoded pixels land. ``scaled(k)`` is a codec
    for the same bytes decoded at 1/k per axis (k in 2, 4, 8), or None where the encoding has no
    cheap reduced decode.
    """

    name: str
    dtype: np.dtype
    samples: int
    _decode: Callable[[Any, int, int, np.ndarray | None], np.ndarray]  # bytes (or a library's array)
    writes_out: bool = False
    _scaled: Callable[[int], Codec | None] | None = None
    # what a writer needs to copy the pieces as they are (passthrough): for JPEG its ``tables``, the
    # TIFF ``photometric`` the pieces were stored under and the ``colorspace`` they decode from
    params: Mapping[str, Any] = field(default_factory=dict)

    def decode(self, data: bytes | np.ndarray, h: int, w: int, out: np.ndarray | None = None) -> np.ndarray:
        a = self._decode(data, h, w, out)
        if a.ndim == 2:
            a = a[:, :, None]
        if a.shape[2] != self.samples or a.dtype != self.dtype:
            raise ValueError(f"decoded {a.shape} {a.dtype}, expected (h, w, {self.samples}) {self.dtype}")
        return a

    def scaled(self, k: int) -> Codec | None:
        return None if self._scaled is None else self._scaled(k)

    def reduced(self, k: int) -> Codec:
        """Pieces at 1/k per axis: the DCT-scaled decode where there is one, else the full decode
        followed by k x k block means (edges padded by repetition)."""
        scaled = self.scaled(k)
        if scaled is not None:
            return scaled

        # h, w: the piece's full size, decoded into per-thread scratch
        def dec(data: Any, h: int, w: int, out: np.ndarray | None) -> np.ndarray:
            full = np.frombuffer(scratch(h * w * self.samples * self.dtype.itemsize, "full"), self.dtype)
            return block_mean(self.decode(data, h, w, full.reshape(h, w, self.samples)), k)
        return Codec(f"{self.name}/{k}", self.dtype, self.samples, dec)


_local = threading.local()


def scratch(nbytes: int, slot: str) -> memoryview:
    """A per-thread reusable buffer of ``nbytes`` for intermediates nobody keeps (decompressed
    bytes, a full-size decode about to be reduced): fresh multi-MB allocations page-fault on every
    piece, reused ones do not. Nested users take different ``slot`` names."""
    bufs = _local.__dict__
    buf = bufs.get(slot)
    if buf is None or len(buf) < nbytes:
        buf = bufs[slot] = bytearray(max(nbytes, 2 * len(buf) if buf is not None else 0))
    return memoryview(buf)[:nbytes]


def block_mean(a: np.ndarray, k: int) -> np.ndarray:
    """(h, w, c) -> (ceil(h/k), ceil(w/k), c) means of k x k blocks, rounded for integer types."""
    h, w, c = a.shape
    ph, pw = -h % k, -w % k
    if a.dtype == np.uint8 and c in (1, 3) and not (ph or pw) and k & (k - 1) == 0:
        # Pillow's reduce: the same rounded means for powers of two (other factors round a few
        # pixels differently), ~2x faster than the sums below (8x numpy's casting reductions)
        from PIL import Image

        return np.asarray(Image.fromarray(a[..., 0] if c == 1 else a).reduce(k)).reshape(h // k, w // k, c)
    if ph or pw:
        a = np.pad(a, ((0, ph), (0, pw), (0, 0)), mode="edge")
    hk, wk = (h + ph) // k, (w + pw) // k
    small_int = np.issubdtype(a.dtype, np.integer) and a.dtype.itemsize <= 2
    acc = (np.uint32 if a.dtype.kind == "u" else np.int32) if small_int else np.float64
    if k <= 4:  # k * k strided additions in place: no casting reduction (numpy's are slow)
        total = np.zeros((hk, wk, c), acc)
        for i in range(k):
            for j in range(k):
                total += a[i::k, j::k]
    else:  # rows first: whole-row additions vectorise; the k-wide horizontal sums act on 1/k of it
        rows = a.reshape(hk, k, wk * k * c).sum(axis=1, dtype=acc)
        total = rows.reshape(hk, wk, k, c).sum(axis=2)
    if small_int:
        return ((total + k * k // 2) // (k * k)).astype(a.dtype)
    return (total / (k * k)).astype(a.dtype)


def jpeg(tables: bytes | None = None, *, colorspace: int | str | None = None,
         outcolorspace: int | str | None = None, samples: int = 3,
         bits: int = 8) -> Codec:
    """Baseline/extended JPEG (libjpeg-turbo), optionally abbreviated streams with shared tables."""
    if bits != 8:  # 12-bit and lossless JPEG go through imagecodecs' dispatcher
        def dec16(data: Any, h: int, w: int, out: np.ndarray | None) -> np.ndarray:
            return imagecodecs.jpeg_decode(data, tables=tables, bitspersample=bits,
                                           colorspace=colorspace, outcolorspace=outcolorspace)
        return Codec("jpeg", np.dtype(np.uint16), samples, dec16)

    def dec(data: Any, h: int, w: int, out: np.ndarray | None) -> np.ndarray:
        try:
            return imagecodecs.jpeg8_decode(data, tables=tables, colorspace=colorspace,
                                            outcolorspace=outcolorspace, out=out)
        except ValueError:  # a piece smaller than its place (the last strip): let it allocate
            if out is None:
                raise
            # ... no more than its place: a forged SOF would size the allocation (a bomb)
            _fits(simplejpeg.decode_jpeg_header(splice + bytes(data[2:]) if splice else data), h, w)
            return imagecodecs.jpeg8_decode(data, tables=tables, colorspace=colorspace,
                                            outcolorspace=outcolorspace)

    splice = tables[:-2] if tables else b""  # the shared tables before a piece's own segments

    scaled: Callable[[int], Codec | None] | None = None
    # reduced decode only where both libraries pick the same colour conversion: libjpeg's default
    # (JFIF YCbCr -> RGB) or greyscale
    if colorspace is None and (samples, outcolorspace) in ((3, "RGB"), (1, None), (1, "GRAY")):
        scaled = functools.partial(_jpeg_scaled, tables[:-2] if tables else b"",
                                   "RGB" if samples == 3 else "GRAY", samples)
    return Codec("jpeg", np.dtype(np.uint8), samples, dec, True, scaled,
                 {"tables": tables, "colorspace": colorspace, "outcolorspace": outcolorspace})


def _jpeg_scaled(head: bytes, colorspace: str, samples: int, k: int) -> Codec | None:
    """8-bit JPEG decoded at 1/k in the DCT domain (libjpeg-turbo's scaled IDCT: k = 2, 4, 8)."""
    if k not in (2, 4, 8):
        return None

    def dec(data: Any, h: int, w: int, out: np.ndarray | None) -> np.ndarray:
        if head:  # an abbreviated stream: splice the shared tables in after its SOI
            data = head + data[2:]
        jh, jw = simplejpeg.decode_jpeg_header(data)[:2]
        sh, sw = -(-jh // k), -(-jw // k)
        if out is not None and out.shape[:2] != (sh, sw):
            _fits((sh, sw), h, w)
            out = None
        return simplejpeg.decode_jpeg(data, colorspace, min_height=sh, min_width=sw, buffer=out)
    return Codec(f"jpeg/{k}", np.dtype(np.uint8), samples, dec, True)


def _fits(header: tuple, h: int, w: int) -> None:
    """ValueError (a decode error, then CorruptDataError) for a stream whose own header is larger
    than the piece's place: checked before the codec allocates what the header says."""
    jh, jw = header[:2]
    if jh > h or jw > w:
        raise ValueError(f"the JPEG stream says {jw}x{jh} pixels, more than its {w}x{h} place")


def _fix(x: float) -> int:
    return int(x * 65536 + 0.5)


_X = np.arange(256, dtype=np.int64) - 128
_CR_R = (_fix(1.402) * _X + 32768) >> 16
_CB_B = (_fix(1.772) * _X + 32768) >> 16
_CR_G = -_fix(0.71414) * _X
_CB_G = -_fix(0.34414) * _X + 32768


def ycbcr_to_rgb(a: np.ndarray) -> np.ndarray:
    """Full-range BT.601 (JFIF) YCbCr to RGB in libjpeg's fixed-point arithmetic (as openslide)."""
    y = a[..., 0].astype(np.int64)
    cb, cr = a[..., 1], a[..., 2]
    out = np.empty(a.shape, np.uint8)
    out[..., 0] = np.clip(y + _CR_R[cr], 0, 255)
    out[..., 1] = np.clip(y + ((_CB_G[cb] + _CR_G[cr]) >> 16), 0, 255)
    out[..., 2] = np.clip(y + _CB_B[cb], 0, 255)
    return out


def jpeg2000(*, ycbcr: bool = False, samples: int = 3, dtype: np.typing.DTypeLike = np.uint8) -> Codec:
    """JPEG 2000 codestreams (OpenJPEG); ``ycbcr`` when components are YCbCr without a J2K
    colour transform (Aperio 33003)."""
    if ycbcr:
        def dec(data: Any, h: int, w: int, out: np.ndarray | None) -> np.ndarray:
            return ycbcr_to_rgb(imagecodecs.jpeg2k_decode(data))
    else:
        def dec(data: Any, h: int, w: int, out: np.ndarray | None) -> np.ndarray:
            return imagecodecs.jpeg2k_decode(data)
    return Codec("jpeg2000", np.dtype(dtype), samples, dec)


def raw(*, dtype: np.typing.DTypeLike, samples: int, decompress: Callable[[bytes], bytes] | None = None,
        name: str = "none", predictor: int = 1, bits: int | None = None,
        byteorder: Literal["<", ">"] = "<") -> Codec:
    """Pixel bytes, optionally compressed (LZW, deflate, zstd, ...) and predicted (TIFF 2, 3)."""
    dtype = np.dtype(dtype)
    stored = dtype.newbyteorder(byteorder)
    nbits = bits or dtype.itemsize * 8
    packed = nbits != dtype.itemsize * 8

    def dec(data: Any, h: int, w: int, out: np.ndarray | None) -> np.ndarray:
        if decompress is not None:
            data = decompress(data)
        row = w * samples
        if packed:
            a = imagecodecs.packints_decode(data, dtype, nbits, runlen=row)
        else:
            a = np.frombuffer(data, stored)
        rows = min(h, a.size // row)
        a = a[: rows * row].reshape(rows, w, samples)
        if predictor == 3:  # rows of byte-shuffled floats: undone in the file's byte order (the dtype's)
            a = imagecodecs.floatpred_decode(a if a.flags.writeable else a.copy(), axis=-2)
        a = a.astype(dtype, copy=False)
        if predictor == 2:  # differences of values along x, in native byte order, as tifffile does
            a = imagecodecs.delta_decode(a if a.flags.writeable else a.copy(), axis=-2)
        return a

    return Codec(name, dtype, samples, dec)


def dicom_rle(*, dtype: np.typing.DTypeLike, samples: int) -> Codec:
    """DICOM RLE Lossless: byte segments per sample, decoded as planes of samples."""
    stored = np.dtype(dtype).newbyteorder("<")

    def dec(data: Any, h: int, w: int, out: np.ndarray | None) -> np.ndarray:
        a = np.frombuffer(imagecodecs.dicomrle_decode(data, stored.str), stored)[: samples * h * w]
        return a.reshape(samples, h, w).transpose(1, 2, 0).astype(dtype, copy=False)
    return Codec("dicomrle", np.dtype(dtype), samples, dec)


def bitmask() -> Codec:
    """1-bit pixels packed least significant bit first (DICOM BINARY segmentations) as 0 / 1."""
    def dec(data: Any, h: int, w: int, out: np.ndarray | None) -> np.ndarray:
        bits = np.unpackbits(np.frombuffer(data, np.uint8), count=h * w, bitorder="little")
        return bits.reshape(h, w, 1)
    return Codec("bitmask", np.dtype(np.uint8), 1, dec)


def equal_to(codec: Codec, value: int) -> Codec:
    """1 where ``codec``'s pixels equal ``value``, else 0 (one segment of a DICOM label map)."""
    def dec(data: Any, h: int, w: int, out: np.ndarray | None) -> np.ndarray:
        return (codec.decode(data, h, w) == value).view(np.uint8)
    return Codec(f"{codec.name}=={value}", np.dtype(np.uint8), 1, dec)


def image(name: str, fn: Callable[[bytes], np.ndarray], *, dtype: np.typing.DTypeLike, samples: int) -> Codec:
    """Any imagecodecs image decoder that takes only the bytes (PNG, WebP, JPEG XL, JPEG XR, LERC)."""
    return Codec(name, np.dtype(dtype), samples, lambda data, h, w, out: fn(data))


def from_tiff(compression: int, *, dtype: np.typing.DTypeLike, samples: int, photometric: int,
              planarconfig: int = 1, predictor: int = 1, bits: int = 8,
              byteorder: Literal["<", ">"] = "<", jpegtables: bytes | None = None,
              extrasamples: tuple = (), jfif: bool = False, where: str = "") -> Codec:
    """The codec for one TIFF page's tiles or strips, from its tags."""
    from tifffile import TIFF

    if compression in _TIFF_BYTE_CODECS:
        if photometric == 6:
            raise UnsupportedFormatError(f"{where}: uncompressed subsampled YCbCr is not supported")
        if predictor not in (1, 2, 3):
            raise UnsupportedFormatError(f"{where}: TIFF predictor {predictor} is not supported")
        fn = None if compression == 1 else _decompressor(TIFF, compression, where)
        return raw(dtype=dtype, samples=samples, decompress=fn, name=_TIFF_BYTE_CODECS[compression],
                   predictor=predictor, bits=bits, byteorder=byteorder)
    name = _TIFF_IMAGE_CODECS.get(compression)
    if name is None:
        raise UnsupportedFormatError(f"{where}: TIFF compression {compression} is not supported")
    if name == "jpeg":
        cs, ocs = None, None
        if planarconfig == 2:
            ocs = "GRAY"  # each plane is one component
        elif not extrasamples and photometric == 6:
            ocs = "RGB"
        elif not extrasamples and photometric == 2:
            # without a JFIF marker, an RGB-photometric JPEG holds R, G, B components (Aperio)
            cs, ocs = (None if jfif else "RGB"), "RGB"
        codec = jpeg(jpegtables, colorspace=cs, outcolorspace=ocs, samples=samples, bits=bits)
        return replace(codec, params={**codec.params, "photometric": photometric,
                                      "planarconfig": planarconfig})
    if name == "jpeg2000":
        return jpeg2000(ycbcr=compression == 33003, samples=samples, dtype=dtype)
    return image(name, _decompressor(TIFF, compression, where), dtype=dtype, samples=samples)


def _decompressor(tiff: Any, compression: int, where: str) -> Callable[[bytes], Any]:
    """tifffile's decoder for ``compression``, looked up on first use: the lookup loads an
    imagecodecs extension (~3 ms), which opening a slide whose label is LZW should not cost."""
    found: list[Callable[[bytes], Any]] = []

    def decompress(data: bytes) -> Any:
        if not found:
            try:
                found.append(tiff.DECOMPRESSORS[compression])
            except Exception as e:  # imagecodecs built without it, or a tag nobody knows
                raise UnsupportedFormatError(
                    f"{where}: TIFF compression {compression} cannot be decoded here ({e})") from None
        return found[0](data)

    return decompress
