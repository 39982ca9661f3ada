"""Zeiss CZI: files written by pylibCZIrw (Zeiss's own writer), read back against pylibCZIrw."""

from __future__ import annotations

import os

import numpy as np
import pytest

import tilescope

pyczi = pytest.importorskip("pylibCZIrw.czi")

TILE = (300, 400)  # h, w of one mosaic tile; placed every 380 x 280 px, so neighbours overlap
ZSTD1 = "zstd1:ExplicitLevel=1;PreProcess=HiLoByteUnpack"


def _fluo(rng, h, w, dtype=np.uint16, peak=4000):
    """Blobs on a dark field, with noise: compresses like fluorescence, not like white noise."""
    yy, xx = np.mgrid[0:h, 0:w]
    a = rng.normal(100, 20, (h, w))
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, 60)
        a += peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return np.clip(a, 0, np.iinfo(dtype).max).astype(dtype)


@pytest.fixture(scope="module")
def czi_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("czi")
    rng = np.random.default_rng(7)
    files = {}
    # 2 channels x 3 z uint16, 3x2 overlapping mosaic, zstd1 with hi-lo packing; scaling; names
    p = files["mosaic"] = str(d / "mosaic.czi")
    with pyczi.create_czi(p, exist_ok=True, compression_options=ZSTD1) as w:
        for c in range(2):
            for z in range(3):
                for ty in range(2):
                    for tx in range(3):
                        w.write(data=_fluo(rng, *TILE)[..., None], plane={"C": c, "Z": z, "T": 0},
                                location=(tx * 380, ty * 280))
        blue, green = (pyczi.Rgb8Color(np.uint8(0), np.uint8(g), np.uint8(b)) for g, b in ((0, 255), (255, 0)))
        w.write_metadata(document_name="mosaic", channel_names={0: "DAPI", 1: "GFP"},
                         scale_x=0.325, scale_y=0.325, scale_z=1.5,
                         display_settings={c: pyczi.ChannelDisplaySettingsDataClass(
                             True, pyczi.TintingMode.Color, col, 0.0, 1.0) for c, col in enumerate((blue, green))})
    # two scenes of RGB (Bgr24) tiles with 2 time points, uncompressed
    p = files["scenes"] = str(d / "scenes.czi")
    with pyczi.create_czi(p, exist_ok=True) as w:
        for s, (ox, oy) in enumerate([(100, 50), (3000, 2000)]):
            for t in range(2):
                for tx in range(2):
                    w.write(data=rng.integers(0, 256, (256, 320, 3), dtype=np.uint8), plane={"T": t},
                            location=(ox + tx * 320, oy), scene=s)
        w.write_metadata(document_name="scenes", scale_x=0.5, scale_y=0.5)
    # Gray8, zstd0, with a gap between tiles (background) and 3 time points
    p = files["gaps"] = str(d / "gaps.czi")
    with pyczi.create_czi(p, exist_ok=True, compression_options="zstd0:ExplicitLevel=2") as w:
        for t in range(3):
            for tx in range(2):
                w.write(data=_fluo(rng, 200, 250, np.uint8, 200)[..., None], plane={"T": t},
                        location=(tx * 300, 0))
        w.write_metadata(document_name="gaps")
    return files


def _ref(path, **kw):
    with pyczi.open_czi(path) as d:
        return d.read(**kw)


