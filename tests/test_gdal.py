"""GDAL formats through rasterio: ERDAS Imagine with internal overviews, written by GDAL itself."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import tilescope

rasterio = pytest.importorskip("rasterio")
from rasterio.enums import Resampling  # noqa: E402

# the fixtures are not georeferenced (microscopy needs no geotransform): rasterio says so
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


@pytest.fixture(scope="module")
def hfa(tmp_path_factory):
    rng = np.random.default_rng(5)
    a = rng.integers(0, 4000, (3, 700, 900)).astype(np.uint16)
    p = str(tmp_path_factory.mktemp("gdal") / "stack.img")
    with rasterio.open(p, "w", driver="HFA", width=900, height=700, count=3, dtype="uint16") as d:
        d.write(a)
        for i, n in enumerate(["DAPI", "GFP", "Cy5"]):
            d.set_band_description(i + 1, n)
    with rasterio.open(p, "r+") as d:
        d.build_overviews([2, 4], Resampling.average)
    return p, np.moveaxis(a, 0, -1)


def test_bands_overviews_equal_rasterio(hfa):
    p, full = hfa
    assert tilescope.detect(p) == "GDAL"
    with tilescope.open(p) as s:
        sc = s.scenes[0]
        assert s.driver == "GDAL" and sc.channel_names == ("DAPI", "GFP", "Cy5") and sc.dtype == np.uint16
        assert [lv.size for lv in sc.levels] == [(900, 700), (450, 350), (225, 175)]
        np.testing.assert_array_equal(sc.read(), full)
        np.testing.assert_array_equal(sc.read((130, 70, 300, 200), channels=["GFP"])[..., 0],
                                      full[70:270, 130:430, 1])
        for i, size in enumerate([(450, 350), (225, 175)]):
            with rasterio.open(p, overview_level=i) as ov:
                want = np.moveaxis(ov.read(), 0, -1)
            np.testing.assert_array_equal(sc.read(size=size), want)  # the overview itself


def test_threads_and_close(hfa):
    p, full = hfa
    s = tilescope.open(p, cache=tilescope.TileCache(0))  # every read reaches the handles
    rng = np.random.default_rng(0)
    rects = [(int(x), int(y), 120, 90) for x, y in zip(rng.integers(0, 780, 24), rng.integers(0, 610, 24),
                                                         strict=True)]
    with ThreadPoolExecutor(4) as pool:  # a read that raises fails the test here
        got = list(pool.map(s.scenes[0].read, rects))
    for i, (x, y, w, h) in enumerate(rects):
        np.testing.assert_array_equal(got[i], full[y:y + h, x:x + w])
    handles = list(s._reader._files.values())
    assert handles and not any(h.closed for h in handles)
    s.close()
    assert all(h.closed for h in handles)


def test_tiffs_and_plain_images_stay_with_their_drivers(tmp_path, tiffs):
    from PIL import Image

    png = str(tmp_path / "p.png")
    Image.new("RGB", (40, 30)).save(png)
    assert tilescope.detect(png) == "Pillow"
    assert tilescope.detect(tiffs["zlib-pages"]) == "TIFF"
