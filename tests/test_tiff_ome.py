"""Generic TIFF/BigTIFF against openslide, tiffslide and tifffile; OME-TIFF against tifffile's
own series interpretation of the same file."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import tilescope
from tilescope.source import TableRef

openslide = pytest.importorskip("openslide")
tiffslide = pytest.importorskip("tiffslide")


def _crop(a, rect):
    x, y, w, h = rect
    return a[y:y + h, x:x + w]


@pytest.mark.parametrize("kind", ["zlib-pages", "jpeg-subifds", "classic-lzw", "zstd-planar", "stripped"])
def test_generic_tiff_levels_equal_tifffile(tiffs, kind):
    path = tiffs[kind]
    with tilescope.open(path) as s, tifffile.TiffFile(path) as tf:
        assert s.driver == "TIFF"
        sc = s.scenes[0]
        p0 = tf.pages.first
        pages = [p0, *p0.pages] if p0.subifds else list(tf.pages)
        assert [lv.size for lv in sc.levels] == [(p.imagewidth, p.imagelength) for p in pages]
        for lv, page in zip(sc.levels, pages, strict=True):
            ref = page.asarray()
            if ref.shape[0] == 3 and ref.ndim == 3:  # planar separate: (s, y, x)
                ref = np.moveaxis(ref, 0, -1)
            w, h = lv.size
            for rect in [(0, 0, w, h), (w // 3 + 5, h // 4 + 3, w // 3, h // 3)]:
                np.testing.assert_array_equal(sc.read_level(lv.index, rect), _crop(ref, rect))


@pytest.mark.parametrize("kind", ["zlib-pages", "jpeg-subifds", "classic-lzw"])
def test_generic_tiff_equals_openslide_and_tiffslide(tiffs, kind):
    path = tiffs[kind]
    rect = (300, 211, 700, 500)
    with tilescope.open(path) as s, openslide.OpenSlide(path) as o, tiffslide.TiffSlide(path) as t:
        sc = s.scenes[0]
        ours = sc.read(rect)
        np.testing.assert_array_equal(ours, np.asarray(o.read_region(rect[:2], 0, rect[2:]).convert("RGB")))
        np.testing.assert_array_equal(ours, np.asarray(t.read_region(rect[:2], 0, rect[2:]))[..., :3])
        assert s.vendor is None and o.properties["openslide.vendor"] == "generic-tiff"
        if kind != "jpeg-subifds":  # openslide does not walk SubIFDs
            assert [lv.size for lv in sc.levels] == list(o.level_dimensions)
            np.testing.assert_allclose([lv.downsample for lv in sc.levels], o.level_downsamples)
        assert sc.mpp == pytest.approx((float(o.properties["openslide.mpp-x"]),
                                        float(o.properties["openslide.mpp-y"])))
        assert sc.magnification is None


def test_bigtiff_detected_and_read(tiffs):
    with tifffile.TiffFile(tiffs["zlib-pages"]) as tf:
        assert tf.is_bigtiff
    assert tilescope.detect(tiffs["zlib-pages"]) == "TIFF"


# -- OME-TIFF -------------------------------------------------------------------------------------
def test_ome_metadata(ome):
    with tilescope.open(ome) as s:
        assert s.driver == "OME" and "<OME" in s.raw_metadata
        sc = s.scenes[0]
        assert sc.size == (1100, 900) and sc.dtype == np.uint16
        assert sc.channel_names == ("DAPI", "FITC", "TRITC") and sc.num_channels == 3
        assert (sc.num_z_slices, sc.num_t_frames) == (3, 2)
        assert sc.mpp == pytest.approx((0.325, 0.325))
        assert sc.z_resolution == pytest.approx(1.5) and sc.t_resolution == pytest.approx(2.0)
        assert [lv.size for lv in sc.levels] == [(1100, 900), (550, 450), (275, 225)]
        assert [lv.downsample for lv in sc.levels] == [1.0, 2.0, 4.0]
        assert sc.background == 0
        meta = s.metadata
        assert meta["scenes"][0]["channels"] == ["DAPI", "FITC", "TRITC"]


def test_ome_planes_equal_tifffile_series(ome):
    with tilescope.open(ome) as s, tifffile.TiffFile(ome) as tf:
        sc = s.scenes[0]
        series = tf.series[0]
        assert series.axes == "TCZYX"
        for li, level in enumerate(series.levels):
            ref = level.asarray()  # (t, c, z, y, x)
            w, h = sc.levels[li].size
            rect = (w // 5, h // 7, w // 2, h // 2)
            for t in range(2):
                for z in range(3):
                    ours = sc.read_level(li, rect, z=z, t=t)
                    np.testing.assert_array_equal(ours, _crop(ref[t, :, z].transpose(1, 2, 0), rect))


def test_ome_ranges_and_channel_selection(ome):
    with tilescope.open(ome) as s, tifffile.TiffFile(ome) as tf:
        sc = s.scenes[0]
        ref = tf.series[0].asarray()
        rect = (100, 50, 300, 200)
        a = sc.read(rect, channels=["TRITC", 0], z=(1, 3), t=(0, 2))
        assert a.shape == (2, 2, 200, 300, 2)
        want = ref[:, [2, 0], 1:3, 50:250, 100:400]  # (t, c, z, y, x)
        np.testing.assert_array_equal(a, want.transpose(0, 2, 3, 4, 1))
        b = sc.read(rect, channels=1, z=2, t=(1, 2))
        assert b.shape == (1, 200, 300, 1)
        np.testing.assert_array_equal(b[0, ..., 0], ref[1, 1, 2, 50:250, 100:400])


def test_ome_uint8_four_channels(ome8):
    with tilescope.open(ome8) as s, tifffile.TiffFile(ome8) as tf:
        sc = s.scenes[0]
        assert sc.num_channels == 4 and sc.dtype == np.uint8 and sc.compression == "zstd"
        ref = tf.series[0].asarray()  # (t, c, z, y, x) squeezed by tifffile
        ref = ref.reshape(4, 500, 700)
        np.testing.assert_array_equal(sc.read(), ref.transpose(1, 2, 0))


@pytest.mark.parametrize("byteorder, bigtiff", [("<", False), (">", False), ("<", True)])
def test_long_piece_tables_read_from_the_file_equal_tifffile(tmp_path, byteorder, bigtiff):
    # > 256 tiles: tilescope reads the offset and byte-count tables from the file as arrays; they
    # must equal tifffile's parse (LONG in both byte orders, LONG8 in BigTIFF) and so must the pixels
    rng = np.random.default_rng(3)
    img = rng.integers(0, 255, (600, 700), dtype=np.uint8)
    path = tmp_path / "many.tif"
    tifffile.imwrite(path, img, tile=(16, 16), byteorder=byteorder, bigtiff=bigtiff, compression="zlib")
    with tifffile.TiffFile(path) as tf:
        page = tf.pages.first
        want_offsets, want_counts = list(page.dataoffsets), list(page.databytecounts)
    assert len(want_offsets) > 256
    tilescope._PARSED.clear()
    with tilescope.open(path) as s:
        pieces = s.scenes[0].levels[0].layout.planes[0, 0][0].pieces
        # left in the file at open, read at the first fetch (one read each)
        assert isinstance(pieces.offsets, TableRef) and isinstance(pieces.counts, TableRef)
        assert len(pieces) == len(want_offsets)
        np.testing.assert_array_equal(s.scenes[0].read()[..., 0], img)
        assert list(pieces.offsets) == want_offsets and list(pieces.counts) == want_counts


@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.uint16, np.int32])
@pytest.mark.parametrize("predictor", [False, True])
def test_predicted_samples_in_either_byte_order(tmp_path, byteorder, dtype, predictor):
    """Floating-point prediction (3) shuffles each row's bytes in the file's byte order: a
    big-endian float file was read as garbage when it was undone after the swap."""
    rng = np.random.default_rng(9)
    data = (rng.random((90, 130, 3)) * 1000).astype(dtype)
    p = str(tmp_path / "p.tif")
    tifffile.imwrite(p, data, byteorder=byteorder, tile=(32, 32), predictor=predictor, compression="zlib",
                     photometric="rgb")
    with tilescope.open(p) as s:
        assert np.array_equal(s.scenes[0].read(), tifffile.imread(p))
