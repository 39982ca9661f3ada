"""Aperio AFI: an XML list of per-channel SVS files (written by tools.synth), one Scene."""

from __future__ import annotations

import numpy as np
import pytest

import tilescope
from tools import synth

openslide = pytest.importorskip("openslide")

SIZE = (1100, 900)
NAMES = ("DAPI", "FITC", "TRITC")


def _afi(folder, names=NAMES, paths=None):
    items = "".join(f"<Image><Path>{p}</Path><ChannelName>{n}</ChannelName></Image>"
                    for n, p in zip(names, paths or [f"{n}.svs" for n in names], strict=True))
    p = folder / "slide.afi"
    p.write_text(f'<?xml version="1.0" encoding="utf-8"?>\r\n<ImageList>{items}</ImageList>')
    return str(p)


@pytest.fixture(scope="module")
def afi_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("afi")
    for i, n in enumerate(NAMES):
        synth.write_svs(d / f"{n}.svs", *SIZE, downsamples=(1, 4), seed=10 + i, associated=())
    synth.write_svs(d / "odd.svs", 1000, 900, downsamples=(1, 4), seed=9, associated=())
    return d


def test_channels_are_the_files(afi_dir):
    p = _afi(afi_dir)
    assert tilescope.detect(p) == "AFI"
    with tilescope.open(p) as s:
        sc = s.scenes[0]
        assert s.driver == "AFI" and len(s.scenes) == 1 and sc.size == SIZE
        assert sc.channel_names == tuple(f"{n}:{c}" for n in NAMES for c in "RGB")
        assert [lv.size for lv in sc.levels] == [SIZE, (275, 225)]
        assert sc.mpp == (0.499, 0.499) and sc.background == 0
        rect = (300, 200, 400, 300)
        got = sc.read(rect)
        for i, n in enumerate(NAMES):
            with openslide.OpenSlide(str(afi_dir / f"{n}.svs")) as o:
                ref = np.asarray(o.read_region(rect[:2], 0, rect[2:]).convert("RGB"))
                lv1 = np.asarray(o.read_region((0, 0), 1, (275, 225)).convert("RGB"))
            np.testing.assert_array_equal(got[..., 3 * i:3 * i + 3], ref)
            # channels by name, from level 1, aligned across files
            one = sc.read(size=(275, 225), channels=[f"{n}:G"])
            np.testing.assert_array_equal(one[..., 0], lv1[..., 1])


def test_closing_closes_the_channel_files(afi_dir):
    s = tilescope.open(_afi(afi_dir))
    s.scenes[0].read((0, 0, 64, 64))
    files = list(s._reader._files.values())
    assert len(files) == 3 and not any(f.closed for f in files)
    s.close()
    assert all(f.closed for f in files)
    with pytest.raises(tilescope.SlideClosedError):
        s.scenes[0].read((0, 0, 64, 64))


def test_bad_afi(afi_dir, tmp_path):
    folder = tmp_path
    for n in NAMES[:2]:
        (folder / f"{n}.svs").symlink_to(afi_dir / f"{n}.svs")
    with pytest.raises(tilescope.SourceNotFoundError, match=r"TRITC.*missing"):
        tilescope.open(_afi(folder))
    (folder / "odd.svs").symlink_to(afi_dir / "odd.svs")
    with pytest.raises(tilescope.CorruptDataError, match=r"'X'.*odd\.svs"):
        tilescope.open(_afi(folder, ("DAPI", "X"), ["DAPI.svs", "odd.svs"]))
    bad = folder / "nopath.afi"
    bad.write_text("<ImageList><Image><ChannelName>A</ChannelName></Image></ImageList>")
    with pytest.raises(tilescope.CorruptDataError, match="no <Path> element"):
        tilescope.open(str(bad))
    broken = folder / "broken.afi"
    broken.write_text("<ImageList><Image><Path>a.svs</Path></ImageList>")
    with pytest.raises(tilescope.CorruptDataError, match="malformed"):
        tilescope.open(str(broken))
