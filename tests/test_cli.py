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


def test_info_json_and_raw_together(svs, capsys):
    assert main(["info", svs, "--json", "--raw"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["path"] == svs and doc["raw_metadata"].startswith("Aperio Image Library")
    with tilescope.open(svs) as s:
        assert {k: v for k, v in doc.items() if k not in ("path", "raw_metadata")} == \
            json.loads(json.dumps(s.metadata))


def test_thumbnail_never_enlarges_unless_asked(tmp_path):
    small = str(tmp_path / "small.png")
    Image.fromarray(np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)).save(small)
    out = str(tmp_path / "t.png")
    assert main(["thumbnail", small, out]) == 0
    assert Image.open(out).size == (16, 16)
    assert main(["thumbnail", small, out, "--size", "64"]) == 0
    assert Image.open(out).size == (64, 64)


def test_fluorescence_thumbnail_is_composited_and_tiff_keeps_the_samples(ome, tmp_path):
    from tilescope.display import Display

    png, tif = str(tmp_path / "t.png"), str(tmp_path / "t.tif")
    assert main(["thumbnail", ome, png, "--max-size", "200"]) == main(["thumbnail", ome, tif, "--max-size", "200"]) == 0
    with tilescope.open(ome) as s:
        sc = s.scenes[0]
        raw = sc.read(size=(200, 0))
        np.testing.assert_array_equal(tifffile.imread(tif), raw)  # uint16, 3 channels as stored
        np.testing.assert_array_equal(np.asarray(Image.open(png)), Display(sc)(raw))
    assert Image.open(png).mode == "RGB"


def test_region_by_channel_names_level_mpp_magnification_units(svs, ome, tmp_path):
    out = str(tmp_path / "r.tiff")
    with tilescope.open(ome) as s:
        sc = s.scenes[0]
        names = sc.channel_names
        assert main(["region", ome, out, "--rect", "0,0,64,32", "--channels", f"{names[2]},{names[0]}"]) == 0
        np.testing.assert_array_equal(tifffile.imread(out), sc.read((0, 0, 64, 32), channels=[2, 0]))
    with tilescope.open(svs) as s:
        sc = s.scenes[0]
        assert main(["region", svs, out, "--level", "1", "--rect", "400,400,800,400"]) == 0
        np.testing.assert_array_equal(tifffile.imread(out), sc.read_level(1, (100, 100, 200, 100)))
        assert main(["region", svs, out, "--rect", "400,400,800,400", "--mpp", str(4 * sc.mpp[0])]) == 0
        np.testing.assert_array_equal(tifffile.imread(out), sc.read((400, 400, 800, 400), mpp=4 * sc.mpp[0]))
        assert main(["region", svs, out, "--rect", "400,400,800,400", "--magnification", "5"]) == 0
        np.testing.assert_array_equal(tifffile.imread(out), sc.read((400, 400, 800, 400), magnification=5))
        um = [v * sc.mpp[0] for v in (400, 400, 800, 400)]
        assert main(["region", svs, out, "--rect", ",".join(map(str, um)), "--units", "um"]) == 0
        np.testing.assert_array_equal(tifffile.imread(out), sc.read(um, units="um"))


def test_errors_are_one_line_with_exit_codes(svs, tmp_path):
    r = subprocess.run([sys.executable, "-m", "tilescope", "region", svs, str(tmp_path / "no" / "x.png")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no/x.png" in r.stderr
    r = subprocess.run([sys.executable, "-m", "tilescope", "region", svs], capture_output=True, text=True)
    assert r.returncode == 2 and "usage:" in r.stderr
    r = subprocess.run([sys.executable, "-m", "tilescope", "info", str(tmp_path / "none.svs")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "none.svs" in r.stderr


def test_a_closed_pipe_ends_quietly(svs):
    """`tilescope info ... | head -1`: the reader is gone before the output is written."""
    import os

    read, write = os.pipe()
    os.close(read)
    r = subprocess.run([sys.executable, "-m", "tilescope", "info", svs, "--json"], stdout=write,
                       stderr=subprocess.PIPE, text=True)
    os.close(write)
    assert r.returncode == 141 and r.stderr == ""
