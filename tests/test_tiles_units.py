"""Units and scales, tile iteration, tissue masks, the sampler and level views."""

from __future__ import annotations

import numpy as np
import pytest

import tilescope
from tilescope import InvalidRequestError
from tilescope.tissue import otsu
from tilescope.units import MAG_FROM_MPP, Scale


@pytest.fixture
def scene(svs_exact):
    with tilescope.open(svs_exact) as s:
        yield s.scenes[0]


# -- units and scales -----------------------------------------------------------------------------
def test_level_mpp_and_magnification(scene):
    assert scene.magnification == 20 and scene.magnification_source == "file"
    assert [lv.magnification for lv in scene.levels] == [20, 5, 1.25]
    assert [lv.mpp for lv in scene.levels] == [(0.499, 0.499), (1.996, 1.996), (7.984, 7.984)]


def test_convert_round_trips(scene):
    r = (100, 200, 300, 400)
    um = scene.convert(r, "px", "um")
    assert um == pytest.approx((49.9, 99.8, 149.7, 199.6))
    assert scene.convert(um, "um", "mm") == pytest.approx(tuple(v / 1000 for v in um))
    assert scene.convert(r, "px", "fraction") == pytest.approx((100 / 2048, 200 / 1536, 300 / 2048, 400 / 1536))
    assert scene.convert(r, "px", Scale(level=1)) == pytest.approx((25, 50, 75, 100))
    assert scene.convert(r, "px", Scale(magnification=10)) == pytest.approx((50, 100, 150, 200))
    assert scene.convert(r, "px", {"mpp": 0.998}) == pytest.approx((50, 100, 150, 200))
    assert scene.convert(r, "px", Scale(downsample=4)) == pytest.approx((25, 50, 75, 100))
    for units in ["um", "mm", "fraction", Scale(level=2), Scale(magnification=2.5)]:
        assert scene.convert(scene.convert(r, "px", units), units, "px") == pytest.approx(r)


def test_reads_at_a_scale_and_in_units(scene):
    lv1 = scene.read_level(1, (25, 50, 75, 100))
    rect = (100, 200, 300, 400)
    np.testing.assert_array_equal(scene.read(rect, magnification=5), lv1)
    np.testing.assert_array_equal(scene.read(rect, mpp=1.996), lv1)
    np.testing.assert_array_equal(scene.read(rect, downsample=4), lv1)
    np.testing.assert_array_equal(scene.read(rect, scale={"level": 1}), lv1)
    np.testing.assert_array_equal(scene.read((25, 50, 75, 100), units=Scale(level=1)), lv1)
    np.testing.assert_array_equal(scene.read((25, 50, 75, 100), units=Scale(magnification=5)), lv1)
    um = scene.convert(rect, "px", "um")
    np.testing.assert_array_equal(scene.read(um, units="um"), scene.read(rect))
    np.testing.assert_array_equal(scene.read(scene.convert(rect, "px", "mm"), units="mm", magnification=5), lv1)
    half = scene.read((0, 0, 0.5, 0.5), units="fraction", downsample=16)
    np.testing.assert_array_equal(half, scene.read_level(2, (0, 0, 64, 48)))
    with pytest.raises(InvalidRequestError, match="not both"):
        scene.read(rect, size=(10, 10), magnification=5)
    with pytest.raises(InvalidRequestError):
        scene.read(rect, magnification=5, mpp=1)
    with pytest.raises(InvalidRequestError):
        scene.read(rect, units="furlong")
    with pytest.raises(InvalidRequestError):
        Scale(level=1, mpp=2)
    with pytest.raises(InvalidRequestError):
        Scale(magnification=-1)


def test_best_level(scene):
    assert scene.best_level(magnification=20) == 0
    assert scene.best_level(magnification=10) == 0  # not coarser than asked
    assert scene.best_level(magnification=10, nearest=True) in (0, 1)
    assert scene.best_level(magnification=4) == 1
    assert scene.best_level(magnification=2, nearest=True) == 2
    assert scene.best_level(mpp=2.0) == 1 and scene.best_level(downsample=100) == 2
    assert scene.best_level(magnification=40) == 0


