"""ScanImage stacks written in ScanImage's layout by tools.synth, checked against
ScanImageTiffReader (Vidrio's reader) and tifffile's ScanImage parser on the same files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import tilescope
from tools import synth

SITR = pytest.importorskip("ScanImageTiffReader").ScanImageTiffReader


def labelled(channels, slices, frames_per_slice, volumes, shape=(20, 30)):
    """Frames in ScanImage's order (channel fastest, then frame of a slice, slice, volume), each
    filled with 1000*volume + 100*slice + 10*frame + channel, so a wrong mapping cannot pass."""
    for v in range(volumes):
        for z in range(slices):
            for f in range(frames_per_slice):
                for c in range(channels):
                    yield np.full(shape, 1000 * v + 100 * z + 10 * f + c, np.int16)


LABELLED = {"fps": (2, 3, 2, 2, None), "fps_classic": (2, 3, 2, 2, "classic"), "si3": (2, 3, 2, 2, 3),
            "si3_one_slice": (3, 1, 5, 1, 3)}


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    d = tmp_path_factory.mktemp("scanimage")
    out = {name: synth.write_scanimage(d / f"{name}.tif", 30, 20, channels=nc, slices=ns, frames_per_slice=fps,
                                       volumes=nv, frames=labelled(nc, ns, fps, nv),
                                       bigtiff=kind is None, version=3 if kind == 3 else None)
           for name, (nc, ns, fps, nv, kind) in LABELLED.items()}
    return out | {
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
        np.testing.assert_array_equal(sc.raw_frames(), data)
        np.testing.assert_array_equal(sc.raw_frames(1, 4), data[1:4])
        for i in range(data.shape[0]):
            assert sc.frame_descriptions[i] == r.description(i).rstrip("\0")
        # channels fastest, then frames of a slice, slices, volumes (t = volume x frame of slice)
        fps = sc.acquisition["frames_per_slice"]
        for t in range(nt):
            v, f = divmod(t, fps)
            for z in range(nz):
                got = sc.read(z=z, t=t)
                for c in range(nc):
                    np.testing.assert_array_equal(got[..., c], data[((v * nz + z) * fps + f) * nc + c])
        if name != "classic":  # the static block: the same settings and ROI JSON as Vidrio's reader
            meta = r.metadata()
            assert s.raw_metadata.split("\n{")[0].strip() == meta.split("\n{")[0].strip("\0").strip()


@pytest.mark.parametrize("name", list(LABELLED))
def test_labelled_planes(stacks, name):
    """Every (channel, z, t) reads the frame ScanImage's layout puts there: against the labels,
    ScanImageTiffReader's frames and tifffile's ScanImage series (slices x volumes, frames, channels)."""
    nc, ns, fps, nv, kind = LABELLED[name]
    p = stacks[name]
    with tilescope.open(p) as s, SITR(p) as r:
        sc = s.scenes[0]
        assert (sc.num_channels, sc.num_z_slices, sc.num_t_frames) == (nc, ns, nv * fps)
        data = r.data()
        np.testing.assert_array_equal(sc.raw_frames(), data)
        assert sc.shape == tuple(r.shape()) == data.shape  # (frames, h, w), as ScanImageTiffReader says
        stack = sc.read(z=(0, ns), t=(0, nv * fps))  # (t, z, h, w, c)
        for t in range(nv * fps):
            v, f = divmod(t, fps)
            for z in range(ns):
                for c in range(nc):
                    assert (stack[t, z, ..., c] == 1000 * v + 100 * z + 10 * f + c).all(), (t, z, c)
        assert sc.read(z=1 if ns > 1 else 0, t=0)[0, 0, 0] == (100 if ns > 1 else 0)
        # tifffile shapes only static-block files (slices x volumes, frames, channels); for older
        # ones its pages are the frames. (Its fast path for ScanImage <= 2015 classic TIFFs assumes
        # equidistant frames and drops a last frame that ends at the end of the file: 3.x frames are
        # equidistant, so those pages are listed without that path.)
        with tifffile.TiffFile(p, is_scanimage=kind != 3) as tf:
            series = tf.series[0]
            assert series.axes == ("ZTCYX" if kind is None else "IYX")
            ref = series.asarray().reshape(nv, ns, fps, nc, 20, 30)
        for t in range(nv * fps):
            v, f = divmod(t, fps)
            for z in range(ns):
                np.testing.assert_array_equal(np.moveaxis(stack[t, z], -1, 0), ref[v, z, f])


def test_scanimage3_settings(stacks):
    """ScanImage 3.x: the \\r-separated ``state.`` assignments as nested settings (each value equal to
    tifffile's MATLAB parser), channels from the savingChannelN flags, z step, frame period."""
    p = stacks["si3"]
    assert tilescope.detect(p) == "ScanImage"
    with tilescope.open(p) as s, SITR(p) as r:
        sc = s.scenes[0]
        desc = r.description(0).rstrip("\0")
        assert "\r" in desc and "\n" not in desc
        for line in desc.split("\r"):
            if not line:
                continue
            key, _, value = line.partition("=")
            got = sc.scanimage
            for part in key.split(".")[1:]:
                got = got[part]
            assert got == tifffile.matlabstr2py(value), key
        assert s.properties["scanimage"]["software"]["version"] == 3.8
        assert s.metadata["properties"]["scanimage"]["acq"]["frameRate"] == 8.138
        assert sc.channel_names == ("Channel 1", "Channel 2")
        assert sc.z_resolution == 1.5 and sc.t_resolution == pytest.approx(1 / 8.138)
        assert sc.acquisition == {"frames": 24, "channels_saved": [1, 2], "slices": 3, "volumes": 2,
                                  "frames_per_slice": 2, "z_step_um": 1.5, "frame_rate_hz": 8.138,
                                  "version": "3.8"}
        assert len(sc.frame_descriptions) == 24 and sc.frame_descriptions[23] == desc
        assert sc.frame_descriptions.parsed(0)["state.acq.numberOfZSlices"] == 3
    with tilescope.open(stacks["si3_one_slice"]) as s:
        sc = s.scenes[0]
        assert sc.channel_names == ("Channel 1", "Channel 2", "Channel 3") and sc.z_resolution is None
        assert sc.num_t_frames == 5 and sc.t_resolution == pytest.approx(1 / 8.138)


@pytest.mark.parametrize("sep", ["\n", "\r\n", " = "])
def test_settings_separators(sep):
    from tilescope.formats.scanimage import parse_settings

    if sep == " = ":
        text = "state.acq.frameRate = 8.1\rstate.acq.savingChannel1 = 1\r"
    else:
        text = sep.join(["state.acq.frameRate=8.1", "state.acq.savingChannel1=1", "state.x='a=b'"])
    got = parse_settings(text, "state.")
    assert got["acq"] == {"frameRate": 8.1, "savingChannel1": 1}
    assert sep == " = " or got["x"] == "a=b"


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
        sc.raw_frames(0, 2)  # the early frames are whole
        with pytest.raises(tilescope.CorruptDataError, match=r"cut\.tif"):
            sc.raw_frames()


def test_cli_info_and_frames(stacks, tmp_path, capsys):
    from tilescope.cli import main

    assert main(["info", stacks["si3"]]) == 0
    out = capsys.readouterr().out
    assert "frames: 24" in out and "frame_rate_hz: 8.138" in out and "version: 3.8" in out

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
