"""The tilescope command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import tifffile
from PIL import Image

import tilescope
from tilescope.cli import main


def test_info_human_and_json(svs, capsys):
    assert main(["info", svs]) == 0
    out = capsys.readouterr().out
    assert "driver: SVS" in out and "2900 x 2150" in out and "level 2" in out and "associated label" in out
    assert main(["info", svs, "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["driver"] == "SVS" and meta["mpp"] == [0.499, 0.499] and meta["magnification"] == 20
    assert main(["info", svs, "--raw"]) == 0
    assert capsys.readouterr().out.startswith("Aperio Image Library")


def test_thumbnail_png(svs, tmp_path):
    out = str(tmp_path / "thumb.png")
    assert main(["thumbnail", svs, out, "--max-size", "256"]) == 0
    im = np.asarray(Image.open(out))
    with tilescope.open(svs) as s:
        np.testing.assert_array_equal(im, s.scenes[0].read(size=(256, 0)))


def test_region_png_tiff_npy(svs, ome, tmp_path):
    with tilescope.open(svs) as s:
        want = s.scenes[0].read((100, 200, 300, 150), size=(150, 0))
    for ext in ("png", "tiff", "npy"):
        out = str(tmp_path / f"r.{ext}")
        assert main(["region", svs, out, "--rect", "100,200,300,150", "--size", "150,0"]) == 0
        readers = {"npy": np.load, "tiff": tifffile.imread, "png": lambda p: np.asarray(Image.open(p))}
        got = readers[ext](out)
        np.testing.assert_array_equal(got, want)
    out = str(tmp_path / "planes.tiff")
    args = ["--rect", "0,0,64,32", "--channels", "0,2", "--z", "0,3", "--t", "1"]
    assert main(["region", ome, out, *args]) == 0
    assert tifffile.imread(out).shape == (3, 32, 64, 2)


def test_errors_are_reported_not_raised(tmp_path, capsys):
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"hello")
    assert main(["info", str(bad)]) == 1
    assert "tilescope: error:" in capsys.readouterr().err
    assert main(["region", str(tmp_path / "missing.svs"), str(tmp_path / "x.png")]) == 1


def test_console_script(svs):
    r = subprocess.run([sys.executable, "-m", "tilescope", "info", svs, "--json"], capture_output=True,
                       text=True, check=True)
    assert json.loads(r.stdout)["scenes"][0]["size"] == [2900, 2150]
