"""DICOMweb: find and open whole-slide images on a DICOMweb server (see the README's DICOMweb
section). ``tilescope.open("dicomweb+http://...", study=..., series=...)`` opens one slide;
:func:`find_slides` searches."""

from __future__ import annotations

from . import options as _options
from .formats.dicomweb import find_slides as _find_slides
from .model import Slide


def find_slides(url: str, *, study_instance_uid: str | None = None, patient_id: str | None = None,
                study_id: str | None = None, container_id: str | None = None, **kwargs) -> list[Slide]:
    """The slides (one per slide-microscopy series) on the server at ``url``
    (``http(s)://host:port/dicom-web``, with or without the ``dicomweb+`` prefix) that match every
    filter given. ``kwargs``: ``headers``, ``verify``, ``timeout``, ``retries``, ``batch``,
    ``connections``, ``derived_layers``."""
    return _find_slides(url, _options, study_instance_uid=study_instance_uid, patient_id=patient_id,
                        study_id=study_id, container_id=container_id, **kwargs)
