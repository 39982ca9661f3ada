"""DICOM whole-slide images (VL Whole Slide Microscopy Image) from local files.

Opening a .dcm file (or a folder: its first DICOM file; or a list of files) gathers the instances
of the same slide: same Frame of Reference UID and Container Identifier (the series where there is
no frame of reference). VOLUME instances form the pyramid (instances of one size are one level:
concatenations, and optical paths or focal planes stored in instances of their own), a THUMBNAIL
smaller than all of them ends it; LABEL, OVERVIEW and THUMBNAIL are the associated images
``label``, ``macro`` and ``thumbnail``. Frames are pieces read from their own files (the engine
opens them on first use): TILED_FULL frames in the standard's order (columns, rows, focal planes,
optical paths), TILED_SPARSE frames (or frames with per-frame positions) placed by their plane
positions (absent tiles read as background). Encapsulated pixel data's items are found by
pydicom.encaps, each frame's fragments (one per frame, or several) by the Basic or Extended Offset
Table, else by codestream start markers; native pixel data is addressed directly. Transfer syntaxes: JPEG
baseline, JPEG 2000, JPEG-LS, RLE Lossless, explicit and implicit VR little endian.
Segmentations and Parametric Maps of the frame of reference are derived channels. Needs the
``[dicom]`` extra (pydicom).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .assemble import assemble, attributes, volume_levels
from .folder import find_slides, open, slide_key
from .frames import level_layout, realign
from .instance import (
    DERIVED,
    NAME,
    PIXELS,
    RLE,
    WSI_SOP_CLASS,
    Instance,
    compression,
    is_dicom_file,
    quickhash1,
)

if TYPE_CHECKING:
    from ...formats import Probe

OPENSLIDE_VENDOR = "dicom"  # openslide's name for the format (detect_format, openslide.vendor)
MULTI_FILE = True  # a slide is several files: gathered from the folder, or given as a list (``files=``)

__all__ = ["DERIVED", "NAME", "PIXELS", "RLE", "WSI_SOP_CLASS", "Instance", "assemble", "attributes",
           "compression", "detect", "find_slides", "is_dicom_file", "level_layout", "open", "quickhash1",
           "realign", "slide_key", "volume_levels"]


def detect(probe: Probe) -> bool:
    return probe.source.head(132)[128:132] == b"DICM"