def test_magnification_derived_from_mpp_only_when_absent(tiffs, ome):
    with tilescope.open(tiffs["zlib-pages"]) as s:
        sc = s.scenes[0]
        assert sc.magnification is None and sc.mpp == pytest.approx((0.25, 0.25))
        assert sc.native_magnification == pytest.approx(MAG_FROM_MPP / 0.25) and sc.magnification_source == "mpp"
        assert sc.levels[1].magnification is None and sc.levels[1].native_magnification == pytest.approx(20.0)
        np.testing.assert_array_equal(sc.read((0, 0, 400, 400), magnification=20), sc.read_level(1, (0, 0, 200, 200)))


def test_no_mpp_means_none_and_clear_errors(fixtures_dir):
    from tools import synth

    path = str(fixtures_dir / "nompp.tiff")
    synth.write_tiff(path, 600, 400, mpp=None, downsamples=(1, 2))
    with tilescope.open(path) as s:
        sc = s.scenes[0]
        assert sc.mpp is None and sc.magnification is None and sc.native_magnification is None
        assert sc.levels[1].mpp is None and sc.levels[1].magnification is None
        with pytest.raises(InvalidRequestError, match="neither magnification nor mpp"):
            sc.read((0, 0, 10, 10), magnification=5)
        with pytest.raises(InvalidRequestError, match="mpp"):
            sc.read((0, 0, 10, 10), units="um")
        assert sc.read((0, 0, 100, 100), downsample=2).shape == (50, 50, 3)


# -- tiles --------------------------------------------------------------------------------------
def test_tiles_cover_the_scene_and_equal_reads(scene):
    tiles = scene.tiles(512, prefetch=0)
    assert len(tiles) == 4 * 3 and tiles.grid == (4, 3)
    seen = np.zeros(scene.size[::-1], int)
    for i, t in enumerate(tiles):
        assert t.index == i and t.level == 0 and t.magnification == 20 and t.mpp == (0.499, 0.499)
        seen[t.y:t.y + t.h, t.x:t.x + t.w] += 1
        assert t.overlap == {"left": 0, "top": 0, "right": 0, "bottom": 0}
    assert (seen == 1).all()
    t = tiles[5]
    np.testing.assert_array_equal(t.array, scene.read((t.x, t.y, t.w, t.h)))
    assert t.image().size == (t.w, t.h)


def test_tiles_overlap_and_edges(scene):
    tiles = scene.tiles((500, 400), overlap=8, prefetch=0)
    assert tiles.grid == (5, 4)
    first, last = tiles[0], tiles[-1]
    assert first.overlap == {"left": 0, "top": 0, "right": 8, "bottom": 8}
    assert (first.x, first.y, first.w, first.h) == (0, 0, 508, 408)
    assert last.overlap == {"left": 8, "top": 8, "right": 0, "bottom": 0}
    assert (last.x, last.y, last.w, last.h) == (1992, 1192, 56, 344)
    mid = tiles.tile(2, 1)
    assert mid.overlap == {"left": 8, "top": 8, "right": 8, "bottom": 8} and (mid.w, mid.h) == (516, 416)
    np.testing.assert_array_equal(mid.array, scene.read((992, 392, 516, 416)))
    padded = scene.tiles((500, 400), overlap=8, edges="pad", prefetch=0)
    assert {(t.w, t.h) for t in padded} == {(516, 416)}
    corner = padded[-1].array
    assert (corner[-100:, -100:] == 255).all()  # beyond the scene: background
    np.testing.assert_array_equal(padded[-1].array[:10, :10], scene.read((1992, 1192, 10, 10)))


def test_tiles_at_a_scale_over_a_region(scene):
    tiles = scene.tiles(128, magnification=5, region=(0.25, 0.25, 0.5, 0.5), units="fraction", prefetch=0)
    assert tiles.level == 1 and tiles.scale == (4.0, 4.0)
    assert tiles.grid == (2, 2)
    t = tiles[3]
    # the region is level-1 pixels (128, 96)-(384, 288): the last row of tiles is 64 high
    assert (t.x, t.y, t.w, t.h) == (256, 224, 128, 64)
    assert t.level0_rect == (1024.0, 896.0, 512.0, 256.0)
    assert t.magnification == 5 and t.mpp == (1.996, 1.996)
    np.testing.assert_array_equal(t.array, scene.read_level(1, (256, 224, 128, 64)))
    odd = scene.tiles(100, downsample=3, prefetch=0)  # between levels: resampled from level 0
    assert odd.level == 0 and odd[0].array.shape == (100, 100, 3)