def test_mosaic_channels_z_equal_pylibczirw(czi_files):
    p = czi_files["mosaic"]
    with tilescope.open(p) as s:
        assert s.driver == "CZI" and tilescope.detect(p) == "CZI"
        sc = s.scenes[0]
        assert sc.size == (380 * 2 + 400, 280 + 300) and sc.rect == (0, 0, *sc.size)
        assert sc.channel_names == ("DAPI", "GFP") and sc.dtype == np.uint16
        assert sc.channel_colors == ("#0000FF", "#00FF00")
        assert sc.num_z_slices == 3 and sc.num_t_frames == 1
        assert sc.mpp == (0.325, 0.325) and sc.z_resolution == 1.5
        assert "pylibCZIrw" in s.raw_metadata
        w, h = sc.size
        for c in range(2):
            for z in range(3):
                ref = _ref(p, plane={"C": c, "Z": z, "T": 0}, roi=(0, 0, w, h))
                np.testing.assert_array_equal(sc.read(channels=[c], z=z), ref)
        # a region across the overlaps, and a z range with both channels
        roi = (350, 250, 200, 90)
        got = sc.read(roi, z=(0, 3))
        assert got.shape == (3, 90, 200, 2)
        for z in range(3):
            for c in range(2):
                np.testing.assert_array_equal(got[z, ..., c], _ref(p, plane={"C": c, "Z": z}, roi=roi)[..., 0])


def test_scenes_rgb_time_equal_pylibczirw(czi_files):
    p = czi_files["scenes"]
    with tilescope.open(p) as s:
        assert [sc.name for sc in s.scenes] == ["Scene #0", "Scene #1"]
        assert [sc.rect for sc in s.scenes] == [(100, 50, 640, 256), (3000, 2000, 640, 256)]
        for i, sc in enumerate(s.scenes):
            assert sc.channel_names == ("R", "G", "B") and sc.num_t_frames == 2
            assert sc.background == 255  # brightfield
            x, y, w, h = sc.rect
            for t in range(2):
                ref = _ref(p, plane={"T": t}, roi=(x, y, w, h), scene=i)
                np.testing.assert_array_equal(sc.read(t=t), ref[..., ::-1])  # pylibCZIrw gives BGR


def test_gaps_are_background_and_zstd0(czi_files):
    p = czi_files["gaps"]
    with tilescope.open(p) as s:
        sc = s.scenes[0]
        assert sc.size == (550, 200) and sc.dtype == np.uint8 and sc.num_t_frames == 3
        for t in range(3):
            ref = _ref(p, plane={"T": t}, roi=(0, 0, 550, 200))
            np.testing.assert_array_equal(sc.read(t=t), ref)  # the gap is 0 in both
        assert (sc.read((255, 0, 40, 200)) == 0).all()


def test_downscaled_reads_without_pyramid(czi_files):
    # no pyramid subblocks: scaled reads come from level 0 through the banded box filter
    with tilescope.open(czi_files["mosaic"], band_bytes=1 << 16) as s:
        sc = s.scenes[0]
        assert len(sc.levels) == 1
        full = sc.read(channels=[1], z=2).astype(np.float64)
        small = sc.read(size=(290, 145), channels=[1], z=2)
        ref = full.reshape(145, 4, 290, 4, 1).mean(axis=(1, 3))
        assert np.abs(small - ref).max() <= 1


def test_threads_give_the_same_pixels(czi_files):
    with tilescope.open(czi_files["mosaic"], threads=1, cache=tilescope.TileCache(0)) as s:
        want = s.scenes[0].read(z=1)
    with tilescope.open(czi_files["mosaic"]) as s:
        np.testing.assert_array_equal(s.scenes[0].read(z=1), want)


