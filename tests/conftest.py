"""Fixtures: slides written once per test session by tools.synth (tifffile + imagecodecs)."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import tifffile

from fuzz.seeds import turbojpeg
from tools import synth


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (CI=true) a test skipped because a reference reader or fixture writer is missing
    fails: .ci/run installs every one, so such a skip is an install step gone wrong. Elsewhere
    (``pip install -e . && pytest``) those tests skip cleanly."""
    outcome = yield
    _missing_is_failure(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _missing_is_failure(outcome.get_result())


def _missing_is_failure(report) -> None:
    if os.environ.get("CI") and report.skipped and "could not import" in str(report.longrepr):
        report.outcome = "failed"


# sizes deliberately not multiples of the 256 px tile size
SVS_SIZE = (2900, 2150)


@pytest.fixture(scope="session")
def fixtures_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("slides")


def _make(dirpath, name, fn, *args, **kw):
    path = os.path.join(dirpath, name)
    if not os.path.exists(path):
        fn(path, *args, **kw)
    return path


@pytest.fixture(scope="session")
def svs(fixtures_dir):
    """The main SVS: YCbCr JPEG tiles with shared JPEGTables, 3 levels, thumbnail/label/macro."""
    return _make(fixtures_dir, "main.svs", synth.write_svs, *SVS_SIZE, downsamples=(1, 4, 16))


@pytest.fixture(scope="session")
def svs_variants(fixtures_dir):
    """Small SVS files, one per tile encoding Aperio uses, plus a BigTIFF one."""
    out = {}
    for c in ("jpeg-rgb", "jpeg2000-rgb", "jpeg2000-ycbcr", "lzw", "none"):
        out[c] = _make(fixtures_dir, f"{c}.svs", synth.write_svs, 1100, 900, compression=c,
                       downsamples=(1, 4), seed=1)
    out["bigtiff"] = _make(fixtures_dir, "big.svs", synth.write_svs, 1100, 900, bigtiff=True,
                           downsamples=(1, 4), seed=2)
    return out


@pytest.fixture(scope="session")
def tiffs(fixtures_dir):
    """Generic pyramidal TIFF/BigTIFF in several layouts."""
    return {
        "zlib-pages": _make(fixtures_dir, "zlib-pages.tiff", synth.write_tiff, 1500, 1100),
        "jpeg-subifds": _make(fixtures_dir, "jpeg-subifds.tiff", synth.write_tiff, 1500, 1100,
                              compression="jpeg", pyramid="subifds"),
        "classic-lzw": _make(fixtures_dir, "classic-lzw.tif", synth.write_tiff, 1300, 900,
                             compression="lzw", bigtiff=False, predictor=True),
        "zstd-planar": _make(fixtures_dir, "zstd-planar.tiff", synth.write_tiff, 1000, 700,
                             compression="zstd", planar=True),
        "stripped": _make(fixtures_dir, "stripped.tif", synth.write_tiff, 900, 700, tile=None,
                          downsamples=(1,), bigtiff=False),
    }


@pytest.fixture(scope="session")
def ome(fixtures_dir):
    """OME-TIFF: 3 channels uint16, 3 z, 2 t, SubIFD pyramid of 3 levels."""
    return _make(fixtures_dir, "multi.ome.tiff", synth.write_ome, 1100, 900, channels=3, z=3, t=2)


@pytest.fixture(scope="session")
def ome8(fixtures_dir):
    """OME-TIFF: 4 channels uint8, JPEG-free zstd, 2 levels."""
    return _make(fixtures_dir, "u8.ome.tiff", synth.write_ome, 700, 500, channels=4, dtype=np.uint8,
                 levels=2, compression="zstd", seed=3)


@pytest.fixture(scope="session")
def svs_exact(fixtures_dir):
    """An SVS whose level sizes divide exactly (downsamples 1, 4, 16), with an sRGB ICC profile:
    Deep Zoom and openslide's read_region agree on every tile of it."""
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return _make(fixtures_dir, "exact.svs", synth.write_svs, 2048, 1536, downsamples=(1, 4, 16), seed=7,
                 icc_profile=icc)


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    turbojpeg()
    WsiDicomizer = pytest.importorskip("wsidicomizer").WsiDicomizer

    d = tmp_path_factory.mktemp("dicom")
    svs = synth.write_svs(d / "source.svs", 1100, 900, downsamples=(1, 4), seed=5)
    out = d / "dcm"
    WsiDicomizer.convert(svs, str(out), include_label=True, include_overview=True)
    return svs, str(out)


@pytest.fixture(scope="session")
def derived(converted, tmp_path_factory):
    """The converted slide with highdicom-written derived instances of level 0: a BINARY
    segmentation (tumor, stroma), a FRACTIONAL one (probability) and a float parametric map.
    Returns the folder and the derived files."""
    import shutil

    hd = pytest.importorskip("highdicom")
    pydicom = pytest.importorskip("pydicom")
    from pydicom.sr.codedict import codes

    _, folder = converted
    out = tmp_path_factory.mktemp("derived") / "slide"
    shutil.copytree(folder, out)
    src = next(ds for ds in (pydicom.dcmread(p) for p in sorted(out.iterdir()))
               if ds.ImageType[2] == "VOLUME" and ds.TotalPixelMatrixColumns == 1100)
    h, w = src.TotalPixelMatrixRows, src.TotalPixelMatrixColumns
    yy, xx = np.mgrid[:h, :w]
    binary = np.stack([(xx - 400) ** 2 + (yy - 300) ** 2 < 150 ** 2, (xx > 700) & (yy > 500)], -1)[None]

    def describe(n, label):
        return hd.seg.SegmentDescription(n, label, codes.SCT.Tissue, codes.SCT.Tissue,
                                         hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    common = dict(manufacturer="tilescope", manufacturer_model_name="tests", software_versions="0",
                  device_serial_number="1", tile_pixel_array=True)
    seg = hd.seg.Segmentation([src], binary.astype(np.uint8), "BINARY",
                              [describe(1, "tumor"), describe(2, "stroma")], hd.UID(), 10, hd.UID(), 1, **common)
    frac = hd.seg.Segmentation([src], (xx / w).astype(np.float32)[None], "FRACTIONAL",
                               [describe(1, "probability")], hd.UID(), 11, hd.UID(), 1, **common)
    mapping = hd.pm.RealWorldValueMapping(lut_label="score", lut_explanation="a score", unit=codes.UCUM.NoUnits,
                                          value_range=(0.0, 2.0), intercept=0, slope=1)
    pm = hd.pm.ParametricMap([src], ((xx + yy) / (w + h)).astype(np.float32)[None], hd.UID(), 12, hd.UID(), 1,
                             contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
                             content_label="SCORE",
                             voi_lut_transformations=[hd.VOILUTTransformation(window_center=1.0, window_width=2.0)],
                             **common)
    files = {}
    for name, ds in (("seg", seg), ("frac", frac), ("pm", pm)):
        files[name] = str(out / f"{name}.dcm")
        ds.save_as(files[name])
    return str(out), files


@pytest.fixture(scope="session")
def segmentations(converted, tmp_path_factory):
    """highdicom segmentations of the converted slide's level 1 (275x225) in 10x10 tiles, so
    1-bit frames (100 bits) start inside bytes: BINARY tiled-full, tiled-sparse and with per-frame
    positions only (its Dimension Organization Type removed, as older writers leave it out),
    FRACTIONAL sparse, LABELMAP tiled-full and sparse with a palette. Returns {name: file}; the
    slide's own instances are in ``converted``."""
    hd = pytest.importorskip("highdicom")
    pydicom = pytest.importorskip("pydicom")
    from pydicom.sr.codedict import codes

    _, folder = converted
    out = tmp_path_factory.mktemp("segmentations")
    src = next(ds for ds in (pydicom.dcmread(os.path.join(folder, n)) for n in sorted(os.listdir(folder)))
               if ds.ImageType[2] == "VOLUME" and ds.TotalPixelMatrixColumns == 275)
    yy, xx = np.mgrid[:225, :275]
    masks = np.stack([(xx - 100) ** 2 + (yy - 80) ** 2 < 50 ** 2, (xx > 170) & (yy > 120)], -1)[None]
    labels = np.where(masks[..., 0], 1, np.where(masks[..., 1], 2, 0)).astype(np.uint8)  # (1, h, w)

    def describe(n, label):
        return hd.seg.SegmentDescription(n, label, codes.SCT.Tissue, codes.SCT.Tissue,
                                         hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    segments = [describe(1, "tumor"), describe(2, "stroma")]
    common = dict(manufacturer="tilescope", manufacturer_model_name="tests", software_versions="0",
                  device_serial_number="1", tile_pixel_array=True, tile_size=(10, 10))
    palette = hd.PaletteColorLUTTransformation.from_colors(["black", "red", "green"])
    specs = {
        "binary_full": (masks.astype(np.uint8), "BINARY", segments, {"dimension_organization_type": "TILED_FULL",
                                                                     "omit_empty_frames": False}),
        "binary_sparse": (masks.astype(np.uint8), "BINARY", segments, {}),
        "fractional": ((xx / 275).astype(np.float32)[None], "FRACTIONAL", [describe(1, "probability")], {}),
        "labelmap_full": (labels, "LABELMAP", segments, {"dimension_organization_type": "TILED_FULL",
                                                               "omit_empty_frames": False}),
        "labelmap_sparse": (labels, "LABELMAP", segments, {"palette_color_lut_transformation": palette}),
    }
    files = {}
    for k, (name, (pixels, kind, descs, kw)) in enumerate(specs.items()):
        ds = hd.seg.Segmentation([src], pixels, kind, descs, hd.UID(), 20 + k, hd.UID(), 1, **common, **kw)
        files[name] = str(out / f"{name}.dcm")
        ds.save_as(files[name])
    ds = pydicom.dcmread(files["binary_sparse"])
    del ds.DimensionOrganizationType
    files["binary_positions"] = str(out / "binary_positions.dcm")
    ds.save_as(files["binary_positions"])
    return files


@pytest.fixture(scope="session")
def clutter(converted, segmentations, tmp_path_factory):
    """What a PACS export or a lab folder holds beside a slide (the converted one): a highdicom
    SEG, a highdicom Microscopy Bulk Simple Annotations instance, a highdicom Enhanced SR, a
    truncated copy of the level-0 instance, a text file, and another patient's slide (a pydicom
    copy of level 1 with a frame of reference of its own). Returns {name: file}."""
    hd = pytest.importorskip("highdicom")
    pydicom = pytest.importorskip("pydicom")
    from pydicom.sr.codedict import codes

    _, folder = converted
    out = tmp_path_factory.mktemp("clutter")
    files = [os.path.join(folder, n) for n in sorted(os.listdir(folder))]
    level = {ds.TotalPixelMatrixColumns: p for p in files
             if (ds := pydicom.dcmread(p, stop_before_pixels=True)).ImageType[2] == "VOLUME"}
    src = pydicom.dcmread(level[275])
    group = hd.ann.AnnotationGroup(
        number=1, uid=hd.UID(), label="nuclei", annotated_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        annotated_property_type=codes.SCT.Neoplasm, graphic_type=hd.ann.GraphicTypeValues.POINT,
        graphic_data=[np.array([[10.0, 20.0]]), np.array([[30.0, 40.0]])],
        algorithm_type=hd.ann.AnnotationGroupGenerationTypeValues.MANUAL)
    ann = hd.ann.MicroscopyBulkSimpleAnnotations(
        source_images=[src], annotation_coordinate_type=hd.ann.AnnotationCoordinateTypeValues.SCOORD,
        annotation_groups=[group], series_instance_uid=hd.UID(), series_number=30, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="t", manufacturer_model_name="t", software_versions="0",
        device_serial_number="1")
    root = hd.sr.ContainerContentItem(name=codes.DCM.ImagingMeasurementReport, template_id="1500")
    root.ContentSequence = [hd.sr.TextContentItem(name=codes.DCM.Finding, value="benign",
                                                  relationship_type="CONTAINS")]
    sr = hd.sr.EnhancedSR(evidence=[src], content=root, series_instance_uid=hd.UID(), series_number=31,
                          sop_instance_uid=hd.UID(), instance_number=1, manufacturer="t")
    made = {"seg": segmentations["binary_sparse"], "ann": str(out / "ann.dcm"), "sr": str(out / "sr.dcm"),
            "truncated": str(out / "truncated.dcm"), "text": str(out / "notes.txt"),
            "other": str(out / "other.dcm")}
    ann.save_as(made["ann"])
    sr.save_as(made["sr"])
    data = open(level[1100], "rb").read()  # noqa: SIM115
    with open(made["truncated"], "wb") as f:
        f.write(data[:-100])
    with open(made["text"], "w") as f:
        f.write("scanned 2026-11-23; stain H&E\n")
    other = pydicom.dcmread(level[275])
    other.PatientID, other.PatientName = "other-patient", "Other^Patient"
    other.FrameOfReferenceUID, other.StudyInstanceUID, other.SeriesInstanceUID = hd.UID(), hd.UID(), hd.UID()
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = hd.UID()
    other.save_as(made["other"])
    return made


def _zeiss_metadata(path: str, fluor: str, excitation: float) -> None:
    """Give a pylibCZIrw-written CZI the acquisition metadata a Zen-written one has and
    wsidicomizer requires (date, microscope, objective, fluorophore, z interval)."""
    from xml.etree import ElementTree as ET

    def edit(root):
        info = root.find("Metadata/Information")
        image = info.find("Image")
        ET.SubElement(image, "AcquisitionDateAndTime").text = "2026-11-23T10:00:00"
        ET.SubElement(image, "MicroscopeRef", Id="Microscope:1")
        ET.SubElement(ET.SubElement(image, "ObjectiveSettings"), "ObjectiveRef", Id="Objective:1")
        for channel in image.find("Dimensions/Channels"):
            ET.SubElement(channel, "Fluor").text = fluor
            ET.SubElement(channel, "ExcitationWavelength").text = str(excitation)
        interval = ET.SubElement(ET.SubElement(ET.SubElement(image.find("Dimensions"), "Z"), "Positions"),
                                 "Interval")
        ET.SubElement(interval, "Start").text, ET.SubElement(interval, "Increment").text = "0", "1"
        instrument = ET.SubElement(info, "Instrument")
        ET.SubElement(ET.SubElement(instrument, "Microscopes"), "Microscope", Id="Microscope:1", Name="Axioscan 7")
        objective = ET.SubElement(ET.SubElement(instrument, "Objectives"), "Objective", Id="Objective:1")
        ET.SubElement(objective, "NominalMagnification").text = "20"
    synth.patch_czi_metadata(path, edit)


@pytest.fixture(scope="session")
def fluorescent(tmp_path_factory):
    """A 3-channel, 3-focal-plane fluorescence slide: per channel, a CZI written by pylibCZIrw
    (Zeiss's writer; Zen's metadata added) converted by wsidicomizer into a series of its own
    (JPEG-LS lossless, a pyramid added by wsidicom), the series sharing study, frame of reference
    and container, as per-channel exports are. Each optical path is described as epifluorescence
    at its excitation wavelength (wsidicomizer's CZI source writes one brightfield path; its
    metadata hook fixes that). Returns the DICOM folder and the CZI of each channel."""
    turbojpeg()
    pyczi = pytest.importorskip("pylibCZIrw.czi")
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid
    from wsidicom.codec import Channels, JpegLsSettings
    WsiDicomizer = pytest.importorskip("wsidicomizer").WsiDicomizer

    d = tmp_path_factory.mktemp("fluorescent")
    out = d / "dcm"
    out.mkdir()
    study, frame, container = generate_uid(), generate_uid(), "FL-1"
    planes = synth.fluorescence(1500, 1000, 3, z=3, dtype=np.uint8, seed=11)[0]
    czis = {}
    for c, (fluor, excitation) in enumerate((("DAPI", 353), ("FITC", 495), ("Cy5", 649))):
        czis[fluor] = p = str(d / f"{fluor}.czi")
        with pyczi.create_czi(p, exist_ok=True) as w:
            for z in range(3):
                for y in range(0, 1000, 500):
                    for x in range(0, 1500, 500):
                        w.write(data=planes[c, z, y:y + 500, x:x + 500, None], plane={"C": 0, "Z": z, "T": 0},
                                location=(x, y))
            w.write_metadata(document_name=fluor, channel_names={0: fluor}, scale_x=0.325e-6,
                             scale_y=0.325e-6, scale_z=1.5e-6)
        _zeiss_metadata(p, fluor, excitation)

        def describe(ds, _, fluor=fluor, excitation=excitation):
            ds.StudyInstanceUID, ds.FrameOfReferenceUID, ds.ContainerIdentifier = study, frame, container
            for path in ds.get("OpticalPathSequence", []):
                del path.IlluminationColorCodeSequence
                path.OpticalPathIdentifier, path.OpticalPathDescription = fluor, f"{fluor} channel"
                path.IlluminationWaveLength = excitation
                code = Dataset()
                code.CodeValue, code.CodingSchemeDesignator = "111743", "DCM"
                code.CodeMeaning = "Epifluorescence illumination"
                path.IlluminationTypeCodeSequence = [code]
            return ds
        WsiDicomizer.convert(p, str(d / fluor), metadata_post_processor=describe, tile_size=256,
                             encoding=JpegLsSettings(bits=8, channels=Channels.GRAYSCALE), add_missing_levels=True,
                             include_label=False, include_overview=False)
        for f in (d / fluor).iterdir():
            f.rename(out / f.name)
    return str(out), czis


@pytest.fixture(scope="session")
def orthanc_wsi_dicomizer() -> str:
    """The OrthancWSIDicomizer binary (Debian's orthanc-wsi): skipped without it, failed in CI."""
    import shutil

    binary = shutil.which("OrthancWSIDicomizer")
    if not binary:
        if os.environ.get("CI"):
            pytest.fail("OrthancWSIDicomizer is not installed (apt-get install orthanc-wsi)")
        pytest.skip("OrthancWSIDicomizer is not installed")
    return binary


@pytest.fixture(scope="session")
def rle(converted, tmp_path_factory):
    """The converted level-1 instance re-encoded by pydicom as RLE Lossless (RGB), in a folder."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.uid import RLELossless

    import tilescope

    _, folder = converted
    with tilescope.open(folder) as s:
        want = s.scenes[0].read_level(1)
    path = next(p for p in sorted(glob.glob(os.path.join(folder, "*")))
                if (ds := pydicom.dcmread(p)).ImageType[2] == "VOLUME" and ds.TotalPixelMatrixColumns == 275)
    ds = pydicom.dcmread(path)
    canvas = np.zeros((256, 512, 3), np.uint8)
    canvas[:225, :275] = want
    ds.PhotometricInterpretation, ds.PlanarConfiguration = "RGB", 0
    ds.compress(RLELossless, np.stack([canvas[:, :256], canvas[:, 256:]]), encoding_plugin="pydicom")
    out = tmp_path_factory.mktemp("rle")
    ds.save_as(out / "level.dcm", enforce_file_format=True)
    return str(out)


@pytest.fixture(scope="session")
def orthanc_wsi(orthanc_wsi_dicomizer, tmp_path_factory):
    """OrthancWSIDicomizer 1.1 (Debian's orthanc-wsi) conversions: a 4000x3000 SVS with its JPEG
    tiles copied (instances of at most 1 MB: level 0 becomes a concatenation of two), and the
    1100x900 SVS re-encoded as JPEG 2000 with the pyramid rebuilt by Orthanc. Its files carry no
    Image Type, Frame of Reference or Dimension Organization Type (openslide and wsidicom refuse
    them) and place every frame by its per-frame position. Returns {name: (source, folder)}."""
    import subprocess

    d = tmp_path_factory.mktemp("orthanc-wsi")
    out = {"split": (synth.write_svs(d / "big.svs", 4000, 3000, downsamples=(1, 4, 16), seed=3),
                     ["--max-size", "1"]),
           "j2k": (synth.write_svs(d / "small.svs", 1100, 900, downsamples=(1, 4), seed=4),
                   ["--compression", "jpeg2000", "--reencode", "1"])}
    for name, (source, args) in out.items():
        (d / name).mkdir()
        subprocess.run([orthanc_wsi_dicomizer, "--folder", str(d / name), *args, str(source)], check=True,
                       capture_output=True)
        out[name] = (str(source), str(d / name))
    return out


# -- planes labelled by their own indices (value // 256 == 100*z + 10*t + c): a wrong plane or
# channel mapping cannot pass ---------------------------------------------------------------------
def _label(t: int, z: int, c: int) -> int:
    return 100 * z + 10 * t + c


def labelled_plane(t: int, z: int, c: int, h: int, w: int, x0: int = 0, y0: int = 0) -> np.ndarray:
    """uint16: the plane's label in the high byte, a gradient (x + 3y) in the low byte."""
    yy, xx = np.mgrid[y0:y0 + h, x0:x0 + w]
    return (_label(t, z, c) * 256 + (xx + 3 * yy) % 256).astype(np.uint16)


@pytest.fixture(scope="session")
def labelled(tmp_path_factory, svs, converted):
    """{kind: path}: the SVS, an OME-TIFF (T2 C3 Z3, two levels, named channels, z and t steps), a
    CZI mosaic (C2 Z2 T2, 2x2 tiles of which one is missing) and a DICOM folder."""
    d = tmp_path_factory.mktemp("labelled")
    ome = str(d / "labelled.ome.tiff")
    h, w = 600, 700
    data = np.stack([np.stack([np.stack([labelled_plane(t, z, c, h, w) for z in range(3)]) for c in range(3)])
                     for t in range(2)])  # TCZYX
    meta = {"axes": "TCZYX", "Channel": {"Name": ["DAPI", "FITC", "TRITC"]}, "PhysicalSizeX": 0.5,
            "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0, "TimeIncrement": 3.0, "TimeIncrementUnit": "s"}
    with tifffile.TiffWriter(ome, bigtiff=True, ome=True) as tw:
        opts = dict(tile=(256, 256), compression="zlib", photometric="minisblack")
        tw.write(data, subifds=1, metadata=meta, **opts)
        tw.write(np.ascontiguousarray(data[..., ::2, ::2]), subfiletype=1, metadata=None, **opts)
    pyczi = pytest.importorskip("pylibCZIrw.czi")
    czi = str(d / "labelled.czi")
    th, tw_ = 200, 250
    with pyczi.create_czi(czi, exist_ok=True) as wr:
        for c in range(2):
            for z in range(2):
                for t in range(2):
                    for ty, tx in ((0, 0), (0, 1), (1, 0)):  # (1, 1) missing: background
                        wr.write(data=labelled_plane(t, z, c, th, tw_, tx * tw_, ty * th)[..., None],
                                 plane={"C": c, "Z": z, "T": t}, location=(tx * tw_, ty * th))
        wr.write_metadata(document_name="labelled", channel_names={0: "DAPI", 1: "GFP"}, scale_x=0.4,
                          scale_y=0.4, scale_z=1.5)
    return {"svs": svs, "ome": ome, "czi": czi, "dicom": converted[1]}
