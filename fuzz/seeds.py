"""Small seed files of every container family, written by independent writers (tifffile through
tools.synth, pylibCZIrw, wsidicomizer, Pillow): the fuzzers' starting corpora and the corruption
corpus's fixtures. Small on purpose (a few tiles each), so a fuzzer runs thousands of inputs a
second-ish and every tile of a seed is reachable by a small read."""

from __future__ import annotations

import ctypes.util
import glob
import io
import os
from collections.abc import Callable

import numpy as np
from PIL import Image

from tools import synth

FAMILIES = ("tiff", "czi", "dicom", "dicomweb", "afi", "pillow")
# what a fuzzed input of a file family is named (detection reads content; the name only looks right)
EXTENSIONS = {"tiff": ".tif", "czi": ".czi", "dicom": ".dcm", "afi": ".afi", "pillow": ".img"}


def _tiff(d: str) -> dict[str, str]:
    j = os.path.join
    makers: dict[str, Callable[[str], object]] = {
        "svs.svs": lambda p: synth.write_svs(p, 600, 500, downsamples=(1, 4), seed=1),
        "j2k.svs": lambda p: synth.write_svs(p, 300, 260, downsamples=(1,), compression="jpeg2000-rgb",
                                             seed=2, associated=("label",)),
        "big.svs": lambda p: synth.write_svs(p, 300, 260, downsamples=(1, 2), bigtiff=True, seed=3,
                                             associated=("thumbnail",)),
        "pages.tiff": lambda p: synth.write_tiff(p, 300, 200, downsamples=(1, 2), seed=4),
        "subifds.tiff": lambda p: synth.write_tiff(p, 300, 200, downsamples=(1, 2), pyramid="subifds",
                                                   compression="jpeg", bigtiff=False, seed=5),
        "stripped.tif": lambda p: synth.write_tiff(p, 200, 150, tile=None, downsamples=(1,),
                                                   compression="lzw", bigtiff=False, seed=6),
        "planar.tiff": lambda p: synth.write_tiff(p, 260, 200, downsamples=(1,), compression="zstd",
                                                  planar=True, predictor=True, seed=7),
        "multi.ome.tiff": lambda p: synth.write_ome(p, 300, 200, channels=2, z=2, t=2, levels=2, seed=8),
        "small.ndpi": lambda p: synth.write_ndpi(p, 512, 384, downsamples=(1, 4), seed=9),
        "philips.tiff": lambda p: synth.write_philips(p, 600, 400, downsamples=(1, 4), seed=10),
        "qp.qptiff": lambda p: synth.write_qptiff(p, 600, 500, channels=2, tile=256, min_size=200, seed=11),
        "leica.scn": lambda p: synth.write_scn(p, regions=((100, 100, 500, 300),), slide_px=(1000, 600),
                                               downsamples=(1, 4), seed=12),
        "ventana.bif": lambda p: synth.write_bif(p, cols=2, rows=2, seed=13),
        "scanimage.tif": lambda p: synth.write_scanimage(p, 64, 48, channels=2, slices=2, volumes=1, seed=14),
    }
    out = {}
    for name, make in makers.items():
        p = j(d, name)
        if not os.path.exists(p):
            make(p)
        out[name] = p
    return out


def _czi(d: str) -> dict[str, str]:
    from pylibCZIrw import czi as pyczi

    rng = np.random.default_rng(20)
    out = {}
    p = out["mosaic.czi"] = os.path.join(d, "mosaic.czi")
    if not os.path.exists(p):
        zstd = "zstd1:ExplicitLevel=1;PreProcess=HiLoByteUnpack"
        with pyczi.create_czi(p, exist_ok=True, compression_options=zstd) as w:
            for c in range(2):
                for tx in range(2):
                    w.write(data=rng.integers(0, 4000, (64, 80, 1), dtype=np.uint16),
                            plane={"C": c, "Z": 0, "T": 0}, location=(tx * 70, 0))
            w.write_metadata(document_name="mosaic", channel_names={0: "DAPI", 1: "GFP"}, scale_x=0.3,
                             scale_y=0.3)
    p = out["rgb.czi"] = os.path.join(d, "rgb.czi")
    if not os.path.exists(p):
        with pyczi.create_czi(p, exist_ok=True) as w:
            for s in range(2):
                w.write(data=rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), plane={"T": 0},
                        location=(s * 500, 0), scene=s)
            w.write_metadata(document_name="rgb", scale_x=0.5, scale_y=0.5)
    return out


