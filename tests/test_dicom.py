"""DICOM WSI files converted from the project's SVS by wsidicomizer, read against openslide,
wsidicom and our own read of the source SVS (the conversion keeps the JPEG tiles)."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

import tilescope

openslide = pytest.importorskip("openslide")

pydicom = pytest.importorskip("pydicom")
wsidicom = pytest.importorskip("wsidicom")


def _volume_file(folder: str, width: int) -> str:
    for name in sorted(os.listdir(folder)):
        ds = pydicom.dcmread(os.path.join(folder, name), stop_before_pixels=True)
        if ds.ImageType[2] == "VOLUME" and ds.TotalPixelMatrixColumns == width:
            return os.path.join(folder, name)
    raise AssertionError("no such level")


def test_folder_and_file_open_the_same_slide(converted):
    _, folder = converted
    one = _volume_file(folder, 275)  # any instance of the slide finds the others
    for source in (folder, one):
        assert tilescope.detect(source) == "DICOM"
        with tilescope.open(source) as s:
            sc = s.scenes[0]
            assert s.driver == "DICOM" and [lv.size for lv in sc.levels] == [(1100, 900), (275, 225)]
            assert sorted(s.associated) == ["label", "macro", "thumbnail"]


def test_a_list_of_files_is_one_slide(converted, derived, fluorescent, svs, tmp_path):
    """Files from several folders are one slide's instances when given as a list; a file of
    another slide, a missing file or a list of non-DICOM files is a typed error. A folder's slide
    is parsed again once files are added to it."""
    import shutil

    _, folder = converted
    _, files = derived
    volumes = [_volume_file(folder, 1100), _volume_file(folder, 275)]
    with tilescope.open([*volumes, files["seg"]]) as s:
        sc = s.scenes[0]
        assert [lv.size for lv in sc.levels] == [(1100, 900), (275, 225)] and not s.associated
        assert sc.find_segments(label="tumor") == ["tumor"]
    with tilescope.open(volumes[:1]) as s:
        assert len(s.scenes[0].levels) == 1
    other = os.path.join(fluorescent[0], sorted(os.listdir(fluorescent[0]))[0])
    with pytest.raises(tilescope.InvalidRequestError, match="not an instance of the slide"):
        tilescope.open([*volumes, other])
    with pytest.raises(tilescope.SourceNotFoundError, match="no such file"):
        tilescope.open([*volumes, str(tmp_path / "gone.dcm")])
    with pytest.raises(tilescope.InvalidRequestError, match="DICOM"):
        tilescope.open([svs])
    grown = tmp_path / "grown"
    grown.mkdir()
    shutil.copy(volumes[0], grown)
    with tilescope.open(str(grown)) as s:
        assert len(s.scenes[0].levels) == 1
    shutil.copy(volumes[1], grown)
    with tilescope.open(str(grown)) as s:
        assert len(s.scenes[0].levels) == 2


def test_a_small_thumbnail_extends_the_pyramid(converted, tmp_path):
    """A THUMBNAIL smaller than the smallest VOLUME level (the converted one, rebuilt with pydicom
    at 137x112) is the pyramid's last level, and still the associated thumbnail."""
    import shutil

    import imagecodecs
    from PIL import Image
    from pydicom.encaps import encapsulate

    _, folder = converted
    out = tmp_path / "thumb"
    shutil.copytree(folder, out)
    path = next(p for p in out.iterdir() if pydicom.dcmread(p, stop_before_pixels=True).ImageType[2] == "THUMBNAIL")
    with tilescope.open(folder) as s:
        small = np.asarray(Image.fromarray(s.scenes[0].read_level(1)).resize((137, 112), Image.BOX))
    jpeg = imagecodecs.jpeg8_encode(small, level=90)
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([jpeg])
    ds.Columns = ds.TotalPixelMatrixColumns = 137
    ds.Rows = ds.TotalPixelMatrixRows = 112
    ds.save_as(path, enforce_file_format=True)
    with tilescope.open(str(out)) as s:
        sc = s.scenes[0]
        assert [lv.size for lv in sc.levels] == [(1100, 900), (275, 225), (137, 112)]
        np.testing.assert_array_equal(sc.read_level(2), imagecodecs.jpeg8_decode(jpeg))
        np.testing.assert_array_equal(s.associated["thumbnail"], sc.read_level(2))
        np.testing.assert_array_equal(sc.read(size=(137, 112)), sc.read_level(2))


