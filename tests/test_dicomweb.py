"""DICOMweb against a real Orthanc (Debian's orthanc + orthanc-dicomweb) started on 127.0.0.1 with
a temporary storage, holding the wsidicomizer instances of the DICOM tests."""

from __future__ import annotations

import base64
import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import numpy as np
import pytest

import tilescope

pytest.importorskip("pydicom")  # the [dicom] extra: pydicom and dicomweb-client
pytest.importorskip("dicomweb_client")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _orthanc(folder: str, storage, users: dict | None = None):
    """A real Orthanc on a free 127.0.0.1 port holding the DICOM files of ``folder``; with
    ``users``, HTTP basic authentication is required. Yields (dicomweb+ URL, base URL)."""
    binary = shutil.which("Orthanc")
    plugin = next(iter(glob.glob("/usr/share/orthanc/plugins/libOrthancDicomWeb.so*")
                       + glob.glob("/usr/lib/orthanc/plugins/libOrthancDicomWeb.so*")), None)
    if not binary or not plugin:
        if os.environ.get("CI"):
            pytest.fail("Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")
        pytest.skip("Orthanc with its DICOMweb plugin is not installed")
    port = _free_port()
    cfg = {"Name": "tilescope-test", "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
           "AuthenticationEnabled": bool(users), "RegisteredUsers": users or {},
           "StorageDirectory": str(storage / "db"), "IndexDirectory": str(storage / "db"),
           "Plugins": [plugin], "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"127.0.0.1:{port}"}}
    (storage / "orthanc.json").write_text(json.dumps(cfg))
    proc = subprocess.Popen([binary, str(storage / "orthanc.json")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    auth = {}
    if users:
        user, password = next(iter(users.items()))
        auth = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(urllib.request.Request(f"{base}/system", headers=auth), timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("Orthanc did not start")
        for name in sorted(os.listdir(folder)):
            _upload(base, os.path.join(folder, name), auth)
        yield f"dicomweb+{base}/dicom-web", base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _upload(base: str, path: str, headers: dict | None = None) -> None:
    with open(path, "rb") as f:
        req = urllib.request.Request(f"{base}/instances", data=f.read(), method="POST", headers=headers or {})
        urllib.request.urlopen(req, timeout=10).read()


@pytest.fixture(scope="module")
def orthanc(converted, tmp_path_factory):
    with _orthanc(converted[1], tmp_path_factory.mktemp("orthanc")) as server:
        yield server


def test_dicomweb_equals_the_files(orthanc, converted, monkeypatch):
    url, _ = orthanc
    _, folder = converted
    with tilescope.open(url) as s, tilescope.open(folder) as local:
        sc, lc = s.scenes[0], local.scenes[0]
        assert s.driver == "DICOMweb"
        assert [lv.size for lv in sc.levels] == [lv.size for lv in lc.levels] and sc.mpp == lc.mpp
        assert s.icc_profile and s.icc_profile == local.icc_profile  # bulk data, fetched as octets
        for li in range(2):
            np.testing.assert_array_equal(sc.read_level(li), lc.read_level(li))
        np.testing.assert_array_equal(sc.read((300, 200, 400, 300), size=(200, 150)),
                                      lc.read((300, 200, 400, 300), size=(200, 150)))
        for name in ("label", "macro", "thumbnail"):
            np.testing.assert_array_equal(s.associated[name], local.associated[name])
        study, series = s.properties["dicom"]["StudyInstanceUID"], s.properties["dicom"]["SeriesInstanceUID"]
    from dicomweb_client.api import DICOMwebClient

    calls = []
    real = DICOMwebClient.retrieve_instance_frames
    monkeypatch.setattr(DICOMwebClient, "retrieve_instance_frames",
                        lambda self, *a, **k: calls.append(k["frame_numbers"]) or real(self, *a, **k))
    with tilescope.open(url, study=study, series=series, cache=tilescope.TileCache(0), batch=8) as s:
        calls.clear()
        s.scenes[0].read()  # 20 frames: 8 at a time (in parallel), not one request per frame
        assert sorted(n for c in calls for n in c) == list(range(1, 21)) and len(calls) == 3


def _first_series(url: str) -> tuple[str, str, np.ndarray]:
    """(study, series, a 64 px wide overview) of the first slide the server lists."""
    with tilescope.open(url) as s:
        dicom = s.properties["dicom"]
        return dicom["StudyInstanceUID"], dicom["SeriesInstanceUID"], s.scenes[0].read(size=(64, 0))


def test_a_dicomweb_url_without_its_prefix(orthanc):
    """An http(s) URL given study= or series= is a DICOMweb server's, prefix or not."""
    url, _ = orthanc
    study, series, want = _first_series(url)
    plain = url.removeprefix("dicomweb+")
    assert plain.startswith("http://") and tilescope.detect(url) == "DICOMweb"
    with tilescope.open(plain, study=study, series=series) as s:
        assert s.driver == "DICOMweb"
        np.testing.assert_array_equal(s.scenes[0].read(size=(64, 0)), want)


def test_the_command_line_reads_a_dicomweb_series(orthanc, tmp_path):
    from tilescope.cli import main

    url, _ = orthanc
    study, series, want = _first_series(url)
    out = str(tmp_path / "r.npy")
    assert main(["region", url, out, "--study", study, "--series", series, "--size", "64,0"]) == 0
    np.testing.assert_array_equal(np.load(out), want)


def test_dicomweb_errors(orthanc):
    url, _ = orthanc
    with pytest.raises(tilescope.SourceNotFoundError, match=r"127\.0\.0\.1.*series 9\.9"):
        tilescope.open(url, study="1.2.3", series="9.9")
    down = f"dicomweb+http://127.0.0.1:{_free_port()}/dicom-web"
    with pytest.raises(tilescope.RemoteError, match=r"127\.0\.0\.1"):
        tilescope.open(down, retries=0, timeout=2)


def test_find_slides(orthanc, converted):
    import pydicom

    import tilescope.dicomweb

    url, _ = orthanc
    _, folder = converted
    ds = pydicom.dcmread(os.path.join(folder, sorted(os.listdir(folder))[0]), stop_before_pixels=True)
    found = tilescope.dicomweb.find_slides(url, study_instance_uid=ds.StudyInstanceUID,
                                           container_id=ds.ContainerIdentifier)
    assert len(found) == 1 and found[0].scenes[0].size == (1100, 900)
    found[0].close()
    assert tilescope.dicomweb.find_slides(url, container_id="no-such-slide") == []
    assert tilescope.dicomweb.find_slides(url, patient_id="nobody") == []


def test_derived_layers_over_dicomweb(orthanc, derived):
    """Segmentations and a parametric map stored in their own series of the study are found
    (QIDO-RS + series metadata) and read like the files."""
    folder, files = derived
    url, base = orthanc
    for path in files.values():
        _upload(base, path)
    with tilescope.open(folder) as local:
        props = local.properties["dicom"]
        with tilescope.open(url, study=props["StudyInstanceUID"], series=props["SeriesInstanceUID"]) as s:
            sc, lc = s.scenes[0], local.scenes[0]
            assert sc.channel_names == lc.channel_names and sc.channel_info == lc.channel_info
            names = ["tumor", "stroma", "probability", "SCORE"]
            np.testing.assert_array_equal(sc.read(channels=names), lc.read(channels=names))
            np.testing.assert_array_equal(sc.read((100, 100, 700, 500), size=(350, 250), channels=["B", "SCORE"]),
                                          lc.read((100, 100, 700, 500), size=(350, 250), channels=["B", "SCORE"]))
        with tilescope.open(url, study=props["StudyInstanceUID"], series=props["SeriesInstanceUID"],
                            whole_study=False) as s:
            assert s.scenes[0].channel_names == ("R", "G", "B")


def test_segmentations_over_dicomweb(converted, segmentations, tmp_path):
    """BINARY frames packed across byte boundaries and a LABELMAP with its segments, from a server
    of their own: read like the files."""
    folder = converted[1]
    with _orthanc(folder, tmp_path) as (url, base):
        for name in ("binary_full", "labelmap_sparse"):
            _upload(base, segmentations[name])
        files = [os.path.join(folder, n) for n in sorted(os.listdir(folder))]
        with tilescope.open([*files, segmentations["binary_full"], segmentations["labelmap_sparse"]]) as local:
            props = local.properties["dicom"]
            with tilescope.open(url, study=props["StudyInstanceUID"], series=props["SeriesInstanceUID"]) as s:
                sc, lc = s.scenes[0], local.scenes[0]
                assert sc.channel_names == lc.channel_names and len(sc.channel_names) == 3 + 2 + 4
                derived = list(sc.channel_names[3:])
                want = lc.read_level(1, channels=derived)
                assert want[..., :2].sum() == 18641
                np.testing.assert_array_equal(sc.read_level(1, channels=derived), want)


def test_authentication_header_is_passed_through(converted, tmp_path):
    """An Orthanc that requires HTTP basic authentication: refused without the header (401, a
    RemoteError naming the server), read with it."""
    with _orthanc(converted[1], tmp_path, users={"alice": "s3cret"}) as (url, _):
        with pytest.raises(tilescope.RemoteError, match=r"127\.0\.0\.1.*401"):
            tilescope.open(url)
        token = base64.b64encode(b"alice:s3cret").decode()
        with tilescope.open(url, headers={"Authorization": f"Basic {token}"}) as s, \
                tilescope.open(converted[1]) as local:
            np.testing.assert_array_equal(s.scenes[0].read((100, 100, 600, 400)),
                                          local.scenes[0].read((100, 100, 600, 400)))


def test_incomplete_metadata_is_a_typed_error(orthanc, converted, tmp_path):
    """An instance without Columns, as a file and over DICOMweb: CorruptDataError naming it."""
    import pydicom
    from pydicom.uid import generate_uid

    url, base = orthanc
    folder = converted[1]
    name = next(n for n in sorted(os.listdir(folder))
                if pydicom.dcmread(os.path.join(folder, n), stop_before_pixels=True).ImageType[2] == "VOLUME")
    ds = pydicom.dcmread(os.path.join(folder, name))
    del ds.Columns
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()  # a study of its own
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    (tmp_path / "bad").mkdir()
    ds.save_as(tmp_path / "bad" / "level.dcm", enforce_file_format=True)
    with pytest.raises(tilescope.CorruptDataError, match=r"level\.dcm: incomplete .*Columns"), \
            pytest.warns(UserWarning, match=r"level\.dcm: skipped"):
        tilescope.open(str(tmp_path / "bad"))
    _upload(base, str(tmp_path / "bad" / "level.dcm"))
    with pytest.raises(tilescope.CorruptDataError, match=rf"127\.0\.0\.1.*{ds.SOPInstanceUID}.*Columns"):
        tilescope.open(url, study=ds.StudyInstanceUID, series=ds.SeriesInstanceUID)


def test_paths_in_series_of_their_own_over_dicomweb(fluorescent, tmp_path):
    """Optical paths stored one per series: any of the series opens the whole slide (the study's
    series of the same frame of reference and container), find_slides finds it once, and it reads
    like the files."""
    import tilescope.dicomweb

    folder, _ = fluorescent
    with _orthanc(folder, tmp_path) as (url, _), tilescope.open(folder) as local:
        lc = local.scenes[0]
        found = tilescope.dicomweb.find_slides(url)
        assert len(found) == 1
        with found[0] as s:
            sc = s.scenes[0]
            props = s.properties["dicom"]
            assert len(props["series"]) == 3 and sorted(sc.channel_names) == sorted(lc.channel_names)
            assert sc.focal_planes == lc.focal_planes and \
                sorted(sc.channel_info, key=str) == sorted(lc.channel_info, key=str)
            for name in lc.channel_names:
                for z in range(3):
                    np.testing.assert_array_equal(sc.read(z=z, channels=name), lc.read(z=z, channels=name))
            names = list(lc.channel_names)
            np.testing.assert_array_equal(sc.read((300, 200, 1000, 600), size=(250, 150), z=1, channels=names),
                                          lc.read((300, 200, 1000, 600), size=(250, 150), z=1, channels=names))
        with tilescope.open(url, study=props["StudyInstanceUID"], series=props["SeriesInstanceUID"],
                            whole_study=False) as one:
            assert len(one.scenes[0].channel_names) == 1


def test_orthanc_wsi_dicomizer_pushes_to_orthanc(orthanc_wsi_dicomizer, tmp_path):
    """OrthancWSIDicomizer's own route: it converts an SVS and stores the instances in Orthanc over
    its REST API; read back over DICOMweb (no frame of reference, frames placed per frame) equal
    to the SVS."""
    from tools import synth

    source = synth.write_svs(tmp_path / "pushed.svs", 1100, 900, downsamples=(1, 4), seed=8)
    (tmp_path / "empty").mkdir()
    with _orthanc(str(tmp_path / "empty"), tmp_path) as (url, base):
        subprocess.run([orthanc_wsi_dicomizer, "--orthanc", f"{base}/", str(source)], check=True,
                       capture_output=True)
        with tilescope.open(url) as s, tilescope.open(source) as src:
            assert [lv.size for lv in s.scenes[0].levels] == [lv.size for lv in src.scenes[0].levels]
            for li in range(2):
                np.testing.assert_array_equal(s.scenes[0].read_level(li), src.scenes[0].read_level(li))


def test_rle_frames_over_dicomweb(rle, tmp_path):
    """RLE Lossless frames come in their stored encoding and are recognized as RLE (WADO-RS
    metadata does not name the transfer syntax)."""
    with _orthanc(rle, tmp_path) as (url, _), tilescope.open(rle) as local, tilescope.open(url) as s:
        assert s.scenes[0].compression == local.scenes[0].compression == "rle"
        assert s.scenes[0].compression_raw == "1.2.840.10008.1.2.5"
        np.testing.assert_array_equal(s.scenes[0].read_level(0), local.scenes[0].read_level(0))


def test_a_server_that_never_answers_times_out():
    """A socket that accepts connections and says nothing: the request's timeout, then the
    retries, then a RemoteError naming the server (never a hang)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"dicomweb+http://127.0.0.1:{listener.getsockname()[1]}/dicom-web"
        start = time.monotonic()
        with pytest.raises(tilescope.RemoteError, match=r"127\.0\.0\.1.*(Timeout|timed out)"):
            tilescope.open(url, timeout=0.5, retries=1)
        assert time.monotonic() - start < 10


def test_concurrent_reads_over_dicomweb(orthanc, converted):
    """Eight threads reading overlapping regions of one DICOMweb slide (shared frame requests, a
    small cache) get what serial reads of the files give."""
    from concurrent.futures import ThreadPoolExecutor

    url, _ = orthanc
    _, folder = converted
    rng = np.random.default_rng(1)
    rects = [(int(x), int(y), 300, 200) for x, y in zip(rng.integers(0, 800, 48), rng.integers(0, 700, 48),
                                                         strict=True)]
    with tilescope.open(folder) as local:
        want = [local.scenes[0].read(r) for r in rects]
        props = local.properties["dicom"]
    with tilescope.open(url, study=props["StudyInstanceUID"], series=props["SeriesInstanceUID"],
                        cache=tilescope.TileCache(1 << 20), batch=4) as s, ThreadPoolExecutor(8) as pool:
        got = list(pool.map(s.scenes[0].read, rects))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_concatenated_level_over_dicomweb(orthanc_wsi, tmp_path, monkeypatch):
    """OrthancWSIDicomizer's split level 0 (two parts of a concatenation, frames placed per frame)
    over DICOMweb equals the files; opening probes one frame per concatenation, not per part."""
    from dicomweb_client.api import DICOMwebClient

    _, folder = orthanc_wsi["split"]
    probes = []
    real = DICOMwebClient.retrieve_instance_frames
    monkeypatch.setattr(DICOMwebClient, "retrieve_instance_frames",
                        lambda self, *a, **k: probes.append(a[2]) or real(self, *a, **k))
    with _orthanc(folder, tmp_path) as (url, _), tilescope.open(folder) as local, tilescope.open(url) as s:
        assert len(probes) == 3  # three levels, level 0 in two instances
        sc, lc = s.scenes[0], local.scenes[0]
        for li in range(len(lc.levels)):
            np.testing.assert_array_equal(sc.read_level(li), lc.read_level(li))


def _child_read(slide, queue) -> None:
    queue.put(slide.scenes[0].read((100, 100, 300, 200)))


def test_a_dicomweb_slide_pickles_and_forks(orthanc, converted):
    """A pickled DICOMweb slide re-connects on the other side; a forked child opens its own HTTP
    session (the parent's requests in flight are not its own)."""
    import multiprocessing as mp
    import pickle

    url, _ = orthanc
    with tilescope.open(converted[1]) as local:
        want = local.scenes[0].read((100, 100, 300, 200))
        props = local.properties["dicom"]
    with tilescope.open(url, study=props["StudyInstanceUID"], series=props["SeriesInstanceUID"],
                        batch=4) as s:
        np.testing.assert_array_equal(s.scenes[0].read((100, 100, 300, 200)), want)
        data = pickle.dumps(s)
        assert len(data) < 2000
        with pickle.loads(data) as s2:
            np.testing.assert_array_equal(s2.scenes[0].read((100, 100, 300, 200)), want)
        for method in ("fork", "spawn"):
            ctx = mp.get_context(method)
            q = ctx.Queue()
            p = ctx.Process(target=_child_read, args=(s, q))
            p.start()
            np.testing.assert_array_equal(q.get(timeout=60), want)
            p.join(30)
            assert p.exitcode == 0