def turbojpeg() -> None:
    """wsidicomizer (opentile) loads libturbojpeg by path: point it at the system's."""
    if "TURBOJPEG" in os.environ:
        return
    paths = sorted(glob.glob("/usr/lib/*/libturbojpeg.so*") + glob.glob("/usr/lib/libturbojpeg.so*"))
    found = paths[0] if paths else ctypes.util.find_library("turbojpeg")
    if found:
        os.environ["TURBOJPEG"] = found


def _dicom(d: str) -> dict[str, str]:
    out = os.path.join(d, "dcm")
    if not os.path.isdir(out):
        turbojpeg()
        from wsidicomizer import WsiDicomizer

        src = synth.write_svs(os.path.join(d, "for-dicom.svs"), 600, 400, downsamples=(1, 4), seed=21)
        WsiDicomizer.convert(src, out, include_label=True, include_overview=True)
    return {f"dcm/{n}": os.path.join(out, n) for n in sorted(os.listdir(out))}


def _afi(d: str) -> dict[str, str]:
    names = ("DAPI", "FITC")
    for i, n in enumerate(names):
        p = os.path.join(d, f"{n}.svs")
        if not os.path.exists(p):
            synth.write_svs(p, 300, 200, downsamples=(1,), seed=30 + i, associated=())
    items = "".join(f"<Image><Path>{n}.svs</Path><ChannelName>{n}</ChannelName></Image>" for n in names)
    p = os.path.join(d, "slide.afi")
    with open(p, "w") as f:
        f.write(f'<?xml version="1.0" encoding="utf-8"?>\r\n<ImageList>{items}</ImageList>')
    return {"slide.afi": p}


def _pillow(d: str) -> dict[str, str]:
    rng = np.random.default_rng(40)
    a = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    out = {}
    for fmt, ext, mode in (("PNG", "png", "RGB"), ("JPEG", "jpg", "RGB"), ("BMP", "bmp", "RGB"),
                           ("GIF", "gif", "P"), ("WEBP", "webp", "RGB"), ("PNG", "grey.png", "L")):
        buf = io.BytesIO()
        Image.fromarray(a).convert(mode).save(buf, fmt)
        p = out[ext] = os.path.join(d, f"seed.{ext}")
        with open(p, "wb") as f:
            f.write(buf.getvalue())
    return out


def dicomweb_messages(d: str) -> dict[str, str]:
    """DICOMweb responses as the driver receives them: a series' JSON metadata and a multipart
    frame response, made from the DICOM seeds (pydicom's JSON, a multipart/related body)."""
    import json

    import pydicom

    from .webserver import multipart

    volumes = [ds for ds in map(pydicom.dcmread, _dicom(d).values())
               if "PixelData" in ds and getattr(ds, "ImageType", [""])[2:3] == ["VOLUME"]]
    ds = max(volumes, key=lambda ds: int(ds.TotalPixelMatrixColumns))  # level 0: the same one every time
    meta = ds.to_json_dict(bulk_data_threshold=4096, bulk_data_element_handler=lambda e: "http://x/bulk")
    meta.update(ds.file_meta.to_json_dict())
    out = {name: os.path.join(d, name) for name in ("metadata.json", "frames.multipart")}
    with open(out["metadata.json"], "w") as f:
        json.dump([meta], f)
    with open(out["frames.multipart"], "wb") as f:  # every frame, in order
        f.write(multipart([bytes(f) for f in pydicom.encaps.generate_frames(ds.PixelData)]))
    return out


def make(family: str, root: str) -> dict[str, str]:
    """Seed files of ``family`` under ``root`` (written once): name -> path."""
    d = os.path.join(root, family)
    os.makedirs(d, exist_ok=True)
    return {"tiff": _tiff, "czi": _czi, "dicom": _dicom, "dicomweb": dicomweb_messages,
            "afi": _afi, "pillow": _pillow}[family](d)
