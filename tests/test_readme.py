"""Every Python example in the README runs, on slides named as the README names them."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools import servers, synth

README = Path(__file__).parent.parent / "README.md"
MIGRATING = Path(__file__).parent.parent / "docs" / "MIGRATING.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
GUIDE = re.findall(r"```python\n(.*?)```", MIGRATING.read_text(encoding="utf-8"), re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code, svs, ome, tmp_path):
    shutil.copy(svs, tmp_path / "slide.svs")
    shutil.copy(ome, tmp_path / "cells.ome.tiff")
    Image.fromarray(np.zeros((64, 80, 3), np.uint8)).save(tmp_path / "plain.png")
    synth.write_scanimage(tmp_path / "stack_00001.tif", 64, 48, channels=1, slices=1, volumes=1200)
    # each example runs as a script of its own, as a user runs it (its functions reach forked
    # children by name and Dask's workers by value, as a script's or a notebook's do)
    (tmp_path / "example.py").write_text(code, encoding="utf-8")
    with contextlib.ExitStack() as stack:
        env = dict(os.environ)
        if "SLIDE_URL" in code:  # the remote example reads the folder from a real nginx
            if servers.nginx_binary() is None:
                (pytest.fail if os.environ.get("CI") else pytest.skip)("nginx is not installed")
            env["SLIDE_URL"] = stack.enter_context(servers.nginx(str(tmp_path))) + "/slide.svs"
        done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-4000:]


def test_readme_has_examples():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("code", GUIDE, ids=[f"guide{i}" for i in range(len(GUIDE))])
def test_migration_guide_example_runs(code, svs, ome, converted, tmp_path):
    """docs/MIGRATING.md's examples, on the slides it names: slide.svs, cells.ome.tiff, dicom/."""
    shutil.copy(svs, tmp_path / "slide.svs")
    shutil.copy(ome, tmp_path / "cells.ome.tiff")
    shutil.copytree(converted[1], tmp_path / "dicom")
    (tmp_path / "example.py").write_text(code, encoding="utf-8")
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]


def test_migration_guide_covers_each_reader():
    text = MIGRATING.read_text(encoding="utf-8")
    for reader in ("## openslide-python", "## slideio", "## large_image", "## dicomslide"):
        assert reader in text
    assert len(GUIDE) == 4
