"""ScanImage stacks written in ScanImage's layout by tilescope.synth, checked against
ScanImageTiffReader (Vidrio's reader) and tifffile's ScanImage parser on the same files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import tilescope
from tilescope import synth

SITR = pytest.importorskip("ScanImageTiffReader").ScanImageTiffReader


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    d = tmp_path_factory.mktemp("scanimage")
    return {
        "volumes": synth.write_scanimage(d / "volumes.tif", 128, 96, channels=2, slices=3, volumes=2),
        "classic": synth.write_scanimage(d / "classic.tif", 64, 48, channels=1, slices=1, volumes=1,
                                         frames_per_slice=5, bigtiff=False, seed=1),
        "three": synth.write_scanimage(d / "three.tif", 80, 60, channels=3, slices=1, volumes=4, seed=2),
    }


def _flat(d, prefix="SI"):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}.{k}")
        else:
            yield f"{prefix}.{k}", v


@pytest.mark.parametrize("name,shape", [("volumes", (2, 3, 2)), ("classic", (1, 1, 5)), ("three", (3, 1, 4))])
def test_equal_to_scanimage_tiff_reader(stacks, name, shape):
    p = stacks[name]
    nc, nz, nt = shape
    assert tilescope.detect(p) == "ScanImage"
    with tilescope.open(p) as s, SITR(p) as r:
        sc = s.scenes[0]
        data = r.data()
        assert (sc.num_channels, sc.num_z_slices, sc.num_t_frames) == shape and sc.dtype == np.int16
        assert sc.num_frames == len(sc.frame_descriptions) == data.shape[0] == nc * nz * nt
        np.testing.assert_array_equal(sc.frames(), data)
        np.testing.assert_array_equal(sc.frames(1, 4), data[1:4])
        for i in range(data.shape[0]):
            assert sc.frame_descriptions[i] == r.description(i).rstrip("\0")
        # channels fastest, then slices, then time (volumes x frames per slice)
        for t in range(nt):
            for z in range(nz):
                got = sc.read(z=z, t=t)
                for c in range(nc):
                    np.testing.assert_array_equal(got[..., c], data[(t * nz + z) * nc + c])
        if name != "classic":  # the static block: the same settings and ROI JSON as Vidrio's reader
            meta = r.metadata()
            assert s.raw_metadata.split("\n{")[0].strip() == meta.split("\n{")[0].strip("\0").strip()


def test_settings_equal_tifffile(stacks):
    p = stacks["volumes"]
    with tifffile.TiffFile(p) as tf:
        ref = tf.scanimage_metadata
    with tilescope.open(p) as s:
        sc = s.scenes[0]
        ours = dict(_flat(sc.scanimage))
        for key, value in ref["FrameData"].items():
            if isinstance(value, str) and value.startswith("{"):
                continue  # cell arrays stay text here
            assert ours[key] == value, key
        assert sc.roi_groups == ref["RoiGroups"]
        assert sc.z_resolution == 2.0 and sc.t_resolution == pytest.approx(3 / 30)
        d = sc.frame_descriptions.parsed(4)
        assert d["frameNumbers"] == 5 and d["epoch"] == [2026, 11, 23, 12, 0, 0.0]


def test_truncated_stack(stacks, tmp_path):
    data = open(stacks["three"], "rb").read()  # noqa: SIM115
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) - 1000])
    with tilescope.open(str(cut)) as s:
        sc = s.scenes[0]
        sc.frames(0, 2)  # the early frames are whole
        with pytest.raises(tilescope.CorruptDataError, match=r"cut\.tif"):
            sc.frames()


def test_cli_info_and_frames(stacks, tmp_path, capsys):
    from tilescope.cli import main

    p = stacks["volumes"]
    assert main(["info", p]) == 0
    out = capsys.readouterr().out
    assert "driver: ScanImage" in out and "frames: 12" in out and "z_step_um: 2.0" in out
    npy = str(tmp_path / "f.npy")
    assert main(["region", p, npy, "--frames", "2,7"]) == 0
    with SITR(p) as r:
        np.testing.assert_array_equal(np.load(npy), r.data(beg=2, end=7))
    tif = str(tmp_path / "planes.tiff")
    assert main(["region", p, tif, "--z", "0,3", "--t", "1"]) == 0
    assert tifffile.imread(tif).shape == (3, 96, 128, 2)
