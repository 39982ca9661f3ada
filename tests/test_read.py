"""The shared read path: scaled reads, sizes, planes, threads and the cache."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import tilescope
from tilescope import TileCache, engine
from tilescope.engine import resample
from tools.synth import area_downsample

RECT = (256, 512, 2048, 1024)


def test_downscale_from_level0_is_an_area_filter(svs):
    # factor 2 is served from level 0: without DCT scaling, within 1 (rounding) of the block mean
    with tilescope.open(svs, dct_scaling=False) as s:
        sc = s.scenes[0]
        full = sc.read(RECT)
        ours = sc.read(RECT, size=(1024, 512))
    assert np.abs(ours.astype(int) - area_downsample(full, 2)).max() <= 1


@pytest.mark.parametrize("k", [2, 3, 8])
def test_dct_scaled_reads_stay_close_to_the_area_filter(svs, k):
    # by default JPEG tiles are decoded at 1/2 (1/4, 1/8) in the DCT domain when the output is at
    # least that much smaller: libjpeg's reduced IDCT is its own low-pass filter, so the stated
    # tolerance is on the mean and the 99.9th percentile (edges of sharp nuclei differ most)
    w, h = RECT[2:]
    size = (w // k, h // k)
    with tilescope.open(svs, dct_scaling=False) as s:
        sc = s.scenes[0]
        exact = sc.read(RECT, size=size)
        if k == 3:  # the same resample (Pillow's BOX at 1.5) from an exactly averaged half size
            exact = resample(area_downsample(sc.read(RECT), 2), (0, 0, w // 2, h // 2),
                             np.empty((size[1], size[0], 3), np.uint8))
    with tilescope.open(svs) as s:
        ours = s.scenes[0].read(RECT, size=size)
    d = np.abs(ours.astype(int) - exact)
    assert d.mean() < 1.0 and np.percentile(d, 99.9) <= 12, (d.mean(), np.percentile(d, 99.9))


def test_downscale_uses_the_pyramid(svs):
    with tilescope.open(svs) as s:
        sc = s.scenes[0]
        x, y, w, h = RECT
        lv1 = sc.read_level(1, (x // 4, y // 4, w // 4, h // 4))
        # exactly level 1's downsample: level 1's pixels, untouched
        np.testing.assert_array_equal(sc.read(RECT, size=(w // 4, h // 4)), lv1)
        # between levels: level 1 area-resampled, within 1
        ours8 = sc.read(RECT, size=(w // 8, h // 8))
        assert np.abs(ours8.astype(int) - area_downsample(lv1, 2)).max() <= 1
        # stated tolerance against an area reference from level 0: the stored level's JPEG error
        ref = area_downsample(sc.read(RECT), 8).astype(int)
        d = np.abs(ours8.astype(int) - ref)
        assert d.mean() < 8 and np.percentile(d, 99) < 40


def test_size_keeps_aspect_and_thumbnail(svs):
    with tilescope.open(svs) as s:
        sc = s.scenes[0]
        assert sc.read(size=(512, 0)).shape == (380, 512, 3)
        assert sc.read(size=(0, 100)).shape == (100, 135, 3)
        assert sc.read((10, 10, 999, 333), size=(100, 0)).shape == (33, 100, 3)
        # upscaling works too (a 2x2 region to 8x8 repeats pixels)
        up = sc.read((1000, 1000, 2, 2), size=(8, 8))
        np.testing.assert_array_equal(up[::4, ::4], sc.read((1000, 1000, 2, 2)))


def test_scaled_read_partly_outside_fills_background(svs):
    with tilescope.open(svs) as s:
        sc = s.scenes[0]
        w, h = sc.size
        a = sc.read((w - 400, h - 400, 800, 800), size=(100, 100))
        assert (a[60:, :] == 255).all() and (a[:, 60:] == 255).all()
        assert (a[:45, :45] < 255).any()


def test_fluorescence_background_is_zero(ome):
    with tilescope.open(ome) as s:
        sc = s.scenes[0]
        a = sc.read((-50, -50, 100, 100), size=(50, 50), z=1)
        assert (a[:20, :20] == 0).all() and a.dtype == np.uint16


def test_uint16_downscale_is_area(ome):
    with tilescope.open(ome) as s:
        sc = s.scenes[0]
        full = sc.read((0, 0, 1100, 900), t=1)
        # 1100x900 -> 366x300 is served from level 0 (ds 3 < level 2's 4) with a fractional box
        small = sc.read(size=(275, 225), t=1)
        np.testing.assert_array_equal(small, sc.read_level(2, t=1))
        half = sc.read(size=(550, 450), t=1)
        np.testing.assert_array_equal(half, sc.read_level(1, t=1))
        third = sc.read(size=(366, 300), t=1)
        assert third.shape == (300, 366, 3) and third.dtype == np.uint16
        assert abs(float(third.mean()) - float(full.mean())) < 0.01 * float(full.mean())


def test_threads_read_the_same_pixels(svs):
    rng = np.random.default_rng(0)
    rects = [(int(x), int(y), 300, 200) for x, y in zip(rng.integers(0, 2600, 24), rng.integers(0, 1900, 24),
                                                         strict=True)]
    with tilescope.open(svs, cache=TileCache(0), threads=1) as s:
        want = [s.scenes[0].read(r) for r in rects]
    with tilescope.open(svs, cache=TileCache(8 << 20)) as s, ThreadPoolExecutor(6) as pool:
        got = list(pool.map(s.scenes[0].read, rects))  # a read that raises fails the test here
    for i, w in enumerate(want):
        np.testing.assert_array_equal(got[i], w)


def test_large_reads_on_helper_threads_are_bit_identical(svs):
    # reads of many tiles go to helper threads (the threading rule); pixels must not depend on it
    with tilescope.open(svs, cache=TileCache(0), threads=1) as s:
        want = [s.scenes[0].read(RECT), s.scenes[0].read(RECT, size=(700, 350))]
    with tilescope.open(svs, cache=TileCache(0), threads=4) as s:
        assert engine._threads_for(_tasks(s, RECT), 4) > 1
        got = [s.scenes[0].read(RECT), s.scenes[0].read(RECT, size=(700, 350))]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def _tasks(slide, rect):
    level = slide.scenes[0].levels[0]
    plane = level.layout.planes[0, 0][0]
    x, y, w, h = rect
    return plane.tasks((x, y, x + w, y + h), (slice(None), slice(None)))[0]


def test_threading_rule_keeps_small_reads_on_one_thread(svs):
    with tilescope.open(svs) as s:
        assert engine._threads_for(_tasks(s, (0, 0, 200, 200)), 8) == 1  # one tile: no thread to share it with
        many = _tasks(s, (0, 0, 2048, 2048))
        assert engine._threads_for(many, 8) > 1
        assert engine._threads_for(many, 1) == 1


def test_a_decode_error_on_a_helper_thread_reaches_the_caller(svs, tmp_path):
    bad = tmp_path / "bad.svs"
    with open(svs, "rb") as f:
        data = bytearray(f.read())
    with tilescope.open(svs) as s:
        pieces = s.scenes[0].levels[0].layout.planes[0, 0][0].pieces
        for o in pieces.offsets[1::2]:  # every other level-0 tile loses its JPEG start marker
            data[int(o):int(o) + 2] = b"\0\0"
    bad.write_bytes(bytes(data))
    with tilescope.open(bad, cache=TileCache(0), threads=4) as s, pytest.raises(tilescope.CorruptDataError):
        s.scenes[0].read(RECT)


def test_helpers_work_in_a_forked_child(svs):
    # the parked helper threads do not exist in a child made by fork: it must start its own
    with tilescope.open(svs, cache=TileCache(0), threads=4) as s:
        want = s.scenes[0].read(RECT)
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(1) as pool:
            got = pool.apply_async(_read_rect, (s.path,)).get(timeout=60)
    np.testing.assert_array_equal(got, want)


def test_tile_prefetch_works_in_a_forked_child(svs):
    with tilescope.open(svs) as s:
        want = [t.array for t in s.scenes[0].tiles(512)]  # starts the prefetch pool here
        with multiprocessing.get_context("fork").Pool(1) as pool:
            got = pool.apply_async(_iterate_tiles, (s.path,)).get(timeout=60)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def _iterate_tiles(path):
    with tilescope.open(path) as s:
        return [t.array for t in s.scenes[0].tiles(512)]


def _read_rect(path):
    with tilescope.open(path, cache=TileCache(0), threads=4) as s:
        return s.scenes[0].read(RECT)


def test_cache_serves_repeated_reads(svs):
    cache = TileCache(16 << 20)
    with tilescope.open(svs, cache=cache) as s:
        a = s.scenes[0].read((0, 0, 512, 512))
        misses = cache.misses
        b = s.scenes[0].read((0, 0, 512, 512))
        assert cache.misses == misses and cache.hits >= 4
        assert cache.nbytes <= 16 << 20
    np.testing.assert_array_equal(a, b)


def test_cache_is_bounded():
    cache = TileCache(1 << 20)
    for i in range(100):
        cache.put(i, np.zeros(65536, np.uint8))
    assert cache.nbytes <= 1 << 20 and cache.get(99) is not None and cache.get(0) is None


def test_metadata_is_json_serializable(svs, ome):
    import json

    for p in (svs, ome):
        with tilescope.open(p) as s:
            text = json.dumps(s.metadata)
            assert json.loads(text)["driver"] == s.driver


def test_scene_lookup(svs):
    with tilescope.open(svs) as s:
        assert s.scene(0) is s.scene("main") is s.scenes[0]
        with pytest.raises(tilescope.InvalidRequestError):
            s.scene("nope")
        with pytest.raises(tilescope.InvalidRequestError):
            s.scene(3)


def test_drivers_and_detect(svs, ome, tiffs):
    assert tilescope.drivers() == ["SVS", "OME", "NDPI", "Philips", "QPTIFF", "SCN", "Ventana", "ScanImage", "CZI", "AFI", "DICOM", "TIFF", "Pillow", "OMEZarr", "GDAL", "DICOMweb"]
    assert tilescope.detect(svs) == "SVS"
    assert tilescope.detect(ome) == "OME"
    assert tilescope.detect(tiffs["stripped"]) == "TIFF"
    with tilescope.open(svs, driver="TIFF") as s:  # forcing the generic reader on an SVS
        assert s.driver == "TIFF" and s.scenes[0].size == (2900, 2150)


def test_reopen_reuses_the_parse_and_notices_changes(tmp_path):
    import os

    from tools import synth

    path = str(tmp_path / "reopen.svs")
    synth.write_svs(path, 700, 500, downsamples=(1, 4), associated=("label",))
    with tilescope.open(path) as a:
        first = a.scenes[0].read((0, 0, 300, 300))
    with tilescope.open(path) as b:  # served from the parsed-slide cache, on a new descriptor
        assert b.scenes[0].size == (700, 500) and b.scenes[0]._slide is b
        np.testing.assert_array_equal(b.scenes[0].read((0, 0, 300, 300)), first)
        assert b.associated["label"].shape[2] == 3
    assert a.closed and b.closed
    with pytest.raises(tilescope.SlideClosedError):
        a.scenes[0].read((0, 0, 1, 1))
    with tilescope.open(path, driver="TIFF") as c:  # a forced driver is parsed on its own
        assert c.driver == "TIFF"
    synth.write_svs(path, 900, 600, downsamples=(1,), associated=())  # same path, new content
    os.utime(path, ns=(1, 1))  # even with an old mtime: size and inode differ
    with tilescope.open(path) as d:
        assert d.scenes[0].size == (900, 600) and len(d.scenes[0].levels) == 1


def test_srgb_conversion_equals_openslide_and_imagecms(fixtures_dir):
    """``srgb=True`` converts through the embedded ICC profile as openslide-python's documented
    recipe does (ImageCms, the profile's default intent), for scene reads and associated images."""
    import io
    import os

    from PIL import ImageCms

    highdicom = pytest.importorskip("highdicom")
    openslide = pytest.importorskip("openslide")

    from tools import synth

    with open(os.path.join(os.path.dirname(highdicom.__file__), "_icc_profiles",
                           "sRGB_v4_ICC_preference.icc"), "rb") as f:
        icc = f.read()
    path = synth.write_svs(fixtures_dir / "icc.svs", 1200, 900, downsamples=(1, 4), icc_profile=icc, seed=9)
    o = openslide.OpenSlide(path)
    profile = ImageCms.ImageCmsProfile(io.BytesIO(o.color_profile.tobytes()))
    to_srgb = ImageCms.buildTransform(profile, ImageCms.createProfile("sRGB"), "RGB", "RGB",
                                      ImageCms.getDefaultIntent(profile))
    rect = (100, 200, 640, 480)
    want = np.asarray(to_srgb.apply(o.read_region(rect[:2], 0, rect[2:]).convert("RGB")))
    with tilescope.open(path, srgb=True) as s, tilescope.open(path) as plain:
        assert s.icc_profile == icc
        got = s.scenes[0].read(rect)
        np.testing.assert_array_equal(got, want)
        assert np.abs(plain.scenes[0].read(rect).astype(int) - got).mean() > 1  # a real conversion
        np.testing.assert_array_equal(s.associated["macro"],
                                      np.asarray(to_srgb.apply(o.associated_images["macro"].convert("RGB"))))
        assert s.scenes[0].read(rect, channels=["R"]).shape == (480, 640, 1)  # one channel: as stored
    o.close()
    bad = synth.write_svs(fixtures_dir / "bad-icc.svs", 600, 400, downsamples=(1,), icc_profile=b"not a profile")
    with tilescope.open(bad, srgb=True) as s, pytest.raises(tilescope.CorruptDataError, match="ICC profile"):
        s.scenes[0].read((0, 0, 10, 10))


def test_one_compression_vocabulary(svs_variants, tiffs, converted):
    """Scene.compression names the codec family the same way for every format; the format's own
    value is compression_raw (TIFF tag and tifffile's name, DICOM transfer syntax UID)."""
    from tilescope.codecs import COMPRESSIONS

    want = {"jpeg-rgb": "jpeg", "jpeg2000-rgb": "jpeg2000", "jpeg2000-ycbcr": "jpeg2000", "lzw": "lzw",
            "none": "none", "bigtiff": "jpeg", "zlib-pages": "deflate", "jpeg-subifds": "jpeg",
            "classic-lzw": "lzw", "zstd-planar": "zstd", "stripped": "deflate"}
    for name, path in {**svs_variants, **tiffs}.items():
        with tilescope.open(path) as s:
            sc = s.scenes[0]
            assert sc.compression == want[name] and sc.compression in COMPRESSIONS, name
            assert s.metadata["scenes"][0]["compression"] == want[name]
    with tilescope.open(svs_variants["jpeg2000-ycbcr"]) as s:
        assert s.scenes[0].compression_raw == "33003 APERIO_JP2000_YCBC"
    with tilescope.open(converted[1]) as s:  # the SVS's JPEG tiles, copied into DICOM
        assert s.scenes[0].compression == "jpeg" and s.scenes[0].compression_raw == "1.2.840.10008.1.2.4.50"
