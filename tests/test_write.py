"""tilescope.write: every output read back by independent readers (tifffile, openslide, tiffslide,
ome-types' schema validation), pixels compared with the source's own reads."""

import itertools

import numpy as np
import openslide
import pytest
import tifffile
import tiffslide
import zarr

import tilescope
from tilescope.writer import write


def _mean_diff(a, b):
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean())


def _halved(a):
    from tilescope.codecs import block_mean

    return block_mean(a, 2)


@pytest.fixture(scope="module")
def source(svs):
    with tilescope.open(svs) as s:
        yield s


def test_ome_tiff_from_svs_read_by_tifffile_openslide_tiffslide(source, tmp_path):
    ome_types = pytest.importorskip("ome_types")
    out = write(source, tmp_path / "out.ome.tif", tile_size=256, quality=90)
    sc = source.scenes[0]
    ref = sc.read_level(0)
    with tifffile.TiffFile(out) as tf:
        series = tf.series[0]
        assert series.shape == (*ref.shape[:2], 3) and tf.is_ome
        sizes = [lv.shape[:2] for lv in series.levels]
        assert sizes[0] == ref.shape[:2] and all(
            b == (-(-a[0] // 2), -(-a[1] // 2)) for a, b in itertools.pairwise(sizes))
        assert max(sizes[-1]) <= 256
        level0 = series.levels[0].asarray()
        assert _mean_diff(level0, ref) < 1.0  # JPEG at quality 90
        # each level is the one above halved (2x2 means; exact in the lossless tests), up to JPEG's
        # error (larger at level 1: the synthetic slide's detail is finer there)
        level1 = series.levels[1].asarray()
        assert _mean_diff(level1, _halved(ref)) < 3
        meta = ome_types.from_xml(tf.ome_metadata, validate=True)  # the OME schema
        assert [im.name for im in meta.images] == ["main", "thumbnail", "label", "macro"]
        px = meta.images[0].pixels
        assert (px.physical_size_x, px.physical_size_y) == pytest.approx(sc.mpp)
        assert meta.instruments[0].objectives[0].nominal_magnification == sc.magnification
        kept = {m.k: m.value for m in meta.structured_annotations.map_annotations[0].value.ms}
        assert kept and all(kept[f"{g}.{k}"] == str(v) for g, vs in source.properties.items()
                            for k, v in vs.items() if not isinstance(v, (list, tuple, dict)))
        label = tf.series[2].asarray()
        np.testing.assert_array_equal(label, source.associated["label"])  # stored losslessly
    with tiffslide.TiffSlide(out) as ts:
        assert ts.level_dimensions == tuple((w, h) for h, w in sizes)
        np.testing.assert_array_equal(np.asarray(ts.read_region((0, 0), 1, ts.level_dimensions[1]))[..., :3],
                                      level1)
    with openslide.OpenSlide(out) as o:  # generic-tiff: level 0 (openslide does not read SubIFDs)
        w, h = o.dimensions
        np.testing.assert_array_equal(np.asarray(o.read_region((0, 0), 0, (w, h)))[..., :3], level0)
    with tilescope.open(out) as back:
        assert back.driver == "OME" and back.scenes[0].mpp == pytest.approx(sc.mpp)
        assert set(back.associated) >= {"label", "macro"}


def test_tiled_tiff_levels_in_the_main_chain(source, tmp_path):
    out = write(source, tmp_path / "out.tif", tile_size=256, compression="zstd")
    ref = source.scenes[0].read_level(0)
    with openslide.OpenSlide(out) as o:
        assert o.properties["openslide.vendor"] == "generic-tiff" and o.level_count > 2
        got = np.asarray(o.read_region((0, 0), 0, o.dimensions))[..., :3]
        np.testing.assert_array_equal(got, ref)  # lossless
        assert float(o.properties["openslide.mpp-x"]) == pytest.approx(source.scenes[0].mpp[0])
        lv1 = np.asarray(o.read_region((0, 0), 1, o.level_dimensions[1]))[..., :3]
        count = o.level_count
    np.testing.assert_array_equal(lv1, _halved(ref))
    with tiffslide.TiffSlide(out) as ts:
        assert ts.level_count == count
    with tifffile.TiffFile(out) as tf:
        assert all(p.is_tiled for p in tf.pages) and tf.pages[0].compression == 50000


@pytest.mark.parametrize("compression", ["jpeg", "jpeg2000"])
def test_svs_opened_by_openslide_as_aperio(source, tmp_path, compression):
    out = write(source, tmp_path / "out.svs", compression=compression, tile_size=256)
    sc = source.scenes[0]
    ref = sc.read_level(0)
    with openslide.OpenSlide(out) as o:
        assert o.properties["openslide.vendor"] == "aperio"
        assert float(o.properties["openslide.mpp-x"]) == pytest.approx(sc.mpp[0])
        assert float(o.properties["openslide.objective-power"]) == sc.magnification
        assert set(o.associated_images) == {"thumbnail", "label", "macro"}
        got = np.asarray(o.read_region((0, 0), 0, o.dimensions))[..., :3]
        assert _mean_diff(got, ref) < (1.0 if compression == "jpeg" else 1.5)  # JPEG 2000 at 45 dB
        assert o.level_dimensions[1] == (-(-sc.size[0] // 2), -(-sc.size[1] // 2))
    with tiffslide.TiffSlide(out) as ts:
        np.testing.assert_array_equal(np.asarray(ts.read_region((0, 0), 0, ts.dimensions))[..., :3], got)


@pytest.mark.parametrize("suffix", [".svs", ".ome.tif", ".tif"])
def test_passthrough_is_bit_identical(source, tmp_path, suffix):
    sc = source.scenes[0]
    out = write(source, tmp_path / f"copy{suffix}", compression="passthrough")
    with tifffile.TiffFile(out) as tf:
        page = tf.pages[0]
        enc = sc.encoded_tiles(0)
        assert page.jpegtables == enc.params["tables"]
        fh = tf.filehandle
        fh.seek(page.dataoffsets[5])
        assert fh.read(page.databytecounts[5]) == enc.get(5 % enc.grid[0], 5 // enc.grid[0])
    with openslide.OpenSlide(out) as o:  # an independent decoder of the copied tiles
        assert o.level_count == (len(sc.levels) if suffix != ".ome.tif" else 1)
        for i in range(o.level_count):
            np.testing.assert_array_equal(np.asarray(o.read_region((0, 0), i, o.level_dimensions[i]))[..., :3],
                                          sc.read_level(i), err_msg=f"level {i}")
    with tilescope.open(out) as back:
        for i, lv in enumerate(back.scenes[0].levels):
            np.testing.assert_array_equal(back.scenes[0].read_level(i), sc.read_level(i))
            assert lv.size == sc.levels[i].size


def test_passthrough_of_dicom_frames(converted, tmp_path):
    """A DICOM slide's JPEG frames (YBR_FULL_422, wsidicomizer's copy of an SVS, whose streams
    carry an Adobe marker saying RGB: readers disagree on them, tilescope and openslide follow the
    attribute, wsidicom the marker): copied into DICOM again, frame for frame, so each reader
    reads the copy as it reads the source; refused for a TIFF, whose readers would believe the
    marker."""
    wsidicom = pytest.importorskip("wsidicom")
    with tilescope.open(converted[1]) as s:
        sc = s.scenes[0]
        assert sc.encoded_tiles(0).params["photometric"] == 6
        with pytest.raises(tilescope.InvalidRequestError, match="Adobe"):
            write(s, tmp_path / "from-dicom.tif", compression="passthrough")
        back = write(s, tmp_path / "again.dcm", compression="passthrough", tile_size=sc.levels[0].tile_size[0])
        with wsidicom.WsiDicom.open(back) as w, wsidicom.WsiDicom.open(converted[1]) as w0:
            np.testing.assert_array_equal(np.asarray(w.read_region((0, 0), 0, sc.size)),
                                          np.asarray(w0.read_region((0, 0), 0, sc.size)))
        with tilescope.open(back) as again:
            for i in range(len(sc.levels)):
                np.testing.assert_array_equal(again.scenes[0].read_level(i), sc.read_level(i))


def test_passthrough_refuses_what_it_cannot_copy(tmp_path, labelled):
    with tilescope.open(labelled["ome"]) as s, pytest.raises(tilescope.InvalidRequestError):
        write(s, tmp_path / "x.ome.tif", compression="passthrough")


@pytest.mark.parametrize("kind", ["ome", "czi", "dicom"])
def test_round_trips_keep_every_plane_and_channel(labelled, tmp_path, kind):
    """Planes labelled with their own indices (100*z + 10*t + c in the high byte) to OME-TIFF,
    lossless: every plane back where it belongs, through tifffile and through tilescope."""
    ome_types = pytest.importorskip("ome_types")
    with tilescope.open(labelled[kind]) as s:
        sc = s.scenes[0]
        out = write(s, tmp_path / f"{kind}.ome.tif", compression="zstd", tile_size=128)
        c, z, t = sc.num_channels, sc.num_z_slices, sc.num_t_frames
        with tifffile.TiffFile(out) as tf:
            data = tf.series[0].asarray()
            rgb = tf.pages[0].samplesperpixel == 3  # an RGB slide (the DICOM one): samples interleaved
            # XYCZT: C fastest; as (t, z, h, w, c)
            data = data.reshape(t, z, sc.size[1], sc.size[0], c) if rgb else \
                np.moveaxis(data.reshape(t, z, c, sc.size[1], sc.size[0]), 2, -1)
            meta = ome_types.from_xml(tf.ome_metadata, validate=True)
            px = meta.images[0].pixels
            assert (px.size_c, px.size_z, px.size_t) == (c, z, t)
            if not rgb:  # an RGB image is one OME channel of 3 samples
                assert [ch.name for ch in px.channels] == list(sc.channel_names)
            if sc.mpp:
                assert px.physical_size_x == pytest.approx(sc.mpp[0])
            if sc.z_resolution:
                assert px.physical_size_z == pytest.approx(sc.z_resolution)
        with tilescope.open(out) as back:
            bs = back.scenes[0]
            assert bs.channel_names == sc.channel_names and (bs.num_z_slices, bs.num_t_frames) == (z, t)
            for tt in range(t):
                for zz in range(z):
                    want = sc.read_level(0, z=zz, t=tt)
                    np.testing.assert_array_equal(data[tt, zz], want)
                    np.testing.assert_array_equal(bs.read_level(0, z=zz, t=tt), want)
            if kind == "ome":  # the planes are the labelled ones, not just equal to our own read
                assert np.all(data[1, 2, ..., 1] // 256 == 100 * 2 + 10 * 1 + 1)  # t 1, z 2, c 1


@pytest.mark.parametrize("compression", ["jpeg2000", "jpegxl"])
def test_lossless_at_quality_100_and_lossy_below(source, tmp_path, compression):
    ref = source.scenes[0].read_level(0)
    for quality, limit in ((100, 0), (90, 2.5)):
        out = write(source, tmp_path / f"{quality}.ome.tif", compression=compression, quality=quality)
        got = tifffile.imread(out, level=0)
        assert _mean_diff(got, ref) <= limit, quality
        if not limit:
            np.testing.assert_array_equal(got, ref)
    a16 = np.random.default_rng(5).integers(0, 4000, (300, 400), np.uint16)
    out = write(a16, tmp_path / "u16.ome.tif", compression=compression, quality=100, tile_size=128)
    np.testing.assert_array_equal(tifffile.imread(out, level=0), a16)


def test_round_trips_from_ndpi_and_a_scanimage_stack(tmp_path):
    """An NDPI with two focal planes to OME-TIFF and a ScanImage stack (2 channels x 3 slices x
    2 volumes, int16) to OME-Zarr, losslessly: every plane equal to the source's own read."""
    from tools import synth

    ndpi = synth.write_ndpi(tmp_path / "s.ndpi", 1024, 768, downsamples=(1, 4), focal_planes=(0, 1))
    stack = synth.write_scanimage(tmp_path / "stack.tif", 96, 64, channels=2, slices=3, volumes=2)
    for src, out in ((ndpi, "ndpi.ome.tif"), (stack, "stack.ome.zarr")):
        with tilescope.open(src) as s:
            sc = s.scenes[0]
            with pytest.raises(tilescope.InvalidRequestError):  # not a grid of JPEG tiles to copy
                write(s, tmp_path / "copy.tif", compression="passthrough")
            written = write(s, tmp_path / out, compression="zstd", tile_size=128)
            with tilescope.open(written) as back:
                bs = back.scenes[0]
                assert (bs.num_z_slices, bs.num_t_frames, bs.channel_names, bs.dtype) == \
                    (sc.num_z_slices, sc.num_t_frames, sc.channel_names, sc.dtype)
                assert bs.mpp == pytest.approx(sc.mpp) if sc.mpp else bs.mpp is None
                for t in range(sc.num_t_frames):
                    for z in range(sc.num_z_slices):
                        np.testing.assert_array_equal(bs.read_level(0, z=z, t=t), sc.read_level(0, z=z, t=t))


def test_arrays_numpy_and_dask(tmp_path):
    rng = np.random.default_rng(3)
    a = rng.integers(0, 4000, (700, 900, 2), dtype=np.uint16)
    out = write(a, tmp_path / "a.ome.tif", compression="deflate", mpp=0.25, channel_names=["DAPI", "CD3 µ"],
                tile_size=256)
    with tifffile.TiffFile(out) as tf:
        np.testing.assert_array_equal(np.moveaxis(tf.series[0].asarray(), 0, -1), a)
        assert len(tf.series[0].levels) == 3
    with tilescope.open(out) as back:
        assert back.scenes[0].channel_names == ("DAPI", "CD3 µ") and back.scenes[0].mpp == (0.25, 0.25)
    da = pytest.importorskip("dask.array")
    rgb = rng.integers(0, 255, (500, 600, 3), dtype=np.uint8)
    out = write(da.from_array(rgb, chunks=(128, 128, 3)), tmp_path / "d.tif", compression="lzw", tile_size=256)
    np.testing.assert_array_equal(tifffile.imread(out, key=0), rgb)
    yy, xx = np.mgrid[:500, :600]
    smooth = np.stack([xx * 255 // 600, yy * 255 // 500, (xx + yy) * 255 // 1100], axis=-1).astype(np.uint8)
    out = write(smooth, tmp_path / "j.ome.tif", quality=95, tile_size=256)  # JPEG of an RGB array
    assert _mean_diff(tifffile.imread(out, level=0), smooth) < 1


def test_a_failed_write_leaves_nothing_and_is_typed(tmp_path, source):
    """A source that breaks midway (a damaged tile): the reader's typed error, no half-written
    output; an encoder refusing data: WriteError naming the output; an existing store: refused."""

    class Breaks:
        size, dtype, channel_names = (1000, 800), np.dtype(np.uint8), ("R", "G", "B")

        def read_level(self, level, rect, channels=None, z=0, t=0):
            if rect[1] >= 512:
                raise tilescope.CorruptDataError("somewhere: tile 7 cannot be decoded")
            return np.zeros((rect[3], rect[2], 3), np.uint8)

    for name in ("b.ome.tif", "b.svs", "b.ome.zarr"):
        with pytest.raises(tilescope.CorruptDataError, match="tile 7"):
            write(Breaks(), tmp_path / name, tile_size=256, compression="zstd" if "zarr" in name else "jpeg")
        assert not (tmp_path / name).exists()
    assert not [p for p in tmp_path.iterdir()]  # no spool file either
    small = np.zeros((64, 64), np.uint8)
    with pytest.raises(tilescope.WriteError, match="nowhere"):  # the OS refuses: typed, naming it
        write(small, tmp_path / "nowhere" / "x.tif")
    with pytest.raises(tilescope.InvalidRequestError, match="float32"):
        write(small.astype(np.float32), tmp_path / "f.tif", compression="jpeg2000")
    assert not [p for p in tmp_path.iterdir()]
    (tmp_path / "full.zarr").mkdir()
    (tmp_path / "full.zarr" / "x").write_text("something")
    with pytest.raises(tilescope.InvalidRequestError, match=r"full\.zarr"):
        write(small, tmp_path / "full.zarr")
    assert (tmp_path / "full.zarr" / "x").exists()  # left as it was


def test_bad_requests_are_typed(tmp_path, source):
    with pytest.raises(tilescope.InvalidRequestError):
        write(np.zeros((64, 64), np.uint16), tmp_path / "x.tif", compression="jpeg")
    with pytest.raises(tilescope.InvalidRequestError):
        write(source, tmp_path / "x.png")
    with pytest.raises(tilescope.InvalidRequestError):
        write(source, tmp_path / "x.tif", tile_size=100)
    with pytest.raises(tilescope.InvalidRequestError):
        write(source, tmp_path / "x.tif", compression="gif")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_ome_zarr_validated_and_read_by_ome_zarr_and_zarr(source, tmp_path, zarr_format):
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    sc = source.scenes[0]
    ref = sc.read_level(0)
    out = write(source, tmp_path / "out.ome.zarr", zarr_format=zarr_format, tile_size=256)  # zstd
    group = zarr.open_group(out, mode="r")
    if zarr_format == 3:
        from ome_zarr_models.v05.image import Image
    else:
        from ome_zarr_models.v04.image import Image
    Image.from_zarr(group)  # the NGFF schema (0.5 / 0.4)
    attrs = dict(group.attrs)
    ms = (attrs["ome"] if zarr_format == 3 else attrs)["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"][1:] == pytest.approx(sc.mpp[::-1])
    assert attrs["tilescope"]["source_properties"]["aperio.AppMag"] == "20"
    level0 = np.moveaxis(group["0"][:], 0, -1)
    np.testing.assert_array_equal(level0, ref)  # lossless
    np.testing.assert_array_equal(np.moveaxis(group["1"][:], 0, -1), _halved(ref))
    assert group["0"].chunks == (3, 256, 256)
    last = len(ms["datasets"]) - 1  # smaller than a tile: one chunk of its own size
    expect = ref
    for _ in range(last):
        expect = _halved(expect)
    got = np.moveaxis(group[str(last)][:], 0, -1)
    assert got.shape == expect.shape and group[str(last)].chunks == group[str(last)].shape
    np.testing.assert_array_equal(got, expect)  # odd sizes too: edge pixels repeated, as block_mean does
    node = next(iter(Reader(parse_url(str(out)))()))  # ome-zarr's own reader
    assert [d.shape[1:] for d in node.data] == [group[str(i)].shape[1:] for i in range(len(node.data))]
    np.testing.assert_array_equal(np.moveaxis(np.asarray(node.data[1]), 0, -1), _halved(ref))
    assert node.metadata["channel_names"] == ["R", "G", "B"]


def test_sharded_ome_zarr(source, tmp_path):
    """shards=N: zarr v3 sharding (N x N tiles a shard, each shard written as its chunks come),
    validated, read by zarr and ome-zarr, and by tilescope."""
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image import Image

    ref = source.scenes[0].read_level(0)
    out = write(source, tmp_path / "sharded.ome.zarr", tile_size=128, shards=3)
    group = zarr.open_group(out, mode="r")
    Image.from_zarr(group)
    assert group["0"].shards == (3, 384, 384) and group["0"].chunks == (3, 128, 128)
    np.testing.assert_array_equal(np.moveaxis(group["0"][:], 0, -1), ref)
    np.testing.assert_array_equal(np.moveaxis(group["1"][:], 0, -1), _halved(ref))
    node = next(iter(Reader(parse_url(str(out)))()))
    np.testing.assert_array_equal(np.moveaxis(np.asarray(node.data[0]), 0, -1), ref)
    with tilescope.open(out) as back:
        for i in range(len(back.scenes[0].levels)):
            np.testing.assert_array_equal(back.scenes[0].read_level(i), np.moveaxis(group[str(i)][:], 0, -1))
    with pytest.raises(tilescope.InvalidRequestError):
        write(source, tmp_path / "v2.ome.zarr", zarr_format=2, shards=2)


def test_ome_zarr_of_a_labelled_stack(labelled, tmp_path):
    from ome_zarr_models.v05.image import Image

    with tilescope.open(labelled["ome"]) as s:
        sc = s.scenes[0]
        out = write(s, tmp_path / "stack.ome.zarr", tile_size=128)
        group = zarr.open_group(out, mode="r")
        Image.from_zarr(group)
        meta = dict(group.attrs)["ome"]
        assert [a["name"] for a in meta["multiscales"][0]["axes"]] == ["t", "c", "z", "y", "x"]
        assert [c["label"] for c in meta["omero"]["channels"]] == list(sc.channel_names)
        data = group["0"][:]
        assert data.shape == (2, 3, 3, sc.size[1], sc.size[0])
        for t in range(2):
            for z in range(3):
                for c in range(3):
                    assert np.all(data[t, c, z] // 256 == 100 * z + 10 * t + c), (t, z, c)
                    np.testing.assert_array_equal(data[t, c, z], sc.read_level(0, channels=[c], z=z, t=t)[..., 0])
        assert meta["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"][2] == \
            pytest.approx(sc.z_resolution)


@pytest.mark.parametrize("compression", ["passthrough", "jpeg"])
def test_dicom_through_wsidicomizer_read_by_wsidicom_and_openslide(source, tmp_path, compression):
    wsidicom = pytest.importorskip("wsidicom")
    pytest.importorskip("wsidicomizer")
    sc = source.scenes[0]
    tile = sc.levels[0].tile_size[0] if compression == "passthrough" else 512
    out = write(source, tmp_path / "slide.dcm", compression=compression, tile_size=tile)
    with wsidicom.WsiDicom.open(out) as w:
        assert len(w.levels) == len(sc.levels) and w.labels and w.overviews
        assert w.levels[0].mpp.width == pytest.approx(sc.mpp[0])
        for i, lv in enumerate(sc.levels):
            got = np.asarray(w.read_region((0, 0), w.levels[i].level, lv.size))[..., :3]
            if compression == "passthrough":  # the stored JPEG tiles as frames: the same pixels
                np.testing.assert_array_equal(got, sc.read_level(i), err_msg=f"level {i}")
            else:
                assert _mean_diff(got, sc.read_level(i)) < 2.0  # JPEG Q90 (small levels: finer detail)
            if i == 0:
                level0 = got
    first = str(sorted(p for p in (tmp_path / "slide.dcm").iterdir())[0])
    with openslide.OpenSlide(first) as o:  # openslide's DICOM reader, any file of the series
        assert o.properties["openslide.vendor"] == "dicom" and o.level_count == len(sc.levels)
        assert float(o.properties["openslide.mpp-x"]) == pytest.approx(sc.mpp[0])
        np.testing.assert_array_equal(np.asarray(o.read_region((0, 0), 0, o.dimensions))[..., :3], level0)
    with tilescope.open(out) as back:
        assert back.driver == "DICOM" and {"label", "macro"} <= set(back.associated)
        np.testing.assert_array_equal(back.scenes[0].read_level(0), level0)


def test_dicom_output_refuses_what_wsidicomizer_cannot_hold(tmp_path, labelled):
    with tilescope.open(labelled["ome"]) as s, pytest.raises(tilescope.InvalidRequestError):
        write(s, tmp_path / "x.dcm")
    with pytest.raises(tilescope.InvalidRequestError):
        write(np.zeros((64, 64, 3), np.uint8), tmp_path / "y.dcm")


def test_convert_command(source, tmp_path, capsys):
    from tilescope.cli import main

    out = tmp_path / "c.svs"
    assert main(["convert", source.path, str(out), "--compression", "passthrough", "--quiet"]) == 0
    with openslide.OpenSlide(str(out)) as o:
        assert o.properties["openslide.vendor"] == "aperio"
        np.testing.assert_array_equal(np.asarray(o.read_region((0, 0), 0, o.dimensions))[..., :3],
                                      source.scenes[0].read_level(0))
    assert main(["convert", source.path, str(tmp_path / "c.ome.tif"), "--tile-size", "256", "--levels", "2",
                 "--compression", "zstd"]) == 0
    with tifffile.TiffFile(tmp_path / "c.ome.tif") as tf:
        assert len(tf.series[0].levels) == 2 and tf.pages[0].tilewidth == 256
    assert main(["convert", source.path, str(tmp_path / "c.png")]) == 1
    assert "tilescope: error:" in capsys.readouterr().err
    write(source, tmp_path / "p.tif", tile_size=256, progress=True)  # the bar: tiles done / total
    err = capsys.readouterr().err
    from tilescope.writer import level_sizes

    total = sum(-(-w // 256) * -(-h // 256) for w, h in level_sizes(source.scenes[0].size, 256, "auto"))
    assert f"{total}/{total}" in err and "tiles" in err


def test_convert_every_scene(tmp_path):
    """--scene all: a file per scene (a Leica SCN with two images), named OUT-<index>."""
    from tilescope.cli import main
    from tools import synth

    scn = synth.write_scn(tmp_path / "two.scn")
    assert main(["convert", scn, str(tmp_path / "out.ome.tif"), "--scene", "all", "--compression", "zstd",
                 "--quiet"]) == 0
    with tilescope.open(scn) as s:
        assert len(s.scenes) == 2
        for sc in s.scenes:
            with tilescope.open(str(tmp_path / f"out-{sc.index}.ome.tif")) as back:
                np.testing.assert_array_equal(back.scenes[0].read_level(0), sc.read_level(0))


def test_any_object_with_the_scene_read_api(tmp_path):
    """What a pipeline hands over: not a Scene, only its read API (a computed probability map)."""

    class Heatmap:
        size, dtype, channel_names, mpp = (300, 200), np.dtype(np.float32), ("tumour",), (2.0, 2.0)

        def read_level(self, level, rect, channels=None, z=0, t=0):
            x, y, w, h = rect
            yy, xx = np.mgrid[y:y + h, x:x + w]
            return ((xx + yy) / 500.0).astype(np.float32)[..., None]

    out = write(Heatmap(), tmp_path / "heat.ome.tif", compression="zstd", tile_size=128)
    with tilescope.open(out) as back:
        sc = back.scenes[0]
        assert sc.channel_names == ("tumour",) and sc.mpp == (2.0, 2.0) and sc.dtype == np.float32
        np.testing.assert_array_equal(sc.read_level(0), Heatmap().read_level(0, (0, 0, 300, 200)))
