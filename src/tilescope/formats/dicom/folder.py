"""The slides among a folder's (or a list's) DICOM files: gathering, choosing, skipping what
cannot be read unless the slide needs it."""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from typing import TYPE_CHECKING, Any, NamedTuple

from ...errors import CorruptDataError, InvalidRequestError, SourceNotFoundError, UnsupportedFormatError
from ...model import Slide
from ...remote import is_remote, listing
from ...source import FileSource, SourceFile, open_file
from .assemble import assemble, attributes, header_text, icc_profile_of, volume_levels
from .frames import file_level, frame_ranges, stack
from .instance import (
    DERIVED,
    NAME,
    WSI_SOP_CLASS,
    Instance,
    is_dicom_file,
    quickhash1,
    read_dataset,
    read_header,
)

if TYPE_CHECKING:
    from pydicom import Dataset

    from ...engine import Options
    from ...formats import Probe
    from ...source import ByteSource


class _Folder(NamedTuple):
    """The slides among a set of DICOM files: each slide's whole-slide instances (by slide key, in
    order of their first file), the derived instances, and the files that could not be read
    (path -> (reason, dataset or None when not even the header reads))."""

    slides: dict[tuple, list[Instance]]
    derived: list[Instance]
    skipped: dict[str, tuple[str, object]]


def _gather(paths: list[str], strict: bool, remote: Any = None) -> _Folder:
    """The instances of ``paths``: whole-slide images, segmentations and parametric maps; other
    objects (structured reports, annotations, presentation states, ...) are not part of a slide
    and left out, as is a second copy of an instance. An instance that cannot be read (broken
    header or metadata, truncated pixel data) is skipped with a warning, or with ``strict`` (files
    the caller named) raises its CorruptDataError. Files at URLs are read through a source each
    (``remote``: the slide's own source, whose options they are read with), and objects that
    are not DICOM files are left out as :func:`_dicom_files` leaves local ones."""
    slides: dict[tuple, list[Instance]] = {}
    derived: list[Instance] = []
    skipped: dict[str, tuple[str, object]] = {}
    seen: set[str] = set()
    for p in paths:
        ds = src = None
        try:
            if is_remote(p):
                src = remote if getattr(remote, "path", None) == p else \
                    open_file(p, getattr(remote, "options", None))
                if src.head(132)[128:132] != b"DICM":
                    if strict:
                        raise InvalidRequestError(f"{p}: not a DICOM file")
                    continue
            ds = read_dataset(p, None if src is None else SourceFile(src))
            sop = str(ds.get("SOPClassUID", ""))
            if sop != WSI_SOP_CLASS and sop not in DERIVED:
                if strict:
                    raise InvalidRequestError(f"{p}: a DICOM {sop or '?'} instance, not a whole-slide image, "
                                              f"segmentation or parametric map")
                continue
            uid = str(ds.get("SOPInstanceUID", ""))
            if uid in seen:
                continue
            inst = Instance(p, ds)
            inst.source = src
            inst.ranges = frame_ranges(inst)
        except CorruptDataError as e:
            if strict:
                raise
            reason = str(e).removeprefix(f"{p}: ")
            warnings.warn(f"{p}: skipped, it cannot be read: {reason}", stacklevel=4)
            skipped[p] = (reason, ds if ds is not None and "SOPClassUID" in ds else
                          read_header(p, None if src is None else SourceFile(src)))
            continue
        seen.add(uid)
        if sop == WSI_SOP_CLASS:
            slides.setdefault(slide_key(ds), []).append(inst)
        else:
            derived.append(inst)
    return _Folder(slides, derived, skipped)


def _dicom_files(folder: str, source: Any = None) -> list[str]:
    """The DICOM files of a local folder; of a folder at a URL (an object store's prefix) every
    object in it, checked as they are read (a web server lists none: the file alone)."""
    if is_remote(folder):
        return listing(folder, source)
    return [p for p in (os.path.join(folder, n) for n in sorted(os.listdir(folder)))
            if os.path.isfile(p) and is_dicom_file(p)]


def _folder_of(path: str) -> str:
    return path.rsplit("/", 1)[0] if is_remote(path) else os.path.dirname(os.path.abspath(path))


def _same(a: str, b: str) -> bool:
    return a == b if is_remote(a) or is_remote(b) else os.path.samefile(a, b)


def open(probe: Probe, options: Options, files: list[str] | None = None) -> Slide:
    """The slide of the DICOM file ``probe`` reads, with the instances of its folder (or of
    ``files``: then every one must belong to the slide). Where the folder itself was opened
    (``probe.folder``), its first slide, whatever file came first."""
    path, src = probe.path, probe.source
    if files is not None:
        missing = [p for p in files if not is_remote(p) and not os.path.isfile(p)]
        if missing:
            raise SourceNotFoundError(f"{missing[0]}: no such file")
        found = _gather(files, strict=True, remote=src)
    else:
        found = _gather(_dicom_files(_folder_of(path), src), strict=False, remote=src)
    try:
        return _open(probe, options, files, found)
    finally:  # the slide reads frames through sources of its own (homes); these served the parse
        for inst in (*(i for insts in found.slides.values() for i in insts), *found.derived):
            if inst.source is not None and inst.source is not src:
                inst.source.close()
            inst.source = None


