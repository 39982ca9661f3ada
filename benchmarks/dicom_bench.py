#!/usr/bin/env python3
"""The speed issue's workloads (a)-(c) on the same slide as SVS, as DICOM files (wsidicomizer keeps
the JPEG tiles) and over DICOMweb from a local Orthanc (Debian orthanc + orthanc-dicomweb).

    python benchmarks/dicom_bench.py     # converts benchmarks/data/slide.svs once (bench.py writes it)
    python benchmarks/dicom_bench.py --request-cost   # a small read over DICOMweb vs bare requests

Every (source, workload) runs in a fresh process (page cache warm, Orthanc already holding the
instances); the mean time per call is reported with the ratio to the SVS.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def cell(source: str, workload: str) -> dict:
    from bench import regions

    import tilescope

    sc = tilescope.open(source).scenes[0]
    regs = regions(workload, *sc.size)
    t0 = time.perf_counter()
    for r in regs:
        sc.read(r)
    wall = time.perf_counter() - t0
    mpix = sum(r[2] * r[3] for r in regs) / 1e6
    return dict(workload=workload, ms=1000 * wall / len(regs), mp_per_s=mpix / wall)


def orthanc(folder: str, tmp: str):
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    number = port.getsockname()[1]
    port.close()
    plugin = glob.glob("/usr/share/orthanc/plugins/libOrthancDicomWeb.so*")[0]
    cfg = {"HttpPort": number, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
           "AuthenticationEnabled": False, "StorageDirectory": tmp, "IndexDirectory": tmp,
           "Plugins": [plugin], "MaximumStorageCacheSize": 1024,
           "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"127.0.0.1:{number}"}}
    with open(os.path.join(tmp, "orthanc.json"), "w") as f:
        json.dump(cfg, f)
    proc = subprocess.Popen([shutil.which("Orthanc"), os.path.join(tmp, "orthanc.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{number}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{base}/system", timeout=1).read()
            break
        except OSError:
            time.sleep(0.1)
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            urllib.request.urlopen(urllib.request.Request(f"{base}/instances", data=f.read(), method="POST"),
                                   timeout=600).read()
    return proc, f"dicomweb+{base}/dicom-web"


def split_levels(folder: str, out: str, frames_per_part: int) -> None:
    """A copy of the converted slide (as a new series) whose instances hold at most
    ``frames_per_part`` frames: larger levels become concatenations, as PACS exports split them."""
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.uid import generate_uid

    os.makedirs(out)
    series = generate_uid()
    for name in sorted(os.listdir(folder)):
        ds = pydicom.dcmread(os.path.join(folder, name))
        ds.SeriesInstanceUID = series
        n = int(ds.get("NumberOfFrames", 1))
        if n <= frames_per_part:
            ds.save_as(os.path.join(out, name), enforce_file_format=True)
            continue
        frames = list(generate_frames(ds.PixelData, number_of_frames=n))
        concatenation, parts = generate_uid(), -(-n // frames_per_part)
        source = ds.SOPInstanceUID
        for k in range(parts):
            lo = k * frames_per_part
            part = frames[lo:lo + frames_per_part]
            ds.PixelData, ds.NumberOfFrames = encapsulate(part), len(part)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.ConcatenationUID, ds.SOPInstanceUIDOfConcatenationSource = concatenation, source
            ds.ConcatenationFrameOffsetNumber, ds.InConcatenationNumber = lo, k + 1
            ds.InConcatenationTotalNumber = parts
            ds.save_as(os.path.join(out, f"{name}.{k}.dcm"), enforce_file_format=True)


def request_cost(n: int = 200) -> None:
    """Where a small DICOMweb read's time goes: 256² reads from files and over DICOMweb, against
    bare HTTP requests for the same frames (a 4000x3000 slide, level 0 one instance)."""
    import numpy as np
    import requests

    import tilescope
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tools import synth  # the repository's fixture writers

    data = os.path.join(HERE, "data", "small")
    folder = os.path.join(data, "dicom")
    if not os.path.isdir(folder):
        from wsidicomizer import WsiDicomizer

        os.makedirs(data, exist_ok=True)
        svs = synth.write_svs(os.path.join(data, "small.svs"), 4000, 3000, downsamples=(1, 4))
        WsiDicomizer.convert(svs, folder, include_label=False, include_overview=False)
    rng = np.random.default_rng(0)
    xs, ys = rng.integers(0, 3744, n), rng.integers(0, 2744, n)
    regions = [(int(x), int(y), 256, 256) for x, y in zip(xs, ys, strict=True)]
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = orthanc(folder, tmp)
        try:
            for name, source in (("DICOM files", folder), ("DICOMweb", url)):
                sc = tilescope.open(source, cache=tilescope.TileCache(0)).scenes[0]
                t0 = time.perf_counter()
                for r in regions:
                    sc.read(r)
                print(f"tilescope, {name}: {1000 * (time.perf_counter() - t0) / n:.2f} ms per read")
            props = tilescope.open(url).properties["dicom"]
            web = url[len("dicomweb+"):]
            series = f"{web}/studies/{props['StudyInstanceUID']}/series/{props['SeriesInstanceUID']}"
            session = requests.Session()
            uid = next(i for i in props["instances"] if session.get(f"{series}/instances/{i}/metadata")
                       .json()[0]["00480006"]["Value"][0] == 4000)
            accept = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}
            for frames in ("5", "5,6,21,22"):
                where = f"{series}/instances/{uid}/frames/{frames}"
                t0 = time.perf_counter()
                for _ in range(n):
                    session.get(where, headers=accept).raise_for_status()  # the body is read
                print(f"bare GET of frames {frames}: {1000 * (time.perf_counter() - t0) / n:.2f} ms")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def run(source: str, wl: str) -> dict:
    p = subprocess.run([sys.executable, __file__, "--cell", source, wl], capture_output=True, text=True)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    return json.loads(line[-1][7:]) if line else {"error": p.stderr[-300:]}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--cell":
        print("RESULT " + json.dumps(cell(sys.argv[2], sys.argv[3])))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--request-cost":
        request_cost()
        return 0
    svs = os.path.join(HERE, "data", "slide.svs")
    folder = os.path.join(HERE, "data", "dicom")
    parts = os.path.join(HERE, "data", "dicom-parts")
    if not os.path.isdir(folder):
        from wsidicomizer import WsiDicomizer

        WsiDicomizer.convert(svs, folder, include_label=False, include_overview=False)
    if not os.path.isdir(parts):
        split_levels(folder, parts, 1024)
    rows = {}
    for variant, where in (("one instance per level", folder), ("levels split into 1024-frame parts", parts)):
        with tempfile.TemporaryDirectory() as tmp:
            proc, url = orthanc(where, tmp)
            try:
                for wl in ("a", "b", "c"):
                    for name, source in (("svs", svs), ("dicom", where), ("dicomweb", url)):
                        rows[variant, name, wl] = r = run(source, wl)
                        print(variant, name, wl, r, flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    for variant in ("one instance per level", "levels split into 1024-frame parts"):
        print(f"## {variant}")
        for wl in ("a", "b", "c"):
            s, d, w = (rows[variant, n, wl].get("ms") for n in ("svs", "dicom", "dicomweb"))
            print(f"({wl}) svs {s:.3g} ms  dicom {d:.3g} ms ({d / s:.2f}x)  dicomweb {w:.3g} ms "
                  f"({w / d:.2f}x of files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
