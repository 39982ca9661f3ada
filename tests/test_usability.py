"""What a user sees in a notebook and in help(): one-line reprs, an HTML view, errors that list
the names there are, other readers' driver names (issue 19)."""

from __future__ import annotations

import pydoc
import re

import numpy as np
import pytest

import tilescope


def test_reprs_say_what_they_are_in_one_line(svs, ome):
    with tilescope.open(svs) as s:
        sc = s.scenes[0]
        lines = {"slide": repr(s), "scene": repr(sc), "level": repr(sc.levels[1]),
                 "associated": repr(s.associated), "tiles": repr(sc.tiles(256))}
        for name, text in lines.items():
            assert "\n" not in text and " object at 0x" not in text, (name, text)
        w, h = sc.size
        assert f"{w}x{h}" in lines["slide"] and "SVS" in lines["slide"] and "3 level(s)" in lines["slide"]
        assert f"mpp {sc.mpp[0]:.4g}" in lines["slide"] and "associated: " in lines["slide"]
        assert "(R, G, B) uint8" in lines["scene"]
        lw, lh = sc.levels[1].size
        assert lines["level"].startswith(f"<Level 1: {lw}x{lh}, downsample 4") and "tiles 256x256" in lines["level"]
        for name in s.associated:
            aw, ah = s.associated.size(name)
            assert f"{name} {aw}x{ah}" in lines["associated"]
    assert repr(s).endswith("closed>")
    with tilescope.open(ome) as s:
        sc = s.scenes[0]
        assert f"z {sc.num_z_slices}, t {sc.num_t_frames}" in repr(sc)
        assert f"z {sc.num_z_slices}" in repr(s) and "uint16" in repr(s)


def test_a_slide_in_a_notebook_shows_its_thumbnail_label_and_metadata(svs, ome):
    with tilescope.open(svs) as s:
        page = s._repr_html_()
        assert page.count("<img ") == 2  # the thumbnail and the label
        sc = s.scenes[0]
        for fact in (s.driver, f"{sc.size[0]} x {sc.size[1]}", "R, G, B (uint8)", f"{sc.magnification:g}x"):
            assert fact in page, fact
    assert "closed" in s._repr_html_()
    with tilescope.open(ome) as s:  # 16-bit channels: a stretched preview, no error
        page = s._repr_html_()
        assert page.count("<img ") == 1 and "uint16" in page


def test_missing_names_are_typed_errors_that_list_the_names(svs):
    with tilescope.open(svs) as s:
        with pytest.raises(KeyError) as e:
            s.associated["slide label"]
        assert isinstance(e.value, tilescope.NotFoundError) and isinstance(e.value, tilescope.TilescopeError)
        assert str(e.value).endswith("no associated image named 'slide label' (associated images: "
                                     f"{', '.join(s.associated)})")
        assert s.associated.get("slide label") is None and "slide label" not in s.associated
        with pytest.raises(tilescope.InvalidRequestError, match=r"no scene named 'x' \(scenes: 'main'\)"):
            s.scene("x")
        with pytest.raises(tilescope.InvalidRequestError, match=r"no channel named 'DAPI' \(channels: R, G, B\)"):
            s.scenes[0].read((0, 0, 8, 8), channels=["DAPI"])


def test_other_readers_driver_names(svs, ome):
    for name in ("SVS", "svs", "aperio"):
        with tilescope.open(svs, driver=name) as s:
            assert s.driver == "SVS"
    for name in ("OMETIFF", "ome-tiff", "OME"):
        with tilescope.open(ome, driver=name) as s:
            assert s.driver == "OME"
    with pytest.raises(tilescope.InvalidRequestError, match=r"slideio's and openslide's names: .*ometiff"):
        tilescope.open(svs, driver="VSI")


def test_help_documents_every_public_attribute(svs):
    """help(Scene) and help(Slide) name every public attribute a scene and a slide have."""
    with tilescope.open(svs) as s:
        for obj, cls in ((s.scenes[0], tilescope.Scene), (s, tilescope.Slide)):
            text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
            public = [n for n in dir(obj) if not n.startswith("_")]
            missing = [n for n in public if not re.search(rf"\b{n}\b", text)]
            assert not missing, (cls.__name__, missing)
    doc = pydoc.render_doc(tilescope.open, renderer=pydoc.plaintext)
    for word in ("dicomweb+http", "s3://", "storage_options", "study", "series", "OMETIFF", "bytes"):
        assert word in doc, word


def test_paths_as_bytes(svs):
    import os

    with tilescope.open(os.fsencode(svs)) as s:
        assert s.path == svs and s.scenes[0].read((0, 0, 4, 4)).shape == (4, 4, 3)
    assert tilescope.detect(os.fsencode(svs)) == "SVS"
    assert tilescope.detect("dicomweb+https://example.invalid/dicom-web") == "DICOMweb"
    np.testing.assert_equal(tilescope.drivers()[-1], "DICOMweb")