def test_prefetch_yields_the_same_tiles(scene):
    plain = [t.array for t in scene.tiles(300, overlap=2, prefetch=0)]
    ahead = [t.array for t in scene.tiles(300, overlap=2, prefetch=4)]
    assert len(plain) == len(ahead) == 42
    for a, b in zip(plain, ahead, strict=True):
        np.testing.assert_array_equal(a, b)


def test_positions_and_bad_arguments(scene):
    tiles = scene.tiles(256, positions=[(1, 1), (7, 5)], prefetch=0)
    assert len(tiles) == 2 and (tiles[1].col, tiles[1].row) == (7, 5)
    with pytest.raises(InvalidRequestError):
        scene.tiles(256, positions=[(8, 0)])
    with pytest.raises(InvalidRequestError):
        scene.tiles(0)
    with pytest.raises(InvalidRequestError):
        scene.tiles(256, overlap=-1)
    with pytest.raises(InvalidRequestError):
        scene.tiles(256, edges="wrap")
    with pytest.raises(IndexError):
        tiles[2]


def test_tissue_mask_and_tissue_tiles(scene):
    mask = scene.tissue_mask()
    assert mask.mask.dtype == bool and max(mask.mask.shape) == 1024
    frac = mask.mask.mean()
    assert 0.2 < frac < 0.9  # the synthetic slide is ~60 % tissue, background at the borders
    assert mask.fraction((0, 0, 2048, 1536)) == pytest.approx(frac)
    assert mask.fraction((-500, -500, 100, 100)) == 0
    all_tiles = scene.tiles(256, prefetch=0)
    kept = scene.tiles(256, tissue=0.5, tissue_mask=mask, prefetch=0)
    assert 0 < len(kept) < len(all_tiles)
    for t in kept:
        assert mask.fraction(t.level0_rect) >= 0.5
    # kept tiles are darker (stained) than the dropped ones
    kept_pos = {(t.col, t.row) for t in kept}
    dropped = [t for t in all_tiles if (t.col, t.row) not in kept_pos]
    assert np.mean([t.array.mean() for t in kept]) < np.mean([t.array.mean() for t in dropped]) - 10


def test_otsu_splits_two_populations():
    v = np.concatenate([np.full(1000, 30), np.full(1000, 200)]).astype(np.uint8)
    assert 30 <= otsu(v) < 200


def test_fluorescence_tissue_mask(ome):
    with tilescope.open(ome) as s:
        m = s.scenes[0].tissue_mask(256)
        assert m.mask.shape == (209, 256) and 0 < m.mask.mean() < 1


# -- sampler ------------------------------------------------------------------------------------
def test_sampler_gives_equal_padded_regions(scene):
    sampler = scene.sampler(224, overlap=16, magnification=10, region=(512, 512, 1024, 512))
    assert sampler.grid == (3, 2) and len(sampler) == 6
    items = [t.array for t in sampler]
    assert {a.shape for a in items} == {(256, 256, 3)}
    t = sampler[0]
    assert (t.x, t.y) == (256 - 16, 256 - 16)
    np.testing.assert_array_equal(items[0], scene.read(t.level0_rect, size=(256, 256)))
    some = scene.sampler(224, 16, magnification=10, positions=[(0, 0), (4, 3)])
    assert [(t.col, t.row) for t in some] == [(0, 0), (4, 3)]


# -- level views ----------------------------------------------------------------------------------
def test_level_view_slicing(scene):
    view = scene.view(1)
    full = scene.read_level(1)
    assert view.shape == full.shape == (384, 512, 3) and len(view) == 384
    for key in [np.s_[10:50, 20:80], np.s_[-30:, -40:], np.s_[::7, 3:400:5], np.s_[5], np.s_[5, 6],
                np.s_[5, 6, 1], np.s_[:, :, 1:], np.s_[100:50], np.s_[370:1000, 500:1000], np.s_[:, 0]]:
        np.testing.assert_array_equal(view[key], full[key], err_msg=str(key))
    np.testing.assert_array_equal(np.asarray(view), full)
    with pytest.raises(IndexError):
        view[384]
    with pytest.raises(IndexError):
        view[0, 0, 0, 0]
    green = scene.view(0, channels=[1])
    np.testing.assert_array_equal(green[100:110, 200:210], scene.read((200, 100, 10, 10))[..., 1:2])


