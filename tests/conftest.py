"""Fixtures: slides written once per test session by tilescope.synth (tifffile + imagecodecs)."""

from __future__ import annotations

import ctypes.util
import glob
import os

import numpy as np
import pytest

from tilescope import synth

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


def _turbojpeg() -> None:
    """wsidicomizer (opentile) loads libturbojpeg by path: point it at the system's."""
    if "TURBOJPEG" in os.environ:
        return
    paths = sorted(glob.glob("/usr/lib/*/libturbojpeg.so*") + glob.glob("/usr/lib/libturbojpeg.so*"))
    found = paths[0] if paths else ctypes.util.find_library("turbojpeg")
    if found:
        os.environ["TURBOJPEG"] = found


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    _turbojpeg()
    from wsidicomizer import WsiDicomizer

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
    import pydicom
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
