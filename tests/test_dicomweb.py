"""DICOMweb against a real Orthanc (Debian's orthanc + orthanc-dicomweb) started on 127.0.0.1 with
a temporary storage, holding the wsidicomizer instances of the DICOM tests."""

from __future__ import annotations

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def orthanc(converted, tmp_path_factory):
    binary = shutil.which("Orthanc")
    plugin = next(iter(glob.glob("/usr/share/orthanc/plugins/libOrthancDicomWeb.so*")
                       + glob.glob("/usr/lib/orthanc/plugins/libOrthancDicomWeb.so*")), None)
    if not binary or not plugin:
        if os.environ.get("CI"):
            pytest.fail("Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")
        pytest.skip("Orthanc with its DICOMweb plugin is not installed")
    d = tmp_path_factory.mktemp("orthanc")
    port = _free_port()
    cfg = {"Name": "tilescope-test", "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
           "AuthenticationEnabled": False, "StorageDirectory": str(d / "db"), "IndexDirectory": str(d / "db"),
           "Plugins": [plugin], "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"127.0.0.1:{port}"}}
    (d / "orthanc.json").write_text(json.dumps(cfg))
    proc = subprocess.Popen([binary, str(d / "orthanc.json")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{base}/system", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("Orthanc did not start")
        _, folder = converted
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), "rb") as f:
                req = urllib.request.Request(f"{base}/instances", data=f.read(), method="POST")
                urllib.request.urlopen(req, timeout=10).read()
        yield f"dicomweb+{base}/dicom-web", port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


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
    url, _ = orthanc
    folder, files = derived
    base = url[len("dicomweb+"):-len("/dicom-web")]
    for path in files.values():
        with open(path, "rb") as f:
            urllib.request.urlopen(urllib.request.Request(f"{base}/instances", data=f.read(), method="POST"),
                                   timeout=10).read()
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
                            derived_layers=False) as s:
            assert s.scenes[0].channel_names == ("R", "G", "B")
