"""Vendor dialects of TIFF, written with tifffile to each vendor's tags and XML, read against
openslide where openslide reads the dialect."""

from __future__ import annotations

import numpy as np
import pytest

import tilescope
import tilescope.openslide as dropin
from tools import synth

openslide = pytest.importorskip("openslide")


@pytest.fixture(scope="module")
def philips(tmp_path_factory):
    return synth.write_philips(tmp_path_factory.mktemp("philips") / "slide.tiff", 2000, 1500)


def test_philips_equals_openslide(philips):
    assert tilescope.detect(philips) == "Philips"
    with tilescope.open(philips) as s, openslide.OpenSlide(philips) as o:
        sc = s.scenes[0]
        assert o.properties["openslide.vendor"] == "philips"
        assert tuple(lv.size for lv in sc.levels) == o.level_dimensions  # padding cut from levels > 0
        assert tuple(lv.downsample for lv in sc.levels) == o.level_downsamples  # from pixel spacing
        assert sc.mpp == (float(o.properties["openslide.mpp-x"]), float(o.properties["openslide.mpp-y"]))
        for lv, (x, y, w, h) in [(0, (0, 0, 700, 300)), (0, (250, 200, 333, 222)), (1, (0, 0, 512, 384)),
                                 (2, (10, 5, 100, 80))]:
            ref = np.asarray(o.read_region((x * 4 ** lv, y * 4 ** lv), lv, (w, h)))
            ours = sc.read_level(lv, (x, y, w, h))
            stored = ref[..., 3] == 255  # openslide leaves left-out tiles transparent; we fill white
            np.testing.assert_array_equal(ours[stored], ref[..., :3][stored])
            assert (ours[~stored] == 255).all()
        assert (sc.read((0, 0, 512, 256)) == 255).all()  # the two left-out tiles
        for name in ("label", "macro"):  # a stripped "Label" page; the macro from the XML's Base64
            np.testing.assert_array_equal(s.associated[name],
                                          np.asarray(o.associated_images[name].convert("RGB")))
        assert s.properties["philips"]["DICOM_MANUFACTURER"] == "PHILIPS"
    with dropin.OpenSlide(philips) as d, openslide.OpenSlide(philips) as o:
        want = {k: v for k, v in o.properties.items() if k != "openslide.quickhash-1"}
        assert dict(d.properties) == want


def test_philips_bad_xml(philips, tmp_path):
    data = open(philips, "rb").read()  # noqa: SIM115
    bad = tmp_path / "nowsi.tiff"
    bad.write_bytes(data.replace(b">WSI<", b">XYZ<"))
    with pytest.raises(tilescope.CorruptDataError, match="PIM_DP_IMAGE_TYPE WSI"):
        tilescope.open(str(bad))


@pytest.fixture(scope="module")
def qptiff(tmp_path_factory):
    return synth.write_qptiff(tmp_path_factory.mktemp("qptiff") / "slide.qptiff", 2000, 1500)


def test_qptiff_equals_tifffile_series(qptiff):
    import tifffile

    assert tilescope.detect(qptiff) == "QPTIFF"
    with tilescope.open(qptiff) as s, tifffile.TiffFile(qptiff) as tf:
        sc = s.scenes[0]
        assert tf.is_qpi and sc.channel_names == ("DAPI", "Opal 520", "Opal 570", "Opal 690")
        assert sc.channel_colors == ("#0000FF", "#00FF00", "#FFFF00", "#FF0000")
        assert sc.mpp == pytest.approx((0.4972, 0.4972)) and sc.magnification == 20 and sc.background == 0
        base = tf.series[0]
        assert [lv.size for lv in sc.levels] == [(lv.shape[2], lv.shape[1]) for lv in base.levels]
        for i, lv in enumerate(base.levels):
            np.testing.assert_array_equal(sc.read_level(i), np.moveaxis(lv.asarray(), 0, -1))
        # one channel, from level 1, by name
        np.testing.assert_array_equal(sc.read(size=(1000, 750), channels=["Opal 570"])[..., 0],
                                      base.levels[1].asarray()[2])
        for name, series in (("thumbnail", 1), ("macro", 2), ("label", 3)):
            np.testing.assert_array_equal(s.associated[name], tf.series[series].asarray())