def test_corrupt_czi(czi_files, tmp_path):
    with open(czi_files["gaps"], "rb") as f:
        data = f.read()
    cut = tmp_path / "cut.czi"
    cut.write_bytes(data[: len(data) // 2])  # the directory is at the end: gone
    with pytest.raises(tilescope.CorruptDataError, match=r"cut\.czi"):
        tilescope.open(str(cut))
    bad = tmp_path / "bad.czi"
    b = bytearray(data)
    b[84:92] = (len(data) + 10).to_bytes(8, "little")  # directory position past the end
    bad.write_bytes(bytes(b))
    with pytest.raises(tilescope.CorruptDataError, match="outside the file"):
        tilescope.open(str(bad))
    assert os.path.exists(cut)
    # a subblock whose zstd data is garbage: the read names the file, the plane and the piece
    with tilescope.open(czi_files["gaps"]) as s:
        pos = int(s.scenes[0].levels[0].layout.planes[(0, 0)][0].pieces.positions[1])
    b = bytearray(data)
    used = int.from_bytes(b[pos + 24:pos + 32], "little")
    b[pos + 32 + 256:pos + 32 + used] = b"\xff" * (used - 256)  # metadata and data
    junk = tmp_path / "junk.czi"
    junk.write_bytes(bytes(b))
    with tilescope.open(str(junk)) as s, pytest.raises(tilescope.CorruptDataError, match=r"junk\.czi.*piece 1"):
        s.scenes[0].read()


def _entries(b: bytes):
    """(offset of each directory entry, offset of its copy in the subblock segment), file order."""
    import struct

    dir_pos = struct.unpack_from("<q", b, 84)[0]
    count = struct.unpack_from("<i", b, dir_pos + 32)[0]
    off, out = dir_pos + 32 + 128, []
    for _ in range(count):
        fpos = struct.unpack_from("<q", b, off + 6)[0]
        nd = struct.unpack_from("<i", b, off + 28)[0]
        out.append((off, fpos + 32 + 16, nd))
        off += 32 + 20 * nd
    return out


def _as_pyramid(b: bytearray, entry: int, nd: int, zoom: int) -> None:
    """Make one directory entry describe a pyramid subblock: logical X/Y size = zoom x stored."""
    import struct

    b[entry + 24] = 2  # PyramidType: multi-subblock
    for i in range(nd):
        d = entry + 32 + 20 * i
        if b[d:d + 1] in (b"X", b"Y"):
            stored = struct.unpack_from("<i", b, d + 16)[0]
            struct.pack_into("<i", b, d + 8, stored * zoom)


def test_pyramid_subblocks_serve_reads_at_scale(tmp_path):
    # pylibCZIrw writes no pyramid layers; this one is made from its output by turning the last
    # four subblocks (written at half size) into a 1/2 pyramid layer in the directory, then read
    # with libCZI (pylibCZIrw at zoom 0.5) as the reference
    rng = np.random.default_rng(3)
    p = tmp_path / "pyr.czi"
    full = _fluo(rng, 512, 512)
    with pyczi.create_czi(str(p), exist_ok=True) as w:
        for ty in range(2):
            for tx in range(2):
                w.write(data=full[ty * 256:(ty + 1) * 256, tx * 256:(tx + 1) * 256, None],
                        location=(tx * 256, ty * 256))
        half = full.reshape(256, 2, 256, 2).mean(axis=(1, 3)).astype(np.uint16) + 1000  # marked
        for ty in range(2):
            for tx in range(2):
                w.write(data=half[ty * 128:(ty + 1) * 128, tx * 128:(tx + 1) * 128, None],
                        location=(tx * 256, ty * 256))
    b = bytearray(p.read_bytes())
    for entry, copy, nd in _entries(bytes(b))[4:]:
        _as_pyramid(b, entry, nd, 2)
        _as_pyramid(b, copy, nd, 2)  # and its copy in the subblock segment
    p.write_bytes(bytes(b))
    with tilescope.open(str(p)) as s:
        sc = s.scenes[0]
        assert [lv.size for lv in sc.levels] == [(512, 512), (256, 256)]
        np.testing.assert_array_equal(sc.read(), _ref(str(p), roi=(0, 0, 512, 512), zoom=1.0))
        ours = sc.read(size=(256, 256))
        np.testing.assert_array_equal(ours[..., 0], half)  # the pyramid layer, not level 0 reduced
        np.testing.assert_array_equal(ours, _ref(str(p), roi=(0, 0, 512, 512), zoom=0.5))


def _segment(sid: bytes, body: bytes) -> bytes:
    return sid.ljust(16, b"\0") + len(body).to_bytes(8, "little") * 2 + body


def _attach(czi: bytearray, attachments: list[tuple[str, str, bytes]]) -> bytes:
    """Append ZISRAW attachment segments and their directory to a CZI, and point its header at it
    (the container bytes of the ZISRAW layout; the contents come from pylibCZIrw and Pillow)."""
    import struct

    entries = []
    for name, kind, data in attachments:
        pos = len(czi)
        entry = b"A1" + bytes(10) + struct.pack("<qi", pos, 0) + bytes(16) + kind.encode().ljust(8, b"\0") \
            + name.encode().ljust(80, b"\0")
        czi += _segment(b"ZISRAWATTACH", struct.pack("<i", len(data)) + bytes(12) + entry + bytes(112) + data)
        entries.append(entry)
    dir_pos = len(czi)
    czi += _segment(b"ZISRAWATTDIR", struct.pack("<i", len(entries)) + bytes(252) + b"".join(entries))
    struct.pack_into("<q", czi, 32 + 72, dir_pos)
    return bytes(czi)


def test_label_and_preview_attachments(czi_files, tmp_path):
    import io

    from PIL import Image

    rng = np.random.default_rng(4)
    label_czi = tmp_path / "label.czi"
    with pyczi.create_czi(str(label_czi), exist_ok=True) as w:  # labels are embedded CZI files
        w.write(data=rng.integers(0, 256, (120, 200, 3), dtype=np.uint8))
    preview = rng.integers(0, 256, (90, 160, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(preview).save(buf, "JPEG", quality=90)
    p = tmp_path / "with-attachments.czi"
    with open(czi_files["gaps"], "rb") as f:
        p.write_bytes(_attach(bytearray(f.read()), [("Label", "CZI", label_czi.read_bytes()),
                                                     ("SlidePreview", "JPG", buf.getvalue()),
                                                     ("EventList", "CZEVL", b"\0" * 16)]))
    with tilescope.open(str(p)) as s:
        assert sorted(s.associated) == ["label", "macro"]
        label = s.associated["label"]
        np.testing.assert_array_equal(label, _ref(str(label_czi), roi=(0, 0, 200, 120))[..., ::-1])
        np.testing.assert_array_equal(s.associated["macro"], np.asarray(Image.open(buf).convert("RGB")))
        np.testing.assert_array_equal(s.scenes[0].read(t=1), _ref(czi_files["gaps"], plane={"T": 1},
                                                                  roi=(0, 0, 550, 200)))


@pytest.mark.parametrize("dtype,samples", [(np.float32, 1), (np.uint16, 3)])
def test_gray32float_and_bgr48(tmp_path, dtype, samples):
    rng = np.random.default_rng(6)
    data = (rng.random((150, 220, samples)) * 1000).astype(dtype)
    p = str(tmp_path / f"{np.dtype(dtype).name}x{samples}.czi")
    with pyczi.create_czi(p, exist_ok=True) as w:
        w.write(data=data, location=(10, 20))
    with tilescope.open(p) as s:
        sc = s.scenes[0]
        assert sc.dtype == dtype and sc.num_channels == samples and sc.rect == (10, 20, 220, 150)
        ref = _ref(p, roi=(10, 20, 220, 150))
        np.testing.assert_array_equal(sc.read(), ref[..., ::-1] if samples == 3 else ref)


def test_mosaic_equals_aicspylibczi(czi_files):
    aics = pytest.importorskip("aicspylibczi")
    p = czi_files["mosaic"]
    czi = aics.CziFile(p)
    bb = czi.get_mosaic_bounding_box()
    with tilescope.open(p) as s:
        sc = s.scenes[0]
        assert (bb.x, bb.y, bb.w, bb.h) == sc.rect
        for c, z in ((0, 0), (1, 2)):
            ref = czi.read_mosaic(region=(bb.x, bb.y, bb.w, bb.h), C=c, Z=z, scale_factor=1.0)
            np.testing.assert_array_equal(sc.read(channels=[c], z=z)[..., 0], ref.reshape(bb.h, bb.w))


@pytest.fixture(scope="module")
def named_czis(tmp_path_factory):
    """pylibCZIrw files with what Zen adds to the XML: two named Bgr24 channels (brightfield and
    polarized) over three time points listed as offsets (0, 60.075, 120.15 s); two fluorescence
    channels named by their light source (LED555, LED385) with their dyes (Fluor, DyeName) and
    wavelengths, and a regular time interval. Each plane is filled with 10 * c + t."""
    from xml.etree import ElementTree as ET

    from tools import synth

    d = tmp_path_factory.mktemp("czi-named")
    rgb, fluo = str(d / "rgb.czi"), str(d / "fluo.czi")
    for path, (samples, dtype, nt, names) in {rgb: (3, np.uint8, 3, ("Bright", "Polarized")),
                                               fluo: (1, np.uint16, 2, ("LED555", "LED385"))}.items():
        with pyczi.create_czi(path, exist_ok=True) as w:
            for c in range(2):
                for t in range(nt):
                    w.write(data=np.full((64, 80, samples), 10 * c + t, dtype), plane={"C": c, "T": t},
                            location=(0, 0))
            w.write_metadata(document_name=os.path.basename(path), channel_names=dict(enumerate(names)),
                             scale_x=0.25, scale_y=0.25)

    def times(root, positions):
        dims = root.find("Metadata/Information/Image/Dimensions")
        ET.SubElement(ET.SubElement(dims, "T"), "Positions").append(positions)

    offsets = ET.Element("List")
    ET.SubElement(offsets, "Offsets").text = "0 60.075 120.15"
    synth.patch_czi_metadata(rgb, lambda root: times(root, offsets))

    def dyes(root):
        interval = ET.Element("Interval")
        ET.SubElement(interval, "Start").text, ET.SubElement(interval, "Increment").text = "0", "30"
        times(root, interval)
        channels = root.find("Metadata/Information/Image/Dimensions/Channels")
        for ch, (fluor, ex, em) in zip(channels, [("AF555", 553, 568), (None, 353, 465)], strict=True):
            if fluor:
                ET.SubElement(ch, "Fluor").text = fluor
            ET.SubElement(ch, "ExcitationWavelength").text = str(ex)
            ET.SubElement(ch, "EmissionWavelength").text = str(em)
        shown = ET.SubElement(ET.SubElement(root.find("Metadata"), "DisplaySetting"), "Channels")
        for k, dye in enumerate(["AF555", "DAPI"]):  # Zen's display settings name the dye too
            ET.SubElement(ET.SubElement(shown, "Channel", Id=f"Channel:{k}"), "DyeName").text = dye
    synth.patch_czi_metadata(fluo, dyes)
    return {"rgb": rgb, "fluo": fluo}


def test_named_rgb_channels_and_listed_times(named_czis):
    """Named colour channels are name:R/G/B and read by name; t_resolution from the listed offsets,
    which are exposed; pixels per (c, t) against pylibCZIrw and the plane labels."""
    from xml.etree import ElementTree as ET

    p = named_czis["rgb"]
    with pyczi.open_czi(p) as d:
        xml_names = [c.get("Name") for c in ET.fromstring(d.raw_metadata).iterfind(
            "Metadata/Information/Image/Dimensions/Channels/Channel")]
    with tilescope.open(p) as s:
        sc = s.scenes[0]
        assert xml_names == ["Bright", "Polarized"]
        assert sc.channel_names == tuple(f"{n}:{s}" for n in xml_names for s in "RGB")
        assert sc.num_t_frames == 3 and sc.t_resolution == pytest.approx(60.075)
        assert sc.t_offsets == pytest.approx((0.0, 60.075, 120.15))
        assert s.metadata["scenes"][0]["t_offsets"] == pytest.approx([0.0, 60.075, 120.15])
        assert [c["id"] for c in sc.channel_info] == ["Channel:0"] * 3 + ["Channel:1"] * 3
        for c, name in enumerate(xml_names):
            for t in range(3):
                got = sc.read(channels=[name], t=t)
                assert got.shape == (64, 80, 3) and (got == 10 * c + t).all()
                np.testing.assert_array_equal(got, _ref(p, plane={"C": c, "T": t})[..., ::-1])
        assert (sc.read(channels="Polarized:G", t=1) == 11).all()
        with pytest.raises(tilescope.InvalidRequestError, match="no channel named 'Dark'"):
            sc.read(channels="Dark")


def test_fluorescence_names_dyes_and_interval(named_czis):
    p = named_czis["fluo"]
    with tilescope.open(p) as s:
        sc = s.scenes[0]
        assert sc.channel_names == ("LED555", "LED385")  # the XML names, as slideio shows them
        assert [c["fluor"] for c in sc.channel_info] == ["AF555", "DAPI"]  # Fluor, else DyeName
        assert [c["excitation_wavelength"] for c in sc.channel_info] == [553, 353]
        assert [c["emission_wavelength"] for c in sc.channel_info] == [568, 465]
        assert s.metadata["scenes"][0]["channel_info"][0]["fluor"] == "AF555"
        assert sc.t_resolution == 30 and sc.t_offsets is None
        for c in range(2):
            for t in range(2):
                got = sc.read(channels="LED385" if c else "LED555", t=t)
                np.testing.assert_array_equal(got, _ref(p, plane={"C": c, "T": t}))
                assert (got == 10 * c + t).all()


def test_display_settings_are_the_display_windows(tmp_path):
    """pylibCZIrw's display settings (black and white points, fractions of the sample range) are
    the channels' display windows: in channel_info, and what the drop-in composites with."""
    from tilescope import openslide as ours
    from tilescope.display import Display

    p = str(tmp_path / "shown.czi")
    rng = np.random.default_rng(3)
    with pyczi.create_czi(p, exist_ok=True) as w:
        for c in range(2):
            w.write(data=_fluo(rng, 300, 200)[..., None], plane={"C": c, "Z": 0, "T": 0}, location=(0, 0))
        red, green = (pyczi.Rgb8Color(np.uint8(r), np.uint8(g), np.uint8(0)) for r, g in ((255, 0), (0, 255)))
        w.write_metadata(document_name="shown", channel_names={0: "A", 1: "B"}, display_settings={
            0: pyczi.ChannelDisplaySettingsDataClass(True, pyczi.TintingMode.Color, red, 0.01, 0.05),
            1: pyczi.ChannelDisplaySettingsDataClass(True, pyczi.TintingMode.Color, green, 0.0, 0.02)})
    with tilescope.open(p) as s:
        sc = s.scenes[0]
        windows = [info["window"] for info in sc.channel_info]
        np.testing.assert_allclose(windows, [(0.01 * 65535, 0.05 * 65535), (0.0, 0.02 * 65535)], rtol=1e-5)
        assert sc.channel_colors == ("#FF0000", "#00FF00")
        raw = sc.read_level(0, (0, 0, 300, 200)).astype(np.float64)
        np.testing.assert_allclose(Display(sc).window, windows)
    red_want = np.clip((raw[..., 0] - windows[0][0]) / (windows[0][1] - windows[0][0]), 0, 1) * 255
    green_want = np.clip(raw[..., 1] / windows[1][1], 0, 1) * 255
    with ours.OpenSlide(p) as b:
        got = np.asarray(b.read_region((0, 0), 0, (300, 200))).astype(int)
    assert np.abs(got[..., 0] - np.rint(red_want)).max() <= 1
    assert np.abs(got[..., 1] - np.rint(green_want)).max() <= 1
    assert (got[..., 2] == 0).all()