def test_pixels_equal_the_source_and_openslide(converted):
    svs, folder = converted
    with tilescope.open(folder) as s, tilescope.open(svs) as src:
        sc = s.scenes[0]
        for li in range(2):  # the JPEG tiles are the SVS's, unchanged
            np.testing.assert_array_equal(sc.read_level(li), src.scenes[0].read_level(li))
        with openslide.OpenSlide(_volume_file(folder, 1100)) as o:
            assert o.properties["openslide.vendor"] == "dicom"
            for rect in ((0, 0, 1100, 900), (333, 222, 300, 200)):
                np.testing.assert_array_equal(
                    sc.read(rect), np.asarray(o.read_region(rect[:2], 0, rect[2:]).convert("RGB")))
            np.testing.assert_array_equal(sc.read_level(1), np.asarray(o.read_region((0, 0), 1, (275, 225))
                                                                      .convert("RGB")))


def test_metadata_and_associated_equal_wsidicom(converted):
    _, folder = converted
    with tilescope.open(folder) as s, wsidicom.WsiDicom.open(folder) as w:
        sc = s.scenes[0]
        assert [lv.size for lv in sc.levels] == [(lv.size.width, lv.size.height) for lv in w.levels]
        mpp = w.levels.base_level.mpp
        assert sc.mpp == pytest.approx((mpp.width, mpp.height))
        np.testing.assert_array_equal(s.associated["label"], np.asarray(w.read_label()))
        np.testing.assert_array_equal(s.associated["macro"], np.asarray(w.read_overview()))
        # wsidicomizer copies the SVS tiles with an Adobe marker saying RGB, while the instances say
        # YBR_FULL_422: like openslide we follow the DICOM attribute (and equal the source SVS);
        # wsidicom follows the marker. Both read the same frames from the same places:
        ours = tilescope.open(folder, driver="DICOM").scenes[0]
        tile = w.levels.base_level.tile_size
        assert ours.levels[0].tile_size == (tile.width, tile.height)


def test_slide_coordinates_equal_highdicom(converted):
    spatial = pytest.importorskip("highdicom.spatial")
    _, folder = converted
    with tilescope.open(folder) as s:
        sc = s.scenes[0]
        o = sc.slide_origin
        rng = np.random.default_rng(0)
        for li, lv in enumerate(sc.levels):
            spacing = (sc.pixel_spacing_mm[1] * lv.scale[1], sc.pixel_spacing_mm[0] * lv.scale[0])  # highdicom: (row, column)
            to_ref = spatial.PixelToReferenceTransformer((o[0], o[1], 0.0), sc.image_orientation, spacing)
            idx = rng.integers(0, min(lv.size), (20, 2))
            ref = to_ref(idx)[:, :2]
            np.testing.assert_allclose(sc.pixel_to_slide(idx, level=li), ref, atol=1e-9)
            np.testing.assert_allclose(sc.slide_to_pixel(ref, level=li), idx, atol=1e-6)
        ds = pydicom.dcmread(_volume_file(folder, 1100), stop_before_pixels=True)
        assert sc.physical_size == pytest.approx((ds.ImagedVolumeWidth, ds.ImagedVolumeHeight), rel=1e-4)
        # a region given on the glass reads the pixels it covers
        x0, y0 = sc.pixel_to_slide([(300, 200)])[0]
        x1, y1 = sc.pixel_to_slide([(500, 350)])[0]
        got = sc.read_slide_region(min(x0, x1), min(y0, y1), abs(x1 - x0), abs(y1 - y0))
        np.testing.assert_array_equal(got, sc.read((300, 200, 200, 150)))