@pytest.fixture(scope="module")
def scn(tmp_path_factory):
    return synth.write_scn(tmp_path_factory.mktemp("scn") / "slide.scn")


def test_scn_images_are_scenes_equal_to_openslide_regions(scn):
    assert tilescope.detect(scn) == "SCN"
    with tilescope.open(scn) as s, openslide.OpenSlide(scn) as o:
        assert o.properties["openslide.vendor"] == "leica"
        assert [sc.name for sc in s.scenes] == ["region0", "region1"]
        for i, sc in enumerate(s.scenes):
            rect = tuple(int(o.properties[f"openslide.region[{i}].{k}"]) for k in ("x", "y", "width", "height"))
            assert sc.rect == rect
            assert sc.mpp == (float(o.properties["openslide.mpp-x"]), float(o.properties["openslide.mpp-y"]))
            assert sc.magnification == float(o.properties["openslide.objective-power"])
            x, y, w, h = rect
            np.testing.assert_array_equal(sc.read(), np.asarray(o.read_region((x, y), 0, (w, h)).convert("RGB")))
            np.testing.assert_array_equal(
                sc.read_level(1), np.asarray(o.read_region((x, y), 1, (w // 4, h // 4)).convert("RGB")))
        np.testing.assert_array_equal(s.associated["macro"],
                                      np.asarray(o.associated_images["macro"].convert("RGB")))
        for key in ("barcode", "objective", "aperture", "device-model", "illumination-source", "creation-date"):
            assert s.properties["leica"][key] == o.properties[f"leica.{key}"]


def test_scn_bad_dimension(scn, tmp_path):
    data = open(scn, "rb").read()  # noqa: SIM115
    bad = tmp_path / "bad.scn"
    bad.write_bytes(data.replace(b'r="1" ifd="2"', b'r="1" ifd="9"'))
    with pytest.raises(tilescope.CorruptDataError, match=r"region0.*ifd=\"9\""):
        tilescope.open(str(bad))


@pytest.fixture(scope="module")
def ndpi(tmp_path_factory):
    d = tmp_path_factory.mktemp("ndpi")
    return {"main": synth.write_ndpi(d / "slide.ndpi", 1920, 1440, focal_planes=(0, 1)),
            "h2v1": synth.write_ndpi(d / "h2v1.ndpi", 1024, 768, downsamples=(1, 4), subsampling=1, seed=3),
            "no-mcu-starts": synth.write_ndpi(d / "scan.ndpi", 1024, 768, downsamples=(1,), mcu_starts=False)}


@pytest.mark.parametrize("name", ["main", "h2v1", "no-mcu-starts"])
def test_ndpi_equals_openslide(ndpi, name):
    p = ndpi[name]
    assert tilescope.detect(p) == "NDPI"
    with tilescope.open(p) as s, openslide.OpenSlide(p) as o:
        sc = s.scenes[0]
        assert o.properties["openslide.vendor"] == "hamamatsu"
        assert sc.mpp == pytest.approx((float(o.properties["openslide.mpp-x"]),
                                        float(o.properties["openslide.mpp-y"])))
        assert sc.magnification == float(o.properties["openslide.objective-power"])
        for li, lv in enumerate(sc.levels):  # openslide adds 1/2, 1/4, 1/8 levels of its own
            ol = o.level_dimensions.index(lv.size)
            w, h = lv.size
            for rect in ((0, 0, w, h), (w // 3 + 5, h // 4 + 3, w // 3, h // 3)):
                ref = np.asarray(o.read_region((rect[0] * 4 ** li, rect[1] * 4 ** li), ol, rect[2:]))
                ours = sc.read_level(li, rect)
                # openslide leaves a last partial row of restart intervals out (transparent)
                shown = ref[..., 3] == 255
                np.testing.assert_array_equal(ours[shown], ref[..., :3][shown])
        np.testing.assert_array_equal(s.associated["macro"],
                                      np.asarray(o.associated_images["macro"].convert("RGB")))
        props = s.properties["hamamatsu"]
        assert props["SourceLens"] == float(o.properties["hamamatsu.SourceLens"])
        for key in ("XOffsetFromSlideCentre", "Reference", "Product"):
            assert str(props[key]) == o.properties[f"hamamatsu.{key}"]


def test_ndpi_focal_planes_and_pieces(ndpi):
    import tifffile

    p = ndpi["main"]
    with tilescope.open(p) as s, tifffile.TiffFile(p) as tf:
        sc = s.scenes[0]
        assert sc.num_z_slices == 2 and sc.levels[0].tile_size == (128, 8)
        z1 = [pg for pg in tf.pages if pg.tags[65424].value == 1]
        np.testing.assert_array_equal(sc.read_level(0, z=1), z1[0].asarray())  # the plane, whole
        # a small region decodes only the restart intervals it touches, not the level's JPEG
        cache = tilescope.TileCache(0)
    with tilescope.open(p, cache=cache) as s:
        calls = []
        plane = s.scenes[0].levels[0].layout.planes[(0, 0)][0]
        orig = plane.pieces.fetch
        plane.pieces.fetch = lambda source, i: calls.append(i) or orig(source, i)
        try:
            s.scenes[0].read((300, 200, 100, 20))
        finally:
            plane.pieces.fetch = orig
        assert 1 <= len(calls) <= 8


@pytest.fixture(scope="module")
def bif(tmp_path_factory):
    return synth.write_bif(tmp_path_factory.mktemp("bif") / "slide.bif")


def test_ventana_overlapping_tiles_equal_openslide(bif):
    assert tilescope.detect(bif) == "Ventana"
    with tilescope.open(bif) as s, openslide.OpenSlide(bif) as o:
        sc = s.scenes[0]
        assert o.properties["openslide.vendor"] == "ventana"
        # 6 x 4 camera tiles of 256 overlapping by 16 / 12: 5 x 240 + 256 by 3 x 244 + 256, no seams
        assert tuple(lv.size for lv in sc.levels) == o.level_dimensions == ((1456, 988), (728, 494))
        assert tuple(lv.downsample for lv in sc.levels) == o.level_downsamples
        assert sc.mpp == (0.25, 0.25) and sc.magnification == 40
        for li in range(2):
            w, h = o.level_dimensions[li]
            np.testing.assert_array_equal(sc.read_level(li), np.asarray(o.read_region((0, 0), li, (w, h)))[..., :3])
        x, y, w, h = 230, 230, 300, 200  # across the overlaps of four camera tiles
        np.testing.assert_array_equal(sc.read((x, y, w, h)),
                                      np.asarray(o.read_region((x, y), 0, (w, h)).convert("RGB")))
        for name in ("macro", "thumbnail"):
            np.testing.assert_array_equal(s.associated[name],
                                          np.asarray(o.associated_images[name].convert("RGB")))
        assert s.properties["ventana"]["ScannerModel"] == o.properties["ventana.ScannerModel"]


def test_ventana_bad_joint(bif, tmp_path):
    data = open(bif, "rb").read()  # noqa: SIM115
    bad = tmp_path / "bad.bif"
    bad.write_bytes(data.replace(b'Direction="UP"', b'Direction="XX"', 1))
    with pytest.raises(tilescope.CorruptDataError, match=r"TileJointInfo.*'XX'"):
        tilescope.open(str(bad))


def test_ndpi_beyond_4gb(tmp_path):
    # a sparse file whose level-0 JPEG starts past 5 GiB: offsets in NDPI's high-bits words
    small = synth.write_ndpi(tmp_path / "small.ndpi", 1024, 768, downsamples=(1, 4))
    big = synth.write_ndpi(tmp_path / "big.ndpi", 1024, 768, downsamples=(1, 4), gap=5 << 30)
    with tilescope.open(small) as s1, tilescope.open(big) as s2, openslide.OpenSlide(big) as o:
        plane = s2.scenes[0].levels[0].layout.planes[(0, 0)][0]
        assert int(plane.pieces.offsets[0]) > 5 << 30
        for li in range(2):
            np.testing.assert_array_equal(s2.scenes[0].read_level(li), s1.scenes[0].read_level(li))
        np.testing.assert_array_equal(s2.scenes[0].read(),
                                      np.asarray(o.read_region((0, 0), 0, (1024, 768)).convert("RGB")))
