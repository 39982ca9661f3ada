"""The viewer page in a real browser: Debian's chromium driven by Playwright (executable_path: no
browser download), against `tilescope serve` on uvicorn. OpenSeadragon must draw the tiles: the
screenshot's pixels are checked against what the slides hold, not only the requests."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image

from tools import servers

QUADRANTS = {(0, 0): (220, 30, 30), (1, 0): (30, 200, 40), (0, 1): (40, 60, 210), (1, 1): (250, 250, 250)}
PLANES = (40, 120, 200)  # the z-stack's planes, each one grey level


def _need(what: str) -> None:
    (pytest.fail if os.environ.get("CI") else pytest.skip)(what)


@pytest.fixture(scope="module")
def browser():
    sync = pytest.importorskip("playwright.sync_api") if not os.environ.get("CI") else \
        __import__("playwright.sync_api", fromlist=["sync_playwright"])
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        _need("Debian's chromium is not installed (apt-get install chromium)")
    with sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory, svs):
    root = tmp_path_factory.mktemp("site")
    shutil.copy(svs, root / "slide.svs")
    quad = np.zeros((768, 1024, 3), np.uint8)
    for (qx, qy), rgb in QUADRANTS.items():
        quad[qy * 384:(qy + 1) * 384, qx * 512:(qx + 1) * 512] = rgb
    with tifffile.TiffWriter(root / "quad.tif") as tw:  # a two-level pyramid in SubIFDs
        tw.write(quad, tile=(256, 256), subifds=1, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
        tw.write(quad[::2, ::2], tile=(256, 256), subfiletype=1)
    stack = np.stack([np.full((384, 512), v, np.uint8) for v in PLANES])
    tifffile.imwrite(root / "stack.ome.tif", stack, ome=True, metadata={"axes": "ZYX"}, tile=(256, 256))
    with servers.tilescope_server(str(root)) as url:
        yield url, root


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    errors: list[str] = []
    tiles: list[int] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("response", lambda r: tiles.append(r.status) if "/iiif/" in r.url else None)
    page.goto(url)
    page.wait_for_function("window.tilescope && window.tilescope.ready", timeout=60000)
    return page, errors, tiles


def _pixel(page, x: float, y: float) -> np.ndarray:
    """The viewer's drawn pixel at image coordinates (x, y) of the open slide."""
    at = page.evaluate("([x, y]) => { const v = window.tilescope.viewer; "
                       "const p = v.world.getItemAt(0).imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));"
                       "return [p.x, p.y]; }", [x, y])
    shot = np.asarray(Image.open(io.BytesIO(page.locator("#view").screenshot())).convert("RGB"))
    return shot[round(at[1]), round(at[0])].astype(int)


def test_the_viewer_draws_the_slide(browser, site, tmp_path):
    url, _ = site
    page, errors, tiles = _open(browser, f"{url}/view/quad.tif")
    assert not errors and tiles and all(s == 200 for s in tiles)
    for (qx, qy), rgb in QUADRANTS.items():
        got = _pixel(page, qx * 512 + 256, qy * 384 + 192)
        assert np.abs(got - rgb).max() <= 12, ((qx, qy), got, rgb)
    assert "µm" in page.locator("#scaletext").inner_text()  # the scale bar, from the slide's mpp
    page.close()


def test_an_svs_with_its_associated_images(browser, site):
    """The page of a whole-slide image: tiles drawn where the slide has pixels (its centre, as
    tilescope reads it), the label and macro shown, the magnification read out."""
    import tilescope

    url, root = site
    page, errors, tiles = _open(browser, f"{url}/view/slide.svs")
    assert not errors and tiles and all(s == 200 for s in tiles)
    with tilescope.open(str(root / "slide.svs")) as s:
        sc = s.scenes[0]
        w, h = sc.size
        want = sc.read((w // 2 - 32, h // 2 - 32, 64, 64)).reshape(-1, 3).mean(axis=0)
    got = np.mean([_pixel(page, w // 2 + dx, h // 2 + dy) for dx in (-16, 0, 16) for dy in (-16, 0, 16)], axis=0)
    assert np.abs(got - want).max() <= 40, (got, want)  # the same place of the slide, resampled by the browser
    names = page.eval_on_selector_all("#associated img", "els => els.map(e => e.naturalWidth > 0)")
    assert len(names) == 3 and all(names)
    assert "x " in page.locator("#scaletext").inner_text()  # magnification readout
    shot = os.environ.get("TILESCOPE_SCREENSHOT")  # the README's picture is made here
    if shot:
        page.screenshot(path=shot)
    page.close()


def test_switching_z_and_reopening_the_url(browser, site):
    url, _ = site
    page, errors, _ = _open(browser, f"{url}/view/stack.ome.tif")
    assert np.abs(_pixel(page, 256, 192) - PLANES[0]).max() <= 6
    loads = page.evaluate("window.tilescope.loads")
    page.eval_on_selector("#z", "el => { el.value = 1; el.dispatchEvent(new Event('change')); }")
    page.wait_for_function(f"window.tilescope.ready && window.tilescope.loads > {loads}", timeout=60000)
    assert np.abs(_pixel(page, 256, 192) - PLANES[1]).max() <= 6
    assert "z=1" in page.url
    again, errors2, _ = _open(browser, page.url)  # the address reproduces the view
    assert again.eval_on_selector("#z", "el => el.value") == "1"
    assert np.abs(_pixel(again, 256, 192) - PLANES[1]).max() <= 6
    assert not errors and not errors2
    page.close()
    again.close()