@pytest.fixture(scope="module")
def paths_and_planes(converted, tmp_path_factory):
    """The converted level-1 instance rebuilt with pydicom as 2 optical paths x 2 focal planes
    (TILED_FULL: columns, rows, focal planes, optical paths); returns the folder and the expected
    (path, plane) -> image."""
    import copy

    import imagecodecs
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    _, folder = converted
    src = _volume_file(folder, 275)
    with tilescope.open(folder) as s:
        base = s.scenes[0].read_level(1)
    ds = pydicom.dcmread(src)
    cols = -(-ds.TotalPixelMatrixColumns // ds.Columns)
    rows = -(-ds.TotalPixelMatrixRows // ds.Rows)
    frames, expected = [], {}
    for op in range(2):
        for z in range(2):
            img = np.clip(base.astype(int) + 40 * z, 0, 255).astype(np.uint8)
            img = img[..., ::-1].copy() if op else img
            canvas = np.zeros((rows * ds.Rows, cols * ds.Columns, 3), np.uint8)
            canvas[:img.shape[0], :img.shape[1]] = img
            tiles = [canvas[r * ds.Rows:(r + 1) * ds.Rows, c * ds.Columns:(c + 1) * ds.Columns]
                     for r in range(rows) for c in range(cols)]
            encoded = [imagecodecs.jpeg8_encode(t, level=95) for t in tiles]
            frames += encoded
            decoded = np.concatenate([np.concatenate([imagecodecs.jpeg8_decode(e) for e in encoded[r * cols:(r + 1) * cols]],
                                                     axis=1) for r in range(rows)], axis=0)
            expected[op, z] = decoded[:img.shape[0], :img.shape[1]]
    ds.PixelData = encapsulate(frames)
    ds.NumberOfFrames = len(frames)
    ds.TotalPixelMatrixFocalPlanes = 2
    ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices = 0.0015  # mm
    ds.NumberOfOpticalPaths = 2
    second = copy.deepcopy(ds.OpticalPathSequence[0])
    second.OpticalPathIdentifier = "2"
    second.OpticalPathDescription = "second path"
    ds.OpticalPathSequence[0].OpticalPathDescription = "first path"
    ds.OpticalPathSequence.append(second)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    out = tmp_path_factory.mktemp("paths") / "paths"
    out.mkdir()
    ds.save_as(out / "volume.dcm", enforce_file_format=True)
    return str(out), expected


def test_optical_paths_are_channels_and_focal_planes_z(paths_and_planes):
    """Frames placed as highdicom places TILED_FULL frames (optical path number, focal plane,
    tile position per frame). wsidicom agrees on the paths and planes but not on which frames are
    whose: it orders a level's optical paths as a Python set iterates, which varies from process
    to process, so its pixels of a multi-path TILED_FULL instance are no reference."""
    import imagecodecs
    from highdicom.spatial import iter_tiled_full_frame_data
    from pydicom.encaps import generate_frames

    folder, expected = paths_and_planes
    with tilescope.open(folder) as s, wsidicom.WsiDicom.open(folder) as w:
        sc = s.scenes[0]
        base = w.levels.base_level
        assert sc.num_z_slices == 2 and sc.focal_planes == tuple(base.focal_planes) == (0.0, 1.5)
        assert sc.z_resolution == pytest.approx(1.5)
        assert sc.channel_names == tuple(f"{p}:{c}" for p in ("first path", "second path") for c in "RGB")
        assert sorted(c["identifier"] for c in sc.channel_info[::3]) == sorted(base.optical_paths)
        assert sc.find_optical_paths(identifier="2") == ["second path:R", "second path:G", "second path:B"]
        ds = pydicom.dcmread(os.path.join(folder, os.listdir(folder)[0]))
        ref = {}
        for (path, plane, col, row, *_), frame in zip(iter_tiled_full_frame_data(ds),
                                                      generate_frames(ds.PixelData, number_of_frames=ds.NumberOfFrames),
                                                      strict=True):
            canvas = ref.setdefault((path - 1, plane - 1), np.zeros((ds.Rows * 2, ds.Columns * 2, 3), np.uint8))
            canvas[row - 1:row - 1 + ds.Rows, col - 1:col - 1 + ds.Columns] = imagecodecs.jpeg8_decode(frame)
        for (op, z), want in expected.items():
            got = sc.read(z=z, channels=sc.find_optical_paths(description=("first path", "second path")[op]))
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(got, ref[op, z][:sc.size[1], :sc.size[0]])


def test_fluorescence_paths_in_series_of_their_own(fluorescent):
    """wsidicomizer's conversions of three single-channel CZIs (a series each, one frame of
    reference and container) are one slide whose optical paths are channels and focal planes z:
    every path, plane and level equal to pylibCZIrw's read of the CZI (JPEG-LS is lossless) and
    to wsidicom's read of the DICOM files."""
    pyczi = pytest.importorskip("pylibCZIrw.czi")
    folder, czis = fluorescent
    with tilescope.open(folder) as s, wsidicom.WsiDicom.open(folder) as w:
        sc = s.scenes[0]
        assert len(s.properties["dicom"]["instances"]) == 3 * len(w.levels)
        assert sorted(sc.channel_names) == sorted(f"{f} channel" for f in czis) and sc.dtype == np.uint8
        assert [lv.size for lv in sc.levels] == [(lv.size.width, lv.size.height) for lv in w.levels]
        assert sc.focal_planes == tuple(w.levels.base_level.focal_planes) == (0.0, 1.5, 3.0)
        assert sc.num_z_slices == 3 and sc.z_resolution == pytest.approx(1.5)
        assert sc.magnification == 20 and sc.mpp == pytest.approx((0.325, 0.325))
        info = {c["identifier"]: c for c in sc.channel_info}
        assert sorted(info) == sorted(w.levels.base_level.optical_paths) == sorted(czis)
        assert info["FITC"]["wavelength"] == 495 and info["Cy5"]["description"] == "Cy5 channel"
        for fluor, czi in czis.items():
            [name] = sc.find_optical_paths(identifier=fluor)
            with pyczi.open_czi(czi) as d:
                for z, plane in enumerate(sc.focal_planes):
                    want = d.read(plane={"C": 0, "Z": z, "T": 0})[..., 0]
                    got = sc.read(z=z, channels=name)[..., 0]
                    np.testing.assert_array_equal(got, want)
                    np.testing.assert_array_equal(
                        np.asarray(w.read_region((0, 0), 0, sc.size, z=plane, path=fluor)), want)
            for li in range(1, len(sc.levels)):
                size = sc.levels[li].size
                np.testing.assert_array_equal(sc.read_level(li, channels=name, z=2)[..., 0],
                                              np.asarray(w.read_region((0, 0), li, size, z=3.0, path=fluor)))
        # a downscaled read of every channel comes from the level below, each path from its own instance
        small = sc.read((300, 200, 1000, 600), size=(250, 150), z=1)
        assert small.shape == (150, 250, 3)
        for c, name in enumerate(sc.channel_names):
            np.testing.assert_array_equal(small[..., c], sc.read_level(2, (75, 50, 250, 150), channels=name, z=1)[..., 0])


def test_orthanc_wsi_dicomizer_copied_tiles(orthanc_wsi):
    """No Image Type: the flavour is inferred (tiled instances are levels); no Frame of Reference:
    the series is the slide; the concatenated level 0 and every level equal the source SVS."""
    source, folder = orthanc_wsi["split"]
    with tilescope.open(folder) as s, tilescope.open(source) as src:
        sc, ref = s.scenes[0], src.scenes[0]
        assert s.driver == "DICOM" and [lv.size for lv in sc.levels] == [lv.size for lv in ref.levels]
        assert len(s.properties["dicom"]["instances"]) == 4  # level 0 in two parts
        for li in range(len(sc.levels)):
            np.testing.assert_array_equal(sc.read_level(li), ref.read_level(li))
        np.testing.assert_array_equal(sc.read((1500, 1000, 1200, 900), size=(300, 225)),
                                      ref.read((1500, 1000, 1200, 900), size=(300, 225)))


def test_orthanc_wsi_dicomizer_jpeg2000(orthanc_wsi):
    """Tiles re-encoded as JPEG 2000 (lossless: level 0 equals the source) and Orthanc's own lower
    levels, each equal to pydicom's decode of the frames placed by their per-frame positions
    (without pydicom's YCbCr conversion: the files say YBR_FULL_422 of the source, but the
    codestreams hold RGB with the JPEG 2000 colour transform, as level 0 shows)."""
    from pydicom.pixels import iter_pixels

    source, folder = orthanc_wsi["j2k"]
    with tilescope.open(folder) as s, tilescope.open(source) as src:
        sc = s.scenes[0]
        assert [lv.size for lv in sc.levels] == [(1100, 900), (550, 450), (275, 225)]
        assert sc.compression == "jpeg2000" and sc.compression_raw == "1.2.840.10008.1.2.4.90"
        np.testing.assert_array_equal(sc.read_level(0), src.scenes[0].read_level(0))
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            w, h = ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows
            want = np.zeros((h + ds.Rows, w + ds.Columns, 3), np.uint8)
            for item, frame in zip(ds.PerFrameFunctionalGroupsSequence, iter_pixels(path, as_rgb=False), strict=True):
                pos = item.PlanePositionSlideSequence[0]
                r, c = pos.RowPositionInTotalImagePixelMatrix - 1, pos.ColumnPositionInTotalImagePixelMatrix - 1
                want[r:r + ds.Rows, c:c + ds.Columns] = frame
            li = [lv.size for lv in sc.levels].index((w, h))
            np.testing.assert_array_equal(sc.read_level(li), want[:h, :w])


@pytest.fixture(scope="module")
def transcoded(converted, tmp_path_factory):
    """The source SVS transcoded by wsidicomizer to JPEG 2000 (lossless YBR_RCT, lossy YBR_ICT,
    lossless RGB) and to lossless RGB JPEG-LS; and level 1 of the lossless one decompressed by pydicom into native pixel data
    with explicit and with implicit VR little endian. Returns {name: folder}."""
    from wsidicom.codec import Channels, Jpeg2kSettings, JpegLsSettings
    from wsidicomizer import WsiDicomizer

    svs, _ = converted
    d = tmp_path_factory.mktemp("transcoded")
    out = {}
    for name, settings in (("rct", Jpeg2kSettings(levels=0)), ("ict", Jpeg2kSettings(levels=45)),
                           ("rgb", Jpeg2kSettings(levels=0, channels=Channels.RGB)),
                           ("jpegls", JpegLsSettings(channels=Channels.RGB))):
        out[name] = str(d / name)
        WsiDicomizer.convert(svs, out[name], encoding=settings, force_transcoding=True, include_label=False,
                             include_overview=False, include_thumbnail=False)
    ds = pydicom.dcmread(next(os.path.join(out["rct"], n) for n in os.listdir(out["rct"])
                              if pydicom.dcmread(os.path.join(out["rct"], n)).TotalPixelMatrixColumns == 275))
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ds.decompress()
    for name, syntax in (("explicit", ExplicitVRLittleEndian), ("implicit", ImplicitVRLittleEndian)):
        (d / name).mkdir()
        out[name] = str(d / name)
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(d / name / "level.dcm", enforce_file_format=True)
    return out


def test_jpeg2000_and_native_transfer_syntaxes(transcoded):
    """Every level of each JPEG 2000 flavour and of JPEG-LS equals wsidicom's read of it; the
    lossless ones equal each other, the lossy one is close (45 dB); pydicom's native rewrites of level 1 (explicit and
    implicit VR) equal the JPEG 2000 level they were decoded from."""
    reads = {}
    syntaxes = {"rct": "1.2.840.10008.1.2.4.90", "ict": "1.2.840.10008.1.2.4.91", "rgb": "1.2.840.10008.1.2.4.90",
                "jpegls": "1.2.840.10008.1.2.4.80"}
    vocabulary = {"rct": "jpeg2000", "ict": "jpeg2000", "rgb": "jpeg2000", "jpegls": "jpegls"}
    for name, syntax in syntaxes.items():
        with tilescope.open(transcoded[name]) as s, wsidicom.WsiDicom.open(transcoded[name]) as w:
            sc = s.scenes[0]
            assert sc.compression == vocabulary[name] and sc.compression_raw == syntax
            assert s.metadata["scenes"][0]["compression_raw"] == syntax
            reads[name] = [sc.read_level(li) for li in range(len(sc.levels))]
            for lv, got in zip(w.levels, reads[name], strict=True):  # wsidicom's level: log2 of the downsample
                np.testing.assert_array_equal(got, np.asarray(w.read_region((0, 0), lv.level, got.shape[1::-1])
                                                              .convert("RGB")))
    for a, b, c in zip(reads["rct"], reads["rgb"], reads["jpegls"], strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    for a, b in zip(reads["rct"], reads["ict"], strict=True):
        mse = np.mean((a.astype(float) - b) ** 2)
        assert 10 * np.log10(255 ** 2 / mse) > 38
    for name, syntax in (("explicit", "1.2.840.10008.1.2.1"), ("implicit", "1.2.840.10008.1.2")):
        with tilescope.open(transcoded[name]) as s:
            assert s.scenes[0].compression == "none" and s.scenes[0].compression_raw == syntax
            np.testing.assert_array_equal(s.scenes[0].read_level(0), reads["rct"][1])


def _split(ds, frames: list[bytes]):
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    ds.PixelData = encapsulate(frames)
    ds.NumberOfFrames = len(frames)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def test_concatenation_and_tiled_sparse(converted, tmp_path):
    import copy

    from pydicom.dataset import Dataset
    from pydicom.encaps import generate_frames
    from pydicom.uid import generate_uid

    _, folder = converted
    with tilescope.open(folder) as s:
        want0, want1 = s.scenes[0].read_level(0), s.scenes[0].read_level(1)
    # level 0 split into two instances of one concatenation
    ds = pydicom.dcmread(_volume_file(folder, 1100))
    frames = list(generate_frames(ds.PixelData, number_of_frames=ds.NumberOfFrames))
    uid = generate_uid()
    out = tmp_path / "parts"
    out.mkdir()
    for part, (lo, hi) in enumerate(((0, 7), (7, len(frames)))):
        p = _split(copy.deepcopy(ds), frames[lo:hi])
        p.ConcatenationUID, p.ConcatenationFrameOffsetNumber = uid, lo
        p.InConcatenationNumber, p.InConcatenationTotalNumber = part + 1, 2
        p.save_as(out / f"part{part}.dcm", enforce_file_format=True)
    # level 1 as TILED_SPARSE with its second tile left out
    ds1 = pydicom.dcmread(_volume_file(folder, 275))
    f1 = list(generate_frames(ds1.PixelData, number_of_frames=ds1.NumberOfFrames))
    sparse = _split(ds1, f1[:1])
    sparse.DimensionOrganizationType = "TILED_SPARSE"
    item, pos = Dataset(), Dataset()
    pos.ColumnPositionInTotalImagePixelMatrix, pos.RowPositionInTotalImagePixelMatrix = 1, 1
    pos.XOffsetInSlideCoordinateSystem = pos.YOffsetInSlideCoordinateSystem = 0
    item.PlanePositionSlideSequence = [pos]
    sparse.PerFrameFunctionalGroupsSequence = [item]
    sparse.save_as(out / "sparse.dcm", enforce_file_format=True)
    with tilescope.open(str(out)) as s:
        sc = s.scenes[0]
        np.testing.assert_array_equal(sc.read_level(0), want0)
        got1 = sc.read_level(1)
        np.testing.assert_array_equal(got1[:, :256], want1[:, :256])
        assert (got1[:, 256:] == 255).all()  # the absent tile: background


def test_rle_and_frames_in_several_fragments(converted, rle, tmp_path):
    """pydicom writes the same level as RLE Lossless, as JPEG frames split over three fragments
    each, with and without a Basic Offset Table, and with an Extended Offset Table."""
    import copy

    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.uid import RLELossless

    _, folder = converted
    with tilescope.open(folder) as s:
        want = s.scenes[0].read_level(1)
    ds = pydicom.dcmread(_volume_file(folder, 275))
    frames = list(generate_frames(ds.PixelData, number_of_frames=ds.NumberOfFrames))
    for bot in (True, False):
        d = copy.deepcopy(ds)
        d.PixelData = encapsulate(frames, fragments_per_frame=3, has_bot=bot)
        (tmp_path / f"split{bot}").mkdir()
        d.save_as(tmp_path / f"split{bot}" / "level.dcm", enforce_file_format=True)
        with tilescope.open(str(tmp_path / f"split{bot}")) as s:
            np.testing.assert_array_equal(s.scenes[0].read_level(0), want)
    # an Extended Offset Table (pydicom's encapsulate_extended: 64-bit offsets, an empty BOT)
    from pydicom.encaps import encapsulate_extended

    d = copy.deepcopy(ds)
    d.PixelData, d.ExtendedOffsetTable, d.ExtendedOffsetTableLengths = encapsulate_extended(frames)
    (tmp_path / "eot").mkdir()
    d.save_as(tmp_path / "eot" / "level.dcm", enforce_file_format=True)
    with tilescope.open(str(tmp_path / "eot")) as s:  # (wsidicom is no reference for these frames:
        np.testing.assert_array_equal(s.scenes[0].read_level(0), want)  # it follows their Adobe marker)
    with tilescope.open(rle) as s:
        assert s.scenes[0].compression == "rle" and s.scenes[0].compression_raw == RLELossless
        np.testing.assert_array_equal(s.scenes[0].read_level(0), want)
    with wsidicom.WsiDicom.open(rle) as w:  # the reference decode of the RLE frames
        np.testing.assert_array_equal(np.asarray(w.read_region((0, 0), 0, (275, 225)).convert("RGB")), want)


def test_segmentations_and_parametric_maps_are_channels(derived):
    hd = pytest.importorskip("highdicom")
    folder, files = derived
    want_seg = hd.seg.segread(files["seg"]).get_total_pixel_matrix(combine_segments=False)
    want_frac = hd.seg.segread(files["frac"]).get_total_pixel_matrix(combine_segments=False,
                                                                      rescale_fractional=False)[..., 0]
    want_pm = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(files["pm"])).get_total_pixel_matrix(
        apply_real_world_transform=False)
    with tilescope.open(folder) as s:
        sc = s.scenes[0]
        assert sc.channel_names == ("R", "G", "B", "tumor", "stroma", "probability", "SCORE")
        assert sc.read((0, 0, 64, 64)).shape == (64, 64, 3)  # by default the image channels
        assert [c["type"] for c in sc.channel_info] == ["OPTICAL_PATH"] * 3 + ["SEGMENT"] * 3 + ["PARAMETER"]
        assert sc.find_segments(label="tumor") == ["tumor"] and sc.find_segments(number=2) == ["stroma"]
        assert sc.find_optical_paths() == ["R", "G", "B"] and sc.find_parameters() == ["SCORE"]
        assert sc.find_optical_paths(identifier="no such path") == []
        np.testing.assert_array_equal(sc.read(channels=sc.find_segments(property_type="Tissue")[:2]), want_seg)
        frac = sc.read(channels="probability")
        assert frac.dtype == np.uint8 and sc.channel_info[5]["max_fractional_value"] == 255
        np.testing.assert_array_equal(frac[..., 0], want_frac)
        pm = sc.read(channels="SCORE")
        assert pm.dtype == np.float32 and sc.channel_info[6]["unit"]
        np.testing.assert_array_equal(pm[..., 0], want_pm.astype(np.float32))
        # image and derived channels together: one array in the common dtype, each channel as alone
        rect = (500, 400, 300, 200)
        mixed = sc.read(rect, channels=["G", "tumor", "SCORE"])
        assert mixed.dtype == np.float32
        np.testing.assert_array_equal(mixed[..., 0], sc.read(rect, channels="G")[..., 0])
        np.testing.assert_array_equal(mixed[..., 1], want_seg[400:600, 500:800, 0])
        # the layers exist at level 0 only: downscaled reads come from there, level 1 has none
        small = sc.read(size=(275, 225), channels="tumor")
        assert small.shape == (225, 275, 1) and set(np.unique(small)) <= {0, 1}
        with pytest.raises(tilescope.InvalidRequestError, match="level 1"):
            sc.read_level(1, channels="tumor")
        # outside the scene derived layers read 0, the image white
        edge = sc.read((1000, 800, 200, 200), channels=["R", "tumor"])
        assert (edge[150:, 150:, 0] == 255).all() and (edge[150:, 150:, 1] == 0).all()


@pytest.mark.parametrize("name", ["binary_full", "binary_sparse", "binary_positions", "fractional",
                                  "labelmap_full", "labelmap_sparse"])
def test_segmentations_as_highdicom_writes_them(converted, segmentations, name):
    """BINARY frames packed across byte boundaries (10x10 tiles), tiled-full, sparse and placed by
    per-frame positions only; FRACTIONAL; LABELMAP (segment numbers, with a palette too) with each
    segment as a 0/1 channel: equal to highdicom's own total pixel matrix."""
    hd = pytest.importorskip("highdicom")
    _, folder = converted
    seg = hd.seg.segread(segmentations[name])
    volumes = [os.path.join(folder, n) for n in sorted(os.listdir(folder))]
    with tilescope.open([*volumes, segmentations[name]]) as s:
        sc = s.scenes[0]
        info = sc.channel_info[3:]
        if name.startswith("labelmap"):
            assert [c["type"] for c in info] == ["LABELMAP"] + ["SEGMENT"] * 3
            assert info[0]["segments"] == {0: "Background", 1: "tumor", 2: "stroma"}
            np.testing.assert_array_equal(sc.read_level(1, channels=info[0]["name"])[..., 0],
                                          seg.get_total_pixel_matrix(combine_segments=True))
            assert sc.find_segments(number=0) == ["Background"]
        elif name == "fractional":
            want = seg.get_total_pixel_matrix(combine_segments=False, rescale_fractional=False)
            np.testing.assert_array_equal(sc.read_level(1, channels="probability"), want)
            return
        want = seg.get_total_pixel_matrix(combine_segments=False)
        got = sc.read_level(1, channels=sc.find_segments(property_type="Tissue"))
        assert sc.find_segments(property_type="Tissue") == ["tumor", "stroma"] and got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)
        assert got.sum() == 18641  # both masks: pixels were really read
        # downscaled reads come from level 1 too: only 0 and 1
        assert set(np.unique(sc.read(size=(100, 0), channels="tumor"))) <= {0, 1}


CLUTTER = ("seg", "ann", "sr", "truncated", "text", "other")


@pytest.mark.parametrize("before", [(), CLUTTER, ("truncated",), ("seg", "text"), ("ann", "sr", "other"),
                                    ("truncated", "seg")])
def test_a_folder_that_holds_more_than_the_slide(converted, clutter, tmp_path, before):
    """A SEG, an annotation, an SR, a truncated copy of an instance, a text file and another
    patient's slide beside the slide, named to sort before or after its files: the folder opens its
    first slide (and says there are two), the truncated copy is skipped with a warning naming it,
    every file of the slide opens the same slide, and pixels equal the clean folder's."""
    import shutil

    _, folder = converted
    d = tmp_path / "export"
    d.mkdir()
    for name in sorted(os.listdir(folder)):
        shutil.copy(os.path.join(folder, name), d / f"m_{name}")
    for name in CLUTTER:
        prefix = "a" if name in before else "z"
        shutil.copy(clutter[name], d / f"{prefix}_{name}_{os.path.basename(clutter[name])}")
    with tilescope.open(folder) as s:
        want = s.scenes[0].read_level(0)
    other_first = "other" in before
    with pytest.warns(UserWarning) as caught:
        s = tilescope.open(str(d))
    assert any(re.search(r"truncated.*: skipped, it cannot be read", str(w.message)) for w in caught)
    with s:
        sc = s.scenes[0]
        if other_first:  # the other patient's slide sorts first: it is the folder's first slide
            assert [lv.size for lv in sc.levels] == [(275, 225)]
        else:
            assert [lv.size for lv in sc.levels] == [(1100, 900), (275, 225)]
            assert sorted(s.associated) == ["label", "macro", "thumbnail"]
            assert sc.channel_names == ("R", "G", "B", "tumor", "stroma")
            np.testing.assert_array_equal(sc.read_level(0), want)
        assert any("truncated" in k for k in s.properties["dicom"]["skipped"])
    assert any("holds 2 slides" in str(w.message) and "find_slides" in str(w.message) for w in caught)
    assert tilescope.detect(str(d)) == "DICOM"
    seg = next(p for p in d.iterdir() if "_seg_" in p.name)
    with pytest.warns(UserWarning, match="truncated"), tilescope.open(str(seg)) as s:  # the slide it derives from
        assert [lv.size for lv in s.scenes[0].levels] == [(1100, 900), (275, 225)]
    with pytest.raises(tilescope.UnsupportedFormatError, match="not a VL Whole Slide"), \
            pytest.warns(UserWarning, match="truncated"):
        tilescope.open(str(next(p for p in d.iterdir() if "_sr_" in p.name)))
    with pytest.raises(tilescope.CorruptDataError, match=r"truncated\.dcm"), pytest.warns(UserWarning):
        tilescope.open(str(next(p for p in d.iterdir() if "_truncated_" in p.name)))


def test_find_slides_in_a_folder(converted, clutter, tmp_path):
    import shutil

    import tilescope.dicom

    _, folder = converted
    d = tmp_path / "export"
    shutil.copytree(folder, d)
    for name in CLUTTER:
        shutil.copy(clutter[name], d / f"{name}_{os.path.basename(clutter[name])}")
    with pytest.warns(UserWarning, match="truncated"):
        slides = tilescope.dicom.find_slides(d)
    try:
        assert sorted(s.scenes[0].levels[0].size for s in slides) == [(275, 225), (1100, 900)]
        assert sorted(s.properties["dicom"]["PatientID"] for s in slides)[1] == "other-patient"
    finally:
        for s in slides:
            s.close()
    with pytest.raises(tilescope.SourceNotFoundError):
        tilescope.dicom.find_slides(tmp_path / "nowhere")


def test_an_unreadable_instance_the_slide_needs(converted, clutter, orthanc_wsi, tmp_path):
    """A truncated file that is the slide's only copy of a level, or of one part of a concatenated
    level, stops the open with an error naming it; so does a garbage file where a concatenation
    misses a part. A broken label only loses the label."""
    import shutil

    _, folder = converted
    d = tmp_path / "no-level-0"
    shutil.copytree(folder, d)
    level0 = _volume_file(str(d), 1100)
    os.remove(level0)
    shutil.copy(clutter["truncated"], d / "truncated.dcm")
    with pytest.raises(tilescope.CorruptDataError, match=r"truncated\.dcm: part of the slide's pyramid"), \
            pytest.warns(UserWarning):
        tilescope.open(str(d))

    _, split = orthanc_wsi["split"]
    by_uid: dict = {}
    for n in sorted(os.listdir(split)):
        ds = pydicom.dcmread(os.path.join(split, n), stop_before_pixels=True)
        by_uid.setdefault(ds.get("ConcatenationUID"), []).append(os.path.join(split, n))
    parts = next(ps for uid, ps in by_uid.items() if uid and len(ps) == 2)
    for kind in ("truncated", "garbage"):
        e = tmp_path / kind
        shutil.copytree(split, e)
        target = e / os.path.basename(parts[1])
        data = target.read_bytes()
        target.write_bytes(data[:-100] if kind == "truncated" else data[:132] + b"\x00garbage" * 50)
        with pytest.raises(tilescope.CorruptDataError, match=os.path.basename(parts[1])), \
                pytest.warns(UserWarning, match="skipped"):
            tilescope.open(str(e))

    d = tmp_path / "broken-label"
    shutil.copytree(folder, d)
    label = next(p for p in d.iterdir() if pydicom.dcmread(p, stop_before_pixels=True).ImageType[2] == "LABEL")
    label.write_bytes(label.read_bytes()[:-100])
    with pytest.warns(UserWarning, match="skipped"), tilescope.open(str(d)) as s:
        assert sorted(s.associated) == ["macro", "thumbnail"] and len(s.scenes[0].levels) == 2
