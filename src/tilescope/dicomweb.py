"""DICOMweb: find and open whole-slide images on a DICOMweb server (see the README's DICOMweb
section). ``tilescope.open("dicomweb+http://...", study=..., series=...)`` opens one slide;
:func:`find_slides` searches."""

from __future__ import annotations

import dataclasses
from typing import Any

from . import options as _options
from .errors import InvalidRequestError
from .formats.dicomweb import WebOptions
from .formats.dicomweb import find_slides as _find_slides
from .model import Slide


def find_slides(url: str, *, study_instance_uid: str | None = None, patient_id: str | None = None,
                study_id: str | None = None, container_id: str | None = None, **kwargs: Any) -> list[Slide]:
    """The slides (one per slide-microscopy series) on the server at ``url``
    (``http(s)://host:port/dicom-web``, with or without the ``dicomweb+`` prefix) that match every
    filter given. ``kwargs``: how to reach the server and read (``headers``, ``verify``,
    ``timeout``, ``retries``, ``batch``, ``connections``, ``whole_study``: :class:`WebOptions`) and
    options as for :func:`tilescope.open`."""
    web_names = {f.name for f in dataclasses.fields(WebOptions)} - {"study", "series"}
    web = WebOptions(**{k: kwargs.pop(k) for k in list(kwargs) if k in web_names})
    try:
        opts = dataclasses.replace(_options, **kwargs)
    except TypeError as e:
        raise InvalidRequestError(f"find_slides: {e}") from None
    return _find_slides(url, opts, web, study_instance_uid=study_instance_uid, patient_id=patient_id,
                        study_id=study_id, container_id=container_id)
