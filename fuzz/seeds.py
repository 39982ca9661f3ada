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

FAMILIES = ("tiff", "czi", "dicom", "dicomweb", "afi", "pillow", "zarr")
# what a fuzzed input of a file family is named (detection reads content; the name only looks right)
EXTENSIONS = {"tiff": ".tif", "czi": ".czi", "dicom": ".dcm", "afi": ".afi", "pillow": ".img",
              "zarr": ".zpack"}


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


# -- zarr stores as one fuzz input: records of (name, bytes), unpacked into a folder -----------
_RECORD = b"\x00F"


def pack_store(folder: str) -> bytes:
    """Every file of a store, as records: magic, name length (u16), name, size (u32), bytes."""
    out = []
    for d, _, files in sorted(os.walk(folder)):
        for f in sorted(files):
            full = os.path.join(d, f)
            name = os.path.relpath(full, folder).encode()
            with open(full, "rb") as fh:
                data = fh.read()
            out.append(_RECORD + len(name).to_bytes(2, "little") + name + len(data).to_bytes(4, "little")
                       + data)
    return b"".join(out)


def unpack_store(data: bytes, folder: str) -> None:
    """The records of ``data`` as files under ``folder`` (emptied first); what does not parse (a
    broken record, a name leaving the folder, more than 64 files or 16 MB) ends the unpacking."""
    import re
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    i, files, total = 0, 0, 0
    while i + 8 <= len(data) and data[i:i + 2] == _RECORD and files < 64:
        n = int.from_bytes(data[i + 2:i + 4], "little")
        name = data[i + 4:i + 4 + n].decode("ascii", "replace")
        size = int.from_bytes(data[i + 4 + n:i + 8 + n], "little")
        body = data[i + 8 + n:i + 8 + n + size]
        i += 8 + n + size
        total += len(body)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*", name) or ".." in name.split("/") or \
                total > 16 << 20:
            break
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            break
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(body)
        except (NotADirectoryError, FileExistsError, IsADirectoryError):
            break
        files += 1


def _zarr(d: str) -> dict[str, str]:
    """Small OME-Zarr stores packed (pack_store): tilescope's writer (NGFF 0.5 on v3, 0.4 on v2),
    ome-zarr's writer (t, c, z; blosc) and zarr's own sharded v3 array."""
    import shutil

    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    from tilescope.writer import write

    rng = np.random.default_rng(30)
    makers: dict[str, Callable[[str], object]] = {
        "ours-v3": lambda p: write(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8), p, tile_size=128),
        "ours-v2": lambda p: write(rng.integers(0, 4000, (150, 200, 2), dtype=np.uint16), p, tile_size=64,
                                   zarr_format=2, mpp=0.5, channel_names=["a", "b"]),
        "omezarr-v04": lambda p: write_image(
            rng.integers(0, 255, (2, 2, 2, 64, 80), dtype=np.uint8),
            zarr.open_group(p, mode="w", zarr_format=2),
            axes="tczyx", fmt=FormatV04(), storage_options={"chunks": (1, 1, 1, 32, 32)}),
    }

    def sharded(p: str) -> None:
        g = zarr.open_group(p, mode="w", zarr_format=3)
        a = g.create_array("0", shape=(3, 100, 120), chunks=(3, 32, 32), shards=(3, 64, 64), dtype=np.uint8,
                           fill_value=0)
        a[:] = rng.integers(0, 255, (3, 100, 120), dtype=np.uint8)
        g.attrs.update({"ome": {"version": "0.5", "multiscales": [{"axes": [
            {"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
            "datasets": [{"path": "0", "coordinateTransformations": [
                {"type": "scale", "scale": [1, 1, 1]}]}]}]}})
    makers["sharded-v3"] = sharded
    out = {}
    for name, make in makers.items():
        packed = os.path.join(d, name + EXTENSIONS["zarr"])
        if not os.path.exists(packed):
            store = os.path.join(d, name + ".zarr")
            shutil.rmtree(store, ignore_errors=True)
            make(store)
            with open(packed, "wb") as f:
                f.write(pack_store(store))
        out[name] = packed
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
            "afi": _afi, "pillow": _pillow, "zarr": _zarr}[family](d)
