"""tilescope.server in-process (Starlette's TestClient over httpx): listing, metadata, Deep Zoom
equal to the generator, IIIF equal to Scene.read, and requests that must be refused."""

from __future__ import annotations

import io
import os
import shutil
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

import tilescope
from tilescope.openslide import OpenSlide
from tilescope.openslide.deepzoom import DeepZoomGenerator

pytest.importorskip("starlette")
pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def served(tmp_path_factory, svs, ome):
    from starlette.testclient import TestClient

    from tilescope.server import create_app

    root = tmp_path_factory.mktemp("root")
    os.makedirs(root / "cases" / "a")
    shutil.copy(svs, root / "cases" / "a" / "slide one.svs")
    shutil.copy(ome, root / "cells.ome.tiff")
    (root / "notes.txt").write_text("not a slide")
    tilescope.write(np.full((300, 400, 3), (10, 200, 90), np.uint8), root / "store.ome.zarr", tile_size=64)
    outside = tmp_path_factory.mktemp("outside")
    shutil.copy(svs, outside / "secret.svs")
    os.symlink(outside / "secret.svs", root / "link.svs")
    with TestClient(create_app(str(root))) as client:
        yield client, root


def _png(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(r.content)))


def test_listing_and_metadata(served, svs):
    client, _ = served
    r = client.get("/api/slides")
    assert r.status_code == 200
    paths = {e["path"]: e for e in r.json()}
    # no text file, no link out; an OME-Zarr store once, by its folder
    assert set(paths) == {"cases/a/slide one.svs", "cells.ome.tiff", "store.ome.zarr"}
    assert paths["store.ome.zarr"]["driver"] == "OMEZarr" and paths["store.ome.zarr"]["size"] == [400, 300]
    tile = _png(client.get("/dz/store.ome.zarr_files/9/0_0.png"))  # Deep Zoom of the store
    assert tile.shape == (255, 255, 3) and np.all(tile == (10, 200, 90))
    with tilescope.open(svs) as s:
        assert paths["cases/a/slide one.svs"]["size"] == list(s.scenes[0].size)
        meta = client.get("/api/slides/" + quote("cases/a/slide one.svs")).json()
        assert meta["driver"] == "SVS" and meta["scenes"][0]["size"] == list(s.scenes[0].size)
        np.testing.assert_array_equal(_png(client.get("/api/slides/cases/a/slide%20one.svs/associated/label.png")),
                                      s.associated["label"])
    assert client.get("/api/slides/cases/a/slide%20one.svs/associated/nope.png").status_code == 404