def _open(probe: Probe, options: Options, files: list[str] | None, found: _Folder) -> Slide:
    path = probe.path
    if files is None and probe.folder:
        if not found.slides:
            if found.skipped:
                bad, (reason, _) = next(iter(found.skipped.items()))
                raise CorruptDataError(f"{bad}: {reason} (the only whole-slide image instances of "
                                       f"{probe.folder} cannot be read)")
            raise UnsupportedFormatError(f"{probe.folder}: no VL Whole Slide Microscopy Image instance in "
                                         f"the folder")
        key = next(iter(found.slides))
        if len(found.slides) > 1:
            warnings.warn(f"{probe.folder}: the folder holds {len(found.slides)} slides; opened the first "
                          f"(frame of reference {key[0]}, container {key[1]}); tilescope.dicom.find_slides "
                          f"lists them all", stacklevel=3)
    else:
        if path in found.skipped:
            raise CorruptDataError(f"{path}: {found.skipped[path][0]}")
        gathered = (i.ds for insts in (*found.slides.values(), found.derived) for i in insts
                    if _same(i.path, path))
        own = SourceFile(probe.source) if is_remote(path) else None
        first = next(gathered, None) or read_dataset(path, own)  # not gathered: another kind of object
        sop = str(first.get("SOPClassUID", ""))
        if sop == WSI_SOP_CLASS:
            key = slide_key(first)
        else:  # a segmentation or map opens the slide of its frame of reference
            derived_from = next((k for k in found.slides if sop in DERIVED and k[0] is not None
                                 and k[0] == first.get("FrameOfReferenceUID")), None)
            if derived_from is None:
                raise UnsupportedFormatError(f"{path}: a DICOM {sop or '?'} instance, not a VL Whole Slide "
                                             f"Microscopy Image (nor one derived from a slide beside it)")
            key = derived_from
        if files is not None and len(found.slides) > 1:
            other = next(i for k, insts in found.slides.items() if k != key for i in insts)
            raise InvalidRequestError(f"{other.path}: not an instance of the slide of {path} (another frame "
                                      f"of reference, container or series)")
    return _slide(probe.source, options, key, found, "the files given" if files is not None else
                  _folder_of(path))


def _slide(source: ByteSource, options: Options, key: tuple, found: _Folder, where: str) -> Slide:
    instances = found.slides.get(key, [])
    derived = [i for i in found.derived if key[0] is not None and i.ds.get("FrameOfReferenceUID") == key[0]]
    _check_needed(key, instances, found.skipped)
    levels = volume_levels(instances, f"{source.path}: no VOLUME instance of this slide in {where}")
    base = levels[0][0].ds
    props: dict[str, Any] = {**attributes(base),
                             "instances": [os.path.basename(i.path) for i in instances + derived]}
    if found.skipped:
        props["skipped"] = {os.path.basename(p): reason for p, (reason, _) in found.skipped.items()}
    slide = Slide(source, NAME, options, raw_metadata=header_text(base), vendor="dicom",
                  properties={"dicom": props}, icc_profile=icc_profile_of(base),
                  quickhash=quickhash1(base.SeriesInstanceUID))
    return assemble(slide, levels, instances, derived, file_level)


def _check_needed(key: tuple, instances: list[Instance], skipped: dict) -> None:
    """CorruptDataError when a skipped file held part of the slide's pyramid: a VOLUME instance of
    the slide that no readable file holds, or (headers unreadable) a concatenation left incomplete."""
    have = {str(i.ds.SOPInstanceUID) for i in instances}
    unknown = []
    for p, (reason, ds) in skipped.items():
        if ds is None or str(ds.get("SOPClassUID", "")) != WSI_SOP_CLASS:
            unknown.append(p)
            continue
        image_type = ds.get("ImageType") or []
        volume = len(image_type) < 3 or str(image_type[2]).upper() == "VOLUME"
        if volume and slide_key(ds) == key and str(ds.get("SOPInstanceUID", "")) not in have:
            raise CorruptDataError(f"{p}: part of the slide's pyramid cannot be read: {reason}")
    concatenations: dict = defaultdict(list)
    for inst in instances:
        if inst.ds.get("ConcatenationUID"):
            concatenations[inst.ds.ConcatenationUID].append(inst)

    def misses_parts(parts: list[Instance]) -> bool:
        """Parts missing by the declared total (Orthanc writes none), by a gap in the part numbers,
        or by fewer frames than the full tile grid (a sparse concatenation may legitimately have)."""
        numbers = sorted(int(i.ds.get("InConcatenationNumber", 0) or 0) for i in parts)
        total = int(parts[0].ds.get("InConcatenationTotalNumber", 0) or 0)
        nz, layers = stack(parts[0])
        full = parts[0].grid[0] * parts[0].grid[1] * nz * layers
        return (len(parts) < total or numbers != list(range(1, len(parts) + 1))
                or sum(i.frames for i in parts) < full)
    incomplete = [uid for uid, parts in concatenations.items() if misses_parts(parts)]
    if incomplete and unknown:
        raise CorruptDataError(f"{unknown[0]}: cannot be read ({skipped[unknown[0]][0]}), and concatenation "
                               f"{incomplete[0]} of the slide's pyramid misses parts")


def find_slides(folder: str, options: Options) -> list[Slide]:
    """Every slide among the DICOM files of ``folder``, opened (in order of their first file)."""
    found = _gather(_dicom_files(folder), strict=False)
    slides = []
    try:
        for key, insts in found.slides.items():
            if not any(i.flavor == "VOLUME" for i in insts):
                continue
            source = FileSource(insts[0].path)
            try:
                slides.append(_slide(source, options, key, found, folder))
            except BaseException:
                source.close()
                raise
    except BaseException:
        for s in slides:
            s.close()
        raise
    return slides


def slide_key(ds: Dataset) -> tuple:
    """What the instances of one slide share: Frame of Reference UID and Container Identifier, or
    where there are none (OrthancWSIDicomizer 1.1 writes neither) the series."""
    if ds.get("FrameOfReferenceUID"):
        return ds.FrameOfReferenceUID, ds.get("ContainerIdentifier")
    return None, ds.get("SeriesInstanceUID")
