"""tilescope.openslide against openslide-python (openslide-bin) on the same files, call by call."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
from PIL import Image

from tilescope import openslide as ours
from tilescope.openslide import deepzoom as our_dz

real = pytest.importorskip("openslide")
real_dz = pytest.importorskip("openslide.deepzoom")


def _pair(path):
    return real.OpenSlide(path), ours.OpenSlide(path)


@pytest.fixture(scope="module")
def scn(tmp_path_factory):
    """A Leica SCN with two main images on its collection (openslide composites them)."""
    from tools import synth

    return synth.write_scn(tmp_path_factory.mktemp("scn") / "slide.scn")


@pytest.fixture(params=["svs", "svs_exact", "tiff", "dicom", "scn"])
def slide_path(request, svs, svs_exact, tiffs):
    if request.param == "scn":
        return request.getfixturevalue("scn")
    if request.param == "dicom":  # wsidicomizer's conversion of an SVS: any level-0 file of it
        pydicom = pytest.importorskip("pydicom")
        folder = request.getfixturevalue("converted")[1]
        return next(p for p in (os.path.join(folder, n) for n in sorted(os.listdir(folder)))
                    if pydicom.dcmread(p, stop_before_pixels=True).ImageType[2] == "VOLUME"
                    and pydicom.dcmread(p, stop_before_pixels=True).TotalPixelMatrixColumns == 1100)
    return {"svs": svs, "svs_exact": svs_exact, "tiff": tiffs["zlib-pages"]}[request.param]


def test_properties_and_levels(slide_path):
    a, b = _pair(slide_path)
    with a, b:
        pa, pb = dict(a.properties), dict(b.properties)
        hashed = pa["openslide.vendor"] in ("aperio", "generic-tiff", "dicom")  # quickhash-1 as openslide's
        assert set(pa) - set(pb) == (set() if hashed else {"openslide.quickhash-1"})
        assert set(pb) <= set(pa)
        assert {k: pb[k] for k in pb} == {k: pa[k] for k in pb}
        assert a.level_count == b.level_count
        assert a.dimensions == b.dimensions and a.level_dimensions == b.level_dimensions
        assert a.level_downsamples == b.level_downsamples
        for ds in [0.5, 1, 1.5, 3.999, 4, 4.2, 15.9, 16, 16.04, 16.06, 17, 100]:
            assert a.get_best_level_for_downsample(ds) == b.get_best_level_for_downsample(ds), ds
        assert ours.OpenSlide.detect_format(slide_path) == real.OpenSlide.detect_format(slide_path)


def test_read_region_equal(slide_path):
    a, b = _pair(slide_path)
    w, h = a.dimensions
    calls = [((100, 200), 0, (300, 200)), ((-50, -70), 0, (120, 100)), ((w - 40, h - 30), 0, (100, 90)),
             ((4 * 100, 4 * 90), 1, (150, 120)), ((w - 4 * 20, 0), 1, (60, 30)), ((0, 0), 0, (0, 0)),
             ((10, 10), 0, (0, 7)), ((w + 10, h + 10), 0, (5, 5)), ((0, 0), a.level_count - 1,
                                                                    a.level_dimensions[-1])]
    with a, b:
        for args in calls:
            (x, y), level, _ = args
            ds = a.level_downsamples[level]
            if not (x / ds).is_integer() or not (y / ds).is_integer():
                continue  # between level pixels openslide interpolates, tilescope takes the nearest
            x, y = np.asarray(a.read_region(*args)), np.asarray(b.read_region(*args))
            assert x.shape == y.shape, args
            np.testing.assert_array_equal(x, y, err_msg=str(args))
        for bad in [(-1, 5), (5, -1)]:
            with pytest.raises(real.OpenSlideError):
                a.read_region((0, 0), 0, bad)
            with pytest.raises(ours.OpenSlideError, match="negative"):
                b.read_region((0, 0), 0, bad)


def test_thumbnail_and_associated_equal(slide_path):
    a, b = _pair(slide_path)
    with a, b:
        for size in [(300, 300), (1000, 200), (64, 64)]:
            np.testing.assert_array_equal(np.asarray(a.get_thumbnail(size)), np.asarray(b.get_thumbnail(size)))
        assert set(a.associated_images) == set(b.associated_images)
        for name, im in a.associated_images.items():
            mine = b.associated_images[name]
            assert mine.mode == im.mode == "RGBA"
            assert mine.info.get("icc_profile") == im.info.get("icc_profile")  # an image's own (DICOM) only
            np.testing.assert_array_equal(np.asarray(im), np.asarray(mine))


def _same_profiles(path: str) -> None:
    """The slide's, a region's and each associated image's ICC profile: openslide's, byte for byte."""
    a, b = _pair(path)
    with a, b:
        assert b.color_profile.tobytes() == a.color_profile.tobytes()
        assert b.properties["openslide.icc-size"] == a.properties["openslide.icc-size"]
        assert b.read_region((0, 0), 0, (4, 4)).info["icc_profile"] == a.read_region((0, 0), 0, (4, 4)).info[
            "icc_profile"]
        for name in a.associated_images:
            assert b.associated_images[name].info.get("icc_profile") == \
                a.associated_images[name].info.get("icc_profile"), name


def test_color_profile(svs_exact, svs):
    _same_profiles(svs_exact)
    with ours.OpenSlide(svs) as b:
        assert b.color_profile is None


def test_dicom_color_profile_equals_openslides(svs_exact, tmp_path):
    """wsidicomizer's DICOM of an SVS with an ICC profile: every instance's optical path carries a
    profile (the label's and overview's their own): the slide's, the associated images' and the
    regions' profiles are byte for byte openslide's."""
    pydicom = pytest.importorskip("pydicom")
    WsiDicomizer = pytest.importorskip("wsidicomizer").WsiDicomizer
    from fuzz.seeds import turbojpeg

    turbojpeg()
    out = tmp_path / "dcm"
    WsiDicomizer.convert(svs_exact, str(out), include_label=True, include_overview=True)
    level0 = next(str(p) for p in sorted(out.iterdir())
                  if pydicom.dcmread(p, stop_before_pixels=True).ImageType[2] == "VOLUME"
                  and pydicom.dcmread(p, stop_before_pixels=True).TotalPixelMatrixColumns == 2048)
    _same_profiles(level0)


@pytest.mark.parametrize("tile_size,overlap,limit_bounds,name", [
    (254, 1, False, "svs"), (256, 0, False, "svs"), (510, 1, True, "svs"), (126, 4, False, "svs"),
    (254, 1, True, "scn"), (254, 1, False, "scn")])
def test_deepzoom_equal(request, svs_exact, tile_size, overlap, limit_bounds, name):
    a, b = _pair(svs_exact if name == "svs" else request.getfixturevalue("scn"))
    with a, b:
        za = real_dz.DeepZoomGenerator(a, tile_size, overlap, limit_bounds)
        zb = our_dz.DeepZoomGenerator(b, tile_size, overlap, limit_bounds)
        assert (za.level_count, za.level_tiles, za.level_dimensions, za.tile_count) == \
            (zb.level_count, zb.level_tiles, zb.level_dimensions, zb.tile_count)
        assert za.get_dzi("jpeg") == zb.get_dzi("jpeg")
        for level in range(za.level_count):
            cols, rows = za.level_tiles[level]
            for addr in {(0, 0), (cols - 1, rows - 1), (cols // 2, rows // 2), (cols - 1, 0)}:
                assert za.get_tile_coordinates(level, addr) == zb.get_tile_coordinates(level, addr)
                assert za.get_tile_dimensions(level, addr) == zb.get_tile_dimensions(level, addr)
                np.testing.assert_array_equal(np.asarray(za.get_tile(level, addr)),
                                              np.asarray(zb.get_tile(level, addr)), err_msg=f"{level} {addr}")
        with pytest.raises(ValueError):
            zb.get_tile(za.level_count, (0, 0))
        with pytest.raises(ValueError):
            zb.get_tile(0, (5, 5))


def test_cache_context_and_closed(svs_exact):
    cache = ours.OpenSlideCache(8 << 20)
    with ours.OpenSlide(svs_exact) as b:
        b.set_cache(cache)
        first = np.asarray(b.read_region((0, 0), 0, (512, 512)))
        np.testing.assert_array_equal(first, np.asarray(b.read_region((0, 0), 0, (512, 512))))
        assert cache._cache.hits >= 4
    with pytest.raises(TypeError):
        ours.OpenSlide(svs_exact).set_cache(object())


def _outcome(fn):
    """What a call does, comparable across the two modules: ("ok", value) or (error type, text)."""
    try:
        return "ok", fn()
    except Exception as e:
        return type(e).__name__, str(e)


def test_a_closed_slide_fails_as_openslide(svs_exact):
    """Every operation on a closed slide, close() again included, fails as openslide-python's
    does: ctypes.ArgumentError with its message (the maps fail when used, not when taken)."""
    import ctypes

    calls = {
        "close": lambda s: s.close(),
        "read_region": lambda s: s.read_region((0, 0), 0, (10, 10)),
        "level_count": lambda s: s.level_count,
        "dimensions": lambda s: s.dimensions,
        "level_downsamples": lambda s: s.level_downsamples,
        "best level": lambda s: s.get_best_level_for_downsample(4),
        "thumbnail": lambda s: s.get_thumbnail((10, 10)),
        "set_cache": lambda s: s.set_cache((real if isinstance(s, real.OpenSlide) else ours).OpenSlideCache(9)),
        "properties taken": lambda s: type(s.properties).__name__,
        "properties used": lambda s: list(s.properties),
        "associated taken": lambda s: type(s.associated_images).__name__,
        "associated used": lambda s: len(s.associated_images),
    }
    a, b = _pair(svs_exact)
    a.close()
    b.close()
    for name, call in calls.items():
        assert _outcome(lambda c=call: c(a)) == _outcome(lambda c=call: c(b)), name
    with pytest.raises(ctypes.ArgumentError):
        b.close()


def test_wrong_arguments_fail_as_openslide():
    for arg in (None, 3, 1.5, object):
        assert _outcome(lambda v=arg: real.OpenSlide(v)) == _outcome(lambda v=arg: ours.OpenSlide(v)), arg
    for arg in (-1, 1.5, "3", None):
        assert _outcome(lambda v=arg: real.OpenSlideCache(v)) == \
            _outcome(lambda v=arg: ours.OpenSlideCache(v)), arg
    for arg in (0, 1 << 20, True):
        assert repr(real.OpenSlideCache(arg)) == repr(ours.OpenSlideCache(arg))


def test_maps_print_and_order_as_openslide(svs):
    a, b = _pair(svs)
    with a, b:
        pa, pb = repr(a.properties), repr(b.properties)
        assert pb.startswith("<_PropertyMap {'aperio.AppMag': ") and pa.startswith(pb[:30])
        assert list(b.properties) == [k for k in a.properties if k in b.properties]  # openslide's order
        assert "tiff.ResolutionUnit" in b.properties
        ra, rb = repr(a.associated_images), repr(b.associated_images)
        assert rb.startswith("<_AssociatedImageMap {'label': <PIL.Image.Image image mode=RGBA size=")
        assert [k for k in a.associated_images] == [k for k in b.associated_images]
        assert ra.split(" at 0x")[0] == rb.split(" at 0x")[0]


def test_paths_as_bytes_pathlike_and_non_ascii(svs_exact, tmp_path):
    import pathlib

    odd = tmp_path / "schnitt ü é 切片.svs"
    shutil.copy(svs_exact, odd)
    for path in (str(odd), os.fsencode(str(odd)), pathlib.Path(odd)):
        assert ours.OpenSlide.detect_format(path) == real.OpenSlide.detect_format(path) == "aperio"
        with real.OpenSlide(path) as a, ours.OpenSlide(path) as b:
            assert a.dimensions == b.dimensions and repr(a) == repr(b)
        with real.open_slide(path) as a, ours.open_slide(path) as b:
            assert type(a).__name__ == type(b).__name__ == "OpenSlide"


def test_files_it_cannot_open_fail_as_openslide(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for path in (str(text), str(tmp_path / "missing.svs")):
        for fn in ("OpenSlide", "ImageSlide", "open_slide"):
            ra = _outcome(lambda f=fn, p=path: getattr(real, f)(p))
            rb = _outcome(lambda f=fn, p=path: getattr(ours, f)(p))
            assert ra[0] == rb[0], (fn, path, ra, rb)  # the same types (messages say more in ours)
            if fn != "OpenSlide":
                assert ra == rb


def test_lowlevel_is_there_for_feature_tests_and_calls(svs_exact):
    from tilescope.openslide import lowlevel as ours_ll

    real_ll = real.lowlevel
    names = [n for n, f in vars(real_ll).items()
             if not n.startswith("_") and "available" in getattr(f, "__dict__", {})]
    assert len(names) > 15
    for n in names:
        assert getattr(ours_ll, n).available, n
    assert ours_ll.OpenSlideError is ours.OpenSlideError
    assert ours_ll.OpenSlideUnsupportedFormatError is ours.OpenSlideUnsupportedFormatError
    a, b = _pair(svs_exact)
    with a, b:
        for n, args in [("get_level_count", ()), ("get_level_dimensions", (1,)), ("get_level_downsample", (2,)),
                        ("get_property_names", ()), ("get_associated_image_names", ()),
                        ("get_associated_image_dimensions", ("label",)), ("read_icc_profile", ()),
                        ("get_best_level_for_downsample", (5.0,)), ("get_property_value", ("openslide.mpp-x",))]:
            want = getattr(real_ll, n)(a._osr, *args)
            got = getattr(ours_ll, n)(b._osr, *args)
            assert got == want, n
    assert ours_ll.detect_vendor(svs_exact) == real_ll.detect_vendor(svs_exact)


def test_detect_format_of_urls():
    assert ours.OpenSlide.detect_format("dicomweb+http://127.0.0.1:9/dicom-web") == "dicom"


def test_errors_are_sticky_like_openslide(svs_exact, tmp_path):
    path = str(tmp_path / "corrupt.svs")
    shutil.copy(svs_exact, path)
    with tifffile.TiffFile(path) as tf:
        off, n = int(tf.pages[0].dataoffsets[0]), int(tf.pages[0].databytecounts[0])
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(b"\x00" * n)
    for mod in (real, ours):
        with mod.OpenSlide(path) as s:
            s.read_region((1024, 1024), 0, (10, 10))  # an intact tile reads
            with pytest.raises(mod.OpenSlideError):
                s.read_region((0, 0), 0, (10, 10))
            with pytest.raises(mod.OpenSlideError):  # and now nothing does
                s.read_region((1024, 1024), 0, (10, 10))


def test_unsupported_and_open_slide(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for mod in (real, ours):
        with pytest.raises(mod.OpenSlideUnsupportedFormatError):
            mod.OpenSlide(str(text))
        with pytest.raises(mod.OpenSlideUnsupportedFormatError):
            mod.OpenSlide(str(tmp_path / "missing.svs"))
        assert mod.OpenSlide.detect_format(str(text)) is None
    png = str(tmp_path / "plain.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(png)
    a, b = real.open_slide(png), ours.open_slide(png)
    assert isinstance(b, ours.ImageSlide) and isinstance(a, real.ImageSlide)
    assert ours.ImageSlide.detect_format(png) == real.ImageSlide.detect_format(png) == "PNG"
    assert a.dimensions == b.dimensions and a.level_downsamples == b.level_downsamples
    for args in [((-10, -10), 0, (50, 40)), ((100, 90), 0, (100, 100)), ((0, 0), 0, (160, 120))]:
        np.testing.assert_array_equal(np.asarray(a.read_region(*args)), np.asarray(b.read_region(*args)))
    np.testing.assert_array_equal(np.asarray(a.get_thumbnail((50, 50))), np.asarray(b.get_thumbnail((50, 50))))
    za, zb = real_dz.DeepZoomGenerator(a, 64, 1), our_dz.DeepZoomGenerator(b, 64, 1)
    np.testing.assert_array_equal(np.asarray(za.get_tile(za.level_count - 1, (1, 1))),
                                  np.asarray(zb.get_tile(zb.level_count - 1, (1, 1))))
    a.close()
    b.close()
    with pytest.raises(ValueError):  # as openslide's ImageSlide
        b.read_region((0, 0), 0, (1, 1))


def test_public_names_match_openslide():
    expected = {n for n in dir(real) if n.startswith("PROPERTY_NAME_")} | {
        "OpenSlide", "ImageSlide", "open_slide", "AbstractSlide", "OpenSlideError",
        "OpenSlideUnsupportedFormatError", "OpenSlideVersionError", "OpenSlideCache"}
    assert expected <= set(dir(ours))
    for n in expected:
        if n.startswith("PROPERTY_NAME_"):
            assert getattr(ours, n) == getattr(real, n)


PROGRAM = textwrap.dedent('''
    import hashlib, sys
    import numpy as np
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    path = sys.argv[1]
    h = hashlib.sha256()
    with openslide.OpenSlide(path) as slide:
        print(openslide.OpenSlide.detect_format(path), slide.dimensions, slide.level_count)
        print(slide.properties[openslide.PROPERTY_NAME_MPP_X], slide.properties.get("aperio.AppMag"))
        h.update(np.asarray(slide.read_region((300, 400), 1, (256, 256))).tobytes())
        h.update(np.asarray(slide.get_thumbnail((200, 200))).tobytes())
        for name, im in sorted(slide.associated_images.items()):
            h.update(name.encode() + np.asarray(im).tobytes())
        dz = DeepZoomGenerator(slide, 254, 1)
        print(dz.level_count, dz.tile_count)
        level = dz.level_count - 2
        for col in range(dz.level_tiles[level][0]):
            h.update(np.asarray(dz.get_tile(level, (col, 0))).tobytes())
    print(h.hexdigest())
''')


def test_existing_openslide_program_runs_after_changing_its_import(svs_exact, tmp_path):
    original = tmp_path / "original.py"
    original.write_text(PROGRAM)
    ported = tmp_path / "ported.py"
    ported.write_text(PROGRAM.replace("import openslide\n", "from tilescope import openslide\n")
                      .replace("from openslide.deepzoom", "from tilescope.openslide.deepzoom"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    outs = [subprocess.run([sys.executable, str(p), svs_exact], capture_output=True, text=True, check=True,
                           env=env).stdout for p in (original, ported)]
    assert outs[0] == outs[1]
    assert "aperio" in outs[0]


def test_quickhash1_equals_openslides(svs, svs_variants, tiffs, tmp_path):
    """openslide.quickhash-1 as openslide computes it, on every SVS and generic TIFF layout the
    fixtures have (JPEG, JPEG 2000, LZW, raw, BigTIFF, SubIFD pyramids, planar, strips), on NDPI
    (focal planes, no McuStarts, offsets past 4 GiB) and on a TIFF whose smallest level is over
    5 MiB (none from either); tilescope.Slide.quickhash1() gives the same digest without the
    drop-in."""
    import tilescope
    from tools import synth

    big = str(tmp_path / "flat.tif")
    rng = np.random.default_rng(4)
    tifffile.imwrite(big, rng.integers(0, 255, (1400, 1400, 3), dtype=np.uint8), tile=(256, 256))
    ndpis = [synth.write_ndpi(tmp_path / "z.ndpi", 1024, 768, downsamples=(1, 4), focal_planes=(0, 1)),
             synth.write_ndpi(tmp_path / "scan.ndpi", 1024, 768, downsamples=(1,), mcu_starts=False),
             synth.write_ndpi(tmp_path / "far.ndpi", 1024, 768, downsamples=(1, 4), gap=5 << 30)]
    files = [svs, *svs_variants.values(), *tiffs.values(), *map(str, ndpis), big]
    checked = 0
    for path in files:
        if real.OpenSlide.detect_format(path) is None:
            continue
        with real.OpenSlide(path) as a, ours.OpenSlide(path) as b, tilescope.open(path) as s:
            want = a.properties.get(real.PROPERTY_NAME_QUICKHASH1)
            assert b.properties.get(ours.PROPERTY_NAME_QUICKHASH1) == want, path
            assert s.quickhash1() == want, path
            checked += want is not None
    assert checked >= len(files) - 2
    with real.OpenSlide(big) as a:
        assert real.PROPERTY_NAME_QUICKHASH1 not in a.properties


def test_fluorescence_is_composited_with_colours_and_windows(ome):
    """A 16-bit, 3-channel OME-TIFF through the drop-in and Deep Zoom: each channel through its
    display window (0.1th-99.9th percentile of a low-resolution read) times its colour (none in
    the file: blue, green, red), summed; computed here independently. Each colour reaches full
    scale (the old cast to 8 bits peaked at 54/255 on a real CZI)."""
    import tilescope

    with tilescope.open(ome) as s:
        sc = s.scenes[0]
        w, h = sc.size
        low = sc.read(size=(512, 0) if w >= h else (0, 512)).astype(np.float64)
        lo, hi = np.percentile(low, 0.1, axis=(0, 1)), np.percentile(low, 99.9, axis=(0, 1))
        raw = sc.read_level(0, (0, 0, w, h)).astype(np.float64)
    frac = np.clip((raw - lo) / (hi - lo), 0, 1)
    want = np.clip(np.rint(frac[..., [2, 1, 0]] * 255), 0, 255)  # ch0 blue, ch1 green, ch2 red
    with ours.OpenSlide(ome) as b:
        got = np.asarray(b.read_region((0, 0), 0, (w, h)))
        assert (got[..., 3] == 255).all()
        assert np.abs(got[..., :3].astype(int) - want).max() <= 1
        assert (got[..., :3].reshape(-1, 3).max(axis=0) == 255).all()
        dz = our_dz.DeepZoomGenerator(b, 256, 0)
        tile = np.asarray(dz.get_tile(dz.level_count - 1, (0, 0)))
        np.testing.assert_array_equal(tile, got[:256, :256, :3])