def test_deepzoom_equals_the_generator(served, svs):
    client, _ = served
    dz = DeepZoomGenerator(OpenSlide(svs), 254, 1, True)
    r = client.get("/dz/cases/a/slide%20one.svs.dzi")
    assert r.status_code == 200 and r.text == dz.get_dzi("jpeg")
    for level in (dz.level_count - 1, dz.level_count - 3, 3):
        cols, rows = dz.level_tiles[level]
        for col, row in ((0, 0), (cols - 1, rows - 1)):
            got = _png(client.get(f"/dz/cases/a/slide%20one.svs_files/{level}/{col}_{row}.png"))
            np.testing.assert_array_equal(got, np.asarray(dz.get_tile(level, (col, row)).convert("RGB")))
    r = client.get(f"/dz/cases/a/slide%20one.svs_files/{dz.level_count - 1}/0_0.jpeg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and "etag" in r.headers
    assert client.get(r.url, headers={"if-none-match": r.headers["etag"]}).status_code == 304
    other = DeepZoomGenerator(OpenSlide(svs), 256, 0, False)
    got = _png(client.get("/dz/cases/a/slide%20one.svs_files/10/1_1.png?tile_size=256&overlap=0&limit_bounds=0"))
    np.testing.assert_array_equal(got, np.asarray(other.get_tile(10, (1, 1)).convert("RGB")))


def test_iiif_info_and_regions_equal_scene_reads(served, svs, ome):
    client, _ = served
    ident = quote("cases/a/slide one.svs", safe="")
    info = client.get(f"/iiif/{ident}/info.json").json()
    with tilescope.open(svs) as s:
        sc = s.scenes[0]
        w, h = sc.size
        assert (info["width"], info["height"], info["type"], info["profile"]) == (w, h, "ImageService3", "level1")
        assert info["id"].endswith(f"/iiif/{ident}") and info["tiles"][0]["scaleFactors"][0] == 1
        assert {"width": sc.levels[-1].size[0], "height": sc.levels[-1].size[1]} in info["sizes"]
        cases = {"100,200,300,150/max/0/default.png": sc.read((100, 200, 300, 150)),
                 "100,200,300,150/150,/0/default.png": sc.read((100, 200, 300, 150), (150, 75)),
                 "full/!256,256/0/default.png": sc.read(size=(256, 0) if w >= h else (0, 256)),
                 "pct:50,50,25,25/max/0/color.png":  # edges rounded: x0 = 50 %, x1 = 75 % of the width
                     sc.read((round(w / 2), round(h / 2), round(w * 0.75) - round(w / 2),
                              round(h * 0.75) - round(h / 2)))}
        for url, want in cases.items():
            np.testing.assert_array_equal(_png(client.get(f"/iiif/{ident}/{url}")), want, err_msg=url)
        region = sc.read((0, 0, 64, 32))
        np.testing.assert_array_equal(_png(client.get(f"/iiif/{ident}/0,0,64,32/max/90/default.png")),
                                      np.rot90(region, -1))
        np.testing.assert_array_equal(_png(client.get(f"/iiif/{ident}/0,0,64,32/max/!0/default.png")),
                                      region[:, ::-1])
        assert _png(client.get(f"/iiif/{ident}/0,0,64,32/max/0/gray.png")).ndim == 2
        r = client.get(f"/iiif/{ident}/full/256,/0/default.jpg")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    with tilescope.open(ome) as s:  # a plane and channels of a fluorescence stack, composited
        from tilescope.display import Display

        sc = s.scenes[0]
        want = Display(sc, [2, 0], 1, 1)(sc.read((0, 0, 200, 100), channels=[2, 0], z=1, t=1))
        got = _png(client.get("/iiif/cells.ome.tiff/0,0,200,100/max/0/default.png?channels=2,0&z=1&t=1"))
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("url", [
    "/api/slides/../outside/secret.svs", "/api/slides/%2e%2e/secret.svs", "/api/slides//etc/passwd",
    "/api/slides/link.svs", "/api/slides/notes.txt", "/api/slides/cells.ome.tiff%00.svs",
    "/dz/link.svs.dzi", "/dz/notes.txt.dzi", "/iiif/..%2Foutside%2Fsecret.svs/info.json",
    "/iiif/%2Fetc%2Fpasswd/info.json", "/api/slides/missing.svs"])
def test_nothing_outside_the_root_or_not_a_slide(served, url):
    client, _ = served
    assert client.get(url).status_code == 404


@pytest.mark.parametrize("url", [
    "/iiif/cells.ome.tiff/0,0,0,10/max/0/default.png", "/iiif/cells.ome.tiff/a,b,c,d/max/0/default.png",
    "/iiif/cells.ome.tiff/full/99999999,/0/default.png", "/iiif/cells.ome.tiff/0,0,10,10/20,20/0/default.png",
    "/iiif/cells.ome.tiff/full/max/45/default.png", "/iiif/cells.ome.tiff/full/max/0/bitonal.png",
    "/iiif/cells.ome.tiff/full/max/0/default.gif", "/iiif/cells.ome.tiff/99999,0,10,10/max/0/default.png",
    "/iiif/cells.ome.tiff/full/64,/0/default.png?channels=DAPI,nope", "/iiif/cells.ome.tiff/full/64,/0/default.png?z=9",
    "/dz/cells.ome.tiff.dzi?tile_size=0", "/api/slides/cells.ome.tiff/thumbnail.png?size=big"])
def test_bad_requests_are_400_never_500(served, url):
    client, _ = served
    assert client.get(url).status_code == 400, url


def test_deepzoom_tiles_outside_the_grid_are_404(served):
    client, _ = served
    assert client.get("/dz/cells.ome.tiff_files/99/0_0.png").status_code == 404
    assert client.get("/dz/cells.ome.tiff_files/0/5_5.png").status_code == 404


def test_host_header_and_token(tmp_path, svs):
    from starlette.testclient import TestClient

    from tilescope.server import create_app

    shutil.copy(svs, tmp_path / "s.svs")
    with TestClient(create_app(str(tmp_path), token="s3cret")) as client:
        assert client.get("/api/slides").status_code == 401
        assert client.get("/api/slides?token=s3cret").status_code == 200
        assert client.get("/api/slides", headers={"authorization": "Bearer s3cret"}).status_code == 200
        # DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own Host
        assert client.get("/api/slides?token=s3cret", headers={"host": "evil.example"}).status_code == 400


def test_tilescope_serve_on_uvicorn(tmp_path, svs):
    """The command: a real uvicorn on 127.0.0.1, slides listed and tiles served over the socket;
    a non-loopback address is refused without --public."""
    import json
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    shutil.copy(svs, tmp_path / "s.svs")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tilescope", "serve", str(tmp_path), "--port", str(port)],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/slides", timeout=2) as r:
                    listing = json.loads(r.read())
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.1)
        assert [e["path"] for e in listing] == ["s.svs"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/iiif/s.svs/0,0,64,64/max/0/default.png") as r:
            got = np.asarray(Image.open(io.BytesIO(r.read())))
        with tilescope.open(svs) as s:
            np.testing.assert_array_equal(got, s.scenes[0].read((0, 0, 64, 64)))
    finally:
        proc.terminate()
        proc.wait(10)
    r = subprocess.run([sys.executable, "-m", "tilescope", "serve", str(tmp_path), "--host", "0.0.0.0"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--public" in r.stderr


def test_deepzoom_of_a_plane_and_channels(served, ome):
    client, _ = served
    from tilescope.display import Display

    dz = DeepZoomGenerator(OpenSlide(ome).plane(0, ["TRITC", "DAPI"], 1, 1), 254, 1, True)
    q = "?channels=TRITC,DAPI&z=1&t=1"
    assert client.get(f"/dz/cells.ome.tiff.dzi{q}").text == dz.get_dzi("jpeg")
    level = dz.level_count - 1
    got = _png(client.get(f"/dz/cells.ome.tiff_files/{level}/1_1.png{q}"))
    np.testing.assert_array_equal(got, np.asarray(dz.get_tile(level, (1, 1)).convert("RGB")))
    with tilescope.open(ome) as s:  # the drop-in's plane: that plane's channels, composited
        sc = s.scenes[0]
        (x, y), _, (w, h) = dz.get_tile_coordinates(level, (1, 1))
        want = Display(sc, [2, 0], 1, 1)(sc.read_level(0, (x, y, w, h), channels=[2, 0], z=1, t=1))
        np.testing.assert_array_equal(got, want)
    assert client.get("/dz/cells.ome.tiff.dzi?z=7").status_code == 400
    assert client.get("/dz/cells.ome.tiff.dzi?channels=nope").status_code == 400


def test_a_bounded_load_on_loopback(tmp_path, svs):
    """8 clients fetching random Deep Zoom tiles from `tilescope serve` on uvicorn for 3 s (the
    benchmark runs 16 for 30 s): every answer a 200, the figures reported."""
    import random

    from tools import servers

    shutil.copy(svs, tmp_path / "s.svs")
    dz = DeepZoomGenerator(OpenSlide(svs), 254, 1, True)
    rng = random.Random(0)
    paths = []
    for _ in range(300):
        level = dz.level_count - 1 - rng.randrange(3)
        cols, rows = dz.level_tiles[level]
        paths.append(f"/dz/s.svs_files/{level}/{rng.randrange(cols)}_{rng.randrange(rows)}.jpeg")
    with servers.tilescope_server(str(tmp_path)) as url:
        r = servers.load(url, paths, clients=8, seconds=3)
    print(f"load: {r['per_s']:.0f} tiles/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms")
    assert r["errors"] == 0 and r["tiles"] > 50
