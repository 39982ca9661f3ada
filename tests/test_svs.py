"""Aperio SVS against openslide (openslide-bin) and tiffslide on the same files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import tilescope
from tilescope.formats.svs import number, parse_description

openslide = pytest.importorskip("openslide")
tiffslide = pytest.importorskip("tiffslide")

W, H = 2900, 2150
REGIONS = {
    "tile-aligned": (512, 256, 512, 512),
    "unaligned": (1000, 777, 613, 419),
    "one pixel": (1234, 567, 1, 1),
    "right-bottom edge": (W - 300, H - 200, 300, 200),
    "whole width strip": (0, 1000, W, 37),
}


def openslide_rgb(path, rect, level=0):
    x, y, w, h = rect
    with openslide.OpenSlide(path) as o:
        return np.asarray(o.read_region((x, y), level, (w, h)).convert("RGB"))


def tiffslide_rgb(path, rect):
    x, y, w, h = rect
    with tiffslide.TiffSlide(path) as t:
        return np.asarray(t.read_region((x, y), 0, (w, h), as_array=True))[..., :3]


@pytest.mark.parametrize("name", list(REGIONS))
def test_regions_equal_openslide_and_tiffslide(svs, name):
    rect = REGIONS[name]
    with tilescope.open(svs) as s:
        ours = s.scenes[0].read(rect)
    assert ours.shape == (rect[3], rect[2], 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, openslide_rgb(svs, rect))
    np.testing.assert_array_equal(ours, tiffslide_rgb(svs, rect))


def test_partly_outside_is_white_and_inside_equals_openslide(svs):
    rect = (W - 100, H - 60, 300, 200)
    with tilescope.open(svs) as s:
        ours = s.scenes[0].read(rect)
    with openslide.OpenSlide(svs) as o:
        ref = np.asarray(o.read_region(rect[:2], 0, rect[2:]))
    inside = ref[..., 3] == 255
    assert inside.sum() == 100 * 60
    np.testing.assert_array_equal(ours[inside], ref[inside][:, :3])
    assert (ours[~inside] == 255).all()


def test_wholly_outside_is_background(svs):
    with tilescope.open(svs) as s:
        a = s.scenes[0].read((-5000, -5000, 64, 32))
    assert a.shape == (32, 64, 3) and (a == 255).all()


def test_levels_equal_tifffile_pages(svs):
    with tilescope.open(svs) as s, tifffile.TiffFile(svs) as tf:
        sc = s.scenes[0]
        tiled = [p for p in tf.pages if p.is_tiled]
        for lv, page in zip(sc.levels, tiled, strict=True):
            ref = page.asarray()
            w, h = lv.size
            rect = (w // 3, h // 5, w // 2, h // 2)
            np.testing.assert_array_equal(sc.read_level(lv.index, rect),
                                          ref[rect[1]:rect[1] + rect[3], rect[0]:rect[0] + rect[2]])


def test_metadata_matches_openslide_and_tiffslide(svs):
    with tilescope.open(svs) as s, openslide.OpenSlide(svs) as o, tiffslide.TiffSlide(svs) as t:
        sc = s.scenes[0]
        assert s.driver == "SVS" and s.vendor == "aperio" == o.properties["openslide.vendor"]
        assert sc.size == o.dimensions == t.dimensions
        assert [lv.size for lv in sc.levels] == list(o.level_dimensions) == list(t.level_dimensions)
        np.testing.assert_allclose([lv.downsample for lv in sc.levels], o.level_downsamples)
        np.testing.assert_allclose([lv.downsample for lv in sc.levels], t.level_downsamples)
        assert [lv.tile_size for lv in sc.levels] == [
            (int(o.properties[f"openslide.level[{i}].tile-width"]),
             int(o.properties[f"openslide.level[{i}].tile-height"])) for i in range(o.level_count)]
        assert sc.mpp == (float(o.properties["openslide.mpp-x"]), float(o.properties["openslide.mpp-y"]))
        assert sc.magnification == float(o.properties["openslide.objective-power"])
        assert sc.mpp[0] == t.properties["tiffslide.mpp-x"]
        assert s.raw_metadata == o.properties["openslide.comment"]
        for key, value in s.properties["aperio"].items():
            if key != "Header":
                assert o.properties[f"aperio.{key}"] == value
        assert sc.channel_names == ("R", "G", "B") and sc.compression == "jpeg"
        assert (sc.num_z_slices, sc.num_t_frames) == (1, 1)


def test_associated_images_equal_openslide(svs):
    with tilescope.open(svs) as s, openslide.OpenSlide(svs) as o:
        assert set(s.associated) == set(o.associated_images) == {"thumbnail", "label", "macro"}
        for name, im in o.associated_images.items():
            ours = s.associated[name]
            assert s.associated.size(name) == im.size
            np.testing.assert_array_equal(ours, np.asarray(im.convert("RGB")))


@pytest.mark.parametrize("kind", ["jpeg-rgb", "jpeg2000-rgb", "jpeg2000-ycbcr", "lzw", "none", "bigtiff"])
def test_tile_encodings_equal_openslide(svs_variants, kind):
    path = svs_variants[kind]
    rect = (130, 70, 700, 600)
    with tilescope.open(path) as s:
        ours = s.scenes[0].read(rect)
        assert s.driver == "SVS"
    np.testing.assert_array_equal(ours, openslide_rgb(path, rect))
    if kind != "jpeg2000-ycbcr":  # tiffslide leaves 33003's YCbCr unconverted
        np.testing.assert_array_equal(ours, tiffslide_rgb(path, rect))


def test_description_parsing_is_tolerant():
    d = ("Aperio Image Library v10.2.41\r\n1000x800 (240x240) JPEG/RGB Q=70"
         "|AppMag = |MPP = 0,2527|Empty=|Trunc")
    props = parse_description(d)
    assert props["Header"].startswith("Aperio Image Library")
    assert props["AppMag"] == "" and props["Empty"] == "" and "Trunc" not in props
    assert number(props["MPP"]) == pytest.approx(0.2527)
    assert number(props["AppMag"]) is None and number("abc") is None and number("-1") is None


def test_empty_and_decimal_comma_metadata_in_a_file(fixtures_dir):
    from tools import synth

    path = str(fixtures_dir / "comma.svs")
    synth.write_svs(path, 600, 500, downsamples=(1,), mpp="0,2500", magnification="", associated=())
    with tilescope.open(path) as s:
        sc = s.scenes[0]
        assert sc.mpp == (0.25, 0.25) and sc.magnification is None
        assert s.properties["aperio"]["AppMag"] == ""


def test_truncated_description_still_opens(fixtures_dir):
    from tools import synth

    path = str(fixtures_dir / "truncdesc.svs")
    synth.write_svs(path, 600, 500, downsamples=(1,), associated=(),
                    description="Aperio Image Library v12\r\n600x500 [0,0 600x500] (256x256) JPEG/RGB|MP")
    with tilescope.open(path) as s:
        assert s.scenes[0].mpp is None and s.scenes[0].magnification is None
        assert s.scenes[0].read((0, 0, 10, 10)).shape == (10, 10, 3)