@pytest.mark.parametrize("mpp,nominal", [(0.499, 20.0), (0.2527, 40.0), (0.263, 40.0), (0.2431, 40.0),
                                         (1.0, 10.0), (0.159, 63.0), (0.3, None), (0.1, 100.0)])
def test_derived_magnification_is_nominal(fixtures_dir, mpp, nominal):
    """10 / mpp snaps to the objective power within 5 % (0.499 um -> 20x, not 20.04x); farther off it
    stays as derived."""
    from tools import synth

    path = str(fixtures_dir / f"mpp{mpp}.tiff")
    synth.write_tiff(path, 600, 400, mpp=mpp, downsamples=(1, 2))
    with tilescope.open(path) as s:
        sc = s.scenes[0]
        assert sc.magnification is None and sc.magnification_source == "mpp"
        assert sc.native_magnification == pytest.approx(nominal if nominal else MAG_FROM_MPP / mpp, rel=1e-3)


def test_a_nominal_magnification_reads_native_pixels(converted, fixtures_dir):
    """A DICOM slide without an objective power (mpp 0.499): 20x reads level 0's own pixels, 5x level
    1's, tiles at 20x are level-0 tiles; an SVS whose level 1 is not exactly 4x smaller (AppMag 20) reads it
    at 5x as stored. mpp requests stay exact."""
    from tools import synth

    _, folder = converted
    with tilescope.open(folder) as s:
        sc = s.scenes[0]
        assert sc.magnification is None and sc.native_magnification == 20.0
        assert [lv.native_magnification for lv in sc.levels] == [20.0, 5.0]
        assert [lv.magnification for lv in sc.levels] == [None, None]  # the file states none
        np.testing.assert_array_equal(sc.read((100, 50, 512, 300), magnification=20),
                                      sc.read_level(0, (100, 50, 512, 300)))
        np.testing.assert_array_equal(sc.read(magnification=5), sc.read_level(1))
        tiles = sc.tiles(256, magnification=20)
        assert tiles.level == 0 and tiles.scale == (1.0, 1.0) and tiles.grid == (5, 4)
        np.testing.assert_array_equal(tiles.tile(1, 1).array, sc.read_level(0, (256, 256, 256, 256)))
        assert sc.read(magnification=20.5).shape == (900, 1100, 3)  # within 5 %: still level 0 as stored
        assert sc.read(mpp=0.5).shape == (898, 1098, 3)  # exact: 0.499 -> 0.5 um resamples
    path = str(fixtures_dir / "odd.svs")
    synth.write_svs(path, 2903, 1801, downsamples=(1, 4))
    with tilescope.open(path) as s:
        sc = s.scenes[0]
        assert sc.levels[1].scale[0] != 4.0 and sc.levels[1].scale[0] == pytest.approx(4, rel=0.01)
        np.testing.assert_array_equal(sc.read(magnification=5), sc.read_level(1))


def test_one_rect_convention_and_mpp_pairs(scene):
    """Tiles.region and Tile.rect / level0_rect are (x, y, w, h); mpp requests take one value or an
    (x, y) pair; a level's lazy array is scene.view(level)."""
    tiles = scene.tiles(256, region=(100, 50, 1000, 600), downsample=2)
    assert tiles.region == (50, 25, 500, 300)
    t = tiles.tile(1, 0)
    assert t.rect == (306, 25, 244, 256) and t.level0_rect == (612.0, 50.0, 488.0, 512.0)
    mpp = scene.mpp[0] * 2
    np.testing.assert_array_equal(scene.read((0, 0, 400, 400), mpp=mpp), scene.read((0, 0, 400, 400), mpp=(mpp, mpp)))
    assert scene.read((0, 0, 400, 400), mpp=(mpp, 2 * mpp)).shape == (100, 200, 3)
    with pytest.raises(InvalidRequestError, match="mpp"):
        scene.read((0, 0, 10, 10), mpp=(1.0, -1.0))
    view = scene.view(1)
    assert view.shape == (*scene.levels[1].size[::-1], 3)
    assert not hasattr(scene, "level")
