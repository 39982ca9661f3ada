"""Plain rasters through Pillow, and detection order across drivers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import tilescope
from tools.synth import area_downsample


def _picture(h=300, w=500):
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 3) % 256], axis=-1).astype(np.uint8)
    return rgb


@pytest.mark.parametrize("ext,kw", [("png", {}), ("jpg", {"quality": 90}), ("bmp", {}), ("gif", {}),
                                    ("webp", {"lossless": True})])
def test_formats_equal_pillow(tmp_path, ext, kw):
    p = str(tmp_path / f"pic.{ext}")
    Image.fromarray(_picture()).save(p, **kw)
    ref = np.asarray(Image.open(p).convert("RGB"))
    with tilescope.open(p) as s:
        assert s.driver == "Pillow" and tilescope.detect(p) == "Pillow"
        sc = s.scenes[0]
        assert sc.size == (500, 300) and sc.channel_names == ("R", "G", "B") and sc.dtype == np.uint8
        np.testing.assert_array_equal(sc.read(), ref)
        np.testing.assert_array_equal(sc.read((100, 50, 64, 32)), ref[50:82, 100:164])
        small = sc.read(size=(250, 150))
        assert np.abs(small.astype(int) - area_downsample(ref, 2)).max() <= 1


@pytest.mark.parametrize("mode,dtype,names", [("L", np.uint8, ("Y",)), ("LA", np.uint8, ("Y", "A")),
                                              ("RGBA", np.uint8, ("R", "G", "B", "A")),
                                              ("P", np.uint8, ("R", "G", "B")),
                                              ("I;16", np.uint16, ("Y",))])
def test_modes(tmp_path, mode, dtype, names):
    p = str(tmp_path / f"m-{mode.replace(';', '')}.png")
    if mode == "I;16":
        im = Image.fromarray(_picture()[..., 0].astype(np.uint16) * 200)
    else:
        im = Image.fromarray(_picture()).convert(mode)
    im.save(p)
    with tilescope.open(p) as s:
        sc = s.scenes[0]
        assert sc.dtype == dtype and sc.channel_names == names
        ref = np.asarray(Image.open(p).convert("RGB" if mode == "P" else Image.open(p).mode))
        np.testing.assert_array_equal(sc.read(), ref.reshape(ref.shape[0], ref.shape[1], -1))


def test_decoded_once(tmp_path):
    p = str(tmp_path / "once.png")
    Image.fromarray(_picture(1200, 1600)).save(p)
    cache = tilescope.TileCache(16 << 20)  # the 5.8 MB image is above a quarter of it
    with tilescope.open(p, cache=cache) as s:
        sc = s.scenes[0]
        calls = []
        codec = sc.levels[0].layout.planes[(0, 0)][0].codec
        orig = codec._decode
        object.__setattr__(codec, "_decode", lambda *a: calls.append(1) or orig(*a))
        try:
            for x in range(0, 1600, 400):
                sc.read((x, 100, 300, 300))
        finally:
            object.__setattr__(codec, "_decode", orig)
        assert len(calls) == 1


def test_decompression_bomb_guard(tmp_path):
    p = str(tmp_path / "big.png")
    Image.fromarray(_picture(1000, 1000)).save(p)
    with tilescope.open(p, max_decode_pixels=500_000) as s:
        with pytest.raises(tilescope.TooLargeError, match="max_decode_pixels"):
            s.scenes[0].read((0, 0, 10, 10))
        assert s.scenes[0].size == (1000, 1000)  # the header is read, the pixels are not


def test_corrupt_and_unknown(tmp_path):
    p = tmp_path / "cut.png"
    Image.fromarray(_picture()).save(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    with tilescope.open(str(p)) as s, pytest.raises(tilescope.CorruptDataError, match=r"cut\.png"):
        s.scenes[0].read()
    q = tmp_path / "notes.txt"
    q.write_text("not an image")
    with pytest.raises(tilescope.UnsupportedFormatError, match=r"notes\.txt"):
        tilescope.open(str(q))


def test_detection_order(svs, ome, tiffs, tmp_path):
    # the most specific driver wins: Aperio and OME before the generic TIFF reader, which keeps
    # every TIFF (stripped ones too) away from Pillow
    assert tilescope.drivers() == ["SVS", "OME", "NDPI", "Philips", "QPTIFF", "SCN", "Ventana", "ScanImage", "CZI", "AFI", "DICOM", "TIFF", "Pillow", "OMEZarr", "GDAL", "DICOMweb"]
    assert [tilescope.detect(p) for p in (svs, ome, tiffs["stripped"])] == ["SVS", "OME", "TIFF"]
    plain = str(tmp_path / "plain.tif")
    Image.fromarray(_picture()).save(plain)  # Pillow's own TIFF writer, one strip per few rows
    assert tilescope.detect(plain) == "TIFF"
    with tilescope.open(plain) as s:
        np.testing.assert_array_equal(s.scenes[0].read(), _picture())
