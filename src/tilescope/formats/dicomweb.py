"""DICOM whole-slide images from a DICOMweb server (QIDO-RS to find, WADO-RS to read).

``tilescope.open("dicomweb+http://host:port/dicom-web", study=..., series=...)`` reads the
series metadata (``/series/{uid}/metadata``: complete, unlike QIDO-RS instance searches on some
servers), builds the same model as local DICOM files (VOLUME levels, TILED_FULL / TILED_SPARSE
frames, label / overview / thumbnail), and fetches frames in their stored encoding
(``transfer-syntax=*``: no transcoding on the server) — a piece's request also brings the next
frames of the same instance (``batch``), so a region costs a few requests, not one per tile;
``connections`` requests are in flight at once while the engine's thread pool decodes the frames
already in. Each thread has its own HTTP session. Headers
(authentication) and TLS verification are passed through to dicomweb-client; failures become
``RemoteError`` / ``SourceNotFoundError`` naming the server and the object. Needs the ``[dicom]``
extra (pydicom, dicomweb-client).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import procs
from ..errors import (
    CorruptDataError,
    RemoteError,
    SourceNotFoundError,
    TilescopeError,
    TooLargeError,
    UnsupportedFormatError,
)
from ..model import Slide
from ..source import Home, PieceList
from . import dicom

if TYPE_CHECKING:
    from pydicom import Dataset

    from ..engine import Options
    from ..model import LevelSpec
    from ..source import Pieces
    from .dicom import Instance

NAME = "DICOMweb"
OPENSLIDE_VENDOR = "dicom"  # openslide's name for the format (detect_format, openslide.vendor)
SCHEME = "dicomweb+"
SCHEMES = ("dicomweb+http://", "dicomweb+https://")


@dataclass(frozen=True)
class WebOptions:
    """What ``tilescope.open(url, ...)`` takes for a DICOMweb slide: which one (``study``,
    ``series``; default the first slide-microscopy series listed), how to reach the server
    (``headers``, ``verify``, ``timeout`` s, ``retries``, ``max_response_bytes``), how frames are
    asked for (``batch`` frames per request, ``connections`` in flight) and whether the study's
    other series add the slide's instances and derived layers (``whole_study``)."""

    study: str | None = None
    series: str | None = None
    headers: dict | None = None
    verify: bool | str = True
    timeout: float = 30.0
    retries: int = 2
    batch: int = 256
    connections: int = 4
    whole_study: bool = True
    max_response_bytes: int = 1 << 30  # a larger answer (or one still coming after ``timeout``) is refused


URL_OPTIONS = WebOptions
_OCTETS = (("application/octet-stream", "*"),)


class UrlSource:
    """Stands where a slide's file would: the server's URL, and whether the slide is closed."""

    size = 0
    identity = None

    def __init__(self, url: str):
        self.path = url
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True


class _Client:
    """A DICOMweb client with the request options, and errors turned into ours."""

    def __init__(self, url: str, headers: dict | None, verify: bool | str, timeout: float, retries: int,
                 max_bytes: int):
        import requests
        from dicomweb_client.api import DICOMwebClient

        self.url, self.timeout, self.retries, self.max_bytes = url, timeout, retries, max_bytes
        self.session = requests.Session()  # ours: the client takes it and sets its headers on it
        self.session.verify = verify
        self.session.hooks["response"].append(self._read_body)
        self.session.request = functools.partial(  # type: ignore[method-assign]
            self.session.request, timeout=timeout)
        self.api = DICOMwebClient(url, session=self.session, headers=headers or None)
        self.api.set_http_retry_params(retry=False)  # retries and back-off are ours (``retries``)

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        import requests

        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kw)
            except requests.HTTPError as e:
                status = e.response.status_code if e.response is not None else None
                if status == 404:
                    raise SourceNotFoundError(f"{self.url}: {what}: not found (404)") from None
                if (status is not None and status < 500) or attempt == self.retries:
                    raise RemoteError(f"{self.url}: {what}: the server answered {status}") from None
            except (requests.ConnectionError, requests.Timeout) as e:
                if attempt == self.retries:
                    raise RemoteError(f"{self.url}: {what}: {type(e).__name__}: {e}") from None
            except TilescopeError:  # the body's own checks (_read_body)
                raise
            except (ValueError, KeyError, TypeError, IndexError) as e:  # the client's parse of the answer
                raise CorruptDataError(f"{self.url}: {what}: the server's answer is malformed: "
                                       f"{type(e).__name__}: {e}") from None
            time.sleep(0.2 * 2 ** attempt)  # back off before retrying
        raise AssertionError("unreachable")

    def _read_body(self, r: Any, *args: Any, **kw: Any) -> Any:
        """Read an answer's body here, at most ``max_bytes`` and within ``timeout`` in all:
        requests alone reads any size, and a server that drips bytes never trips its per-read
        timeout. (A response hook runs before requests reads the body; the body read here is
        handed on as requests' own would be, in its ``_content``.)"""
        length = r.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            r.close()
            raise TooLargeError(f"{self.url}: an answer of {length} bytes is above max_response_bytes "
                                f"({self.max_bytes})")
        deadline, parts, size = time.monotonic() + self.timeout, [], 0
        # read1: what has arrived, not a fixed amount (which waits for a dripping server's all)
        while chunk := r.raw.read1(1 << 16, decode_content=True):
            size += len(chunk)
            if size > self.max_bytes:
                r.close()
                raise TooLargeError(f"{self.url}: an answer of more than max_response_bytes "
                                    f"({self.max_bytes})")
            if time.monotonic() > deadline:
                r.close()
                raise RemoteError(f"{self.url}: an answer still arriving after the {self.timeout} s timeout")
            parts.append(chunk)
        r._content, r._content_consumed = b"".join(parts), True
        return r

    def close(self) -> None:
        self.session.close()


class _Fetcher:
    """A slide's frame requests: ``connections`` of them in flight at once, each thread with its
    own HTTP session (requests' sessions are not thread-safe)."""

    def __init__(self, url: str, client_args: tuple, connections: int):
        self.url, self.client_args = url, client_args
        self.pool = ThreadPoolExecutor(connections, thread_name_prefix="tilescope-dicomweb")
        self._local = threading.local()
        self._clients: list[_Client] = []
        self._lock = threading.Lock()

    def client(self) -> _Client:
        c = getattr(self._local, "client", None)
        if c is None:
            c = self._local.client = _Client(self.url, *self.client_args)
            with self._lock:
                self._clients.append(c)
        return c

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            c.close()


class WebFrames(PieceList):
    """Frames of a level on the server: (instance UID, frame number) per piece. Before a read
    decodes, the engine hands over every piece it needs (:meth:`prefetch`): they are asked for in
    requests of up to ``batch`` frames, several in flight at once, and each piece's decode waits
    only for its own request."""

    missing_ok = True  # TILED_SPARSE: frames not stored read as background
    prefetches = True

    def __init__(self, url, study, series: dict, uids, numbers, label, client_args, batch: int = 256,
                 connections: int = 4):
        super().__init__(len(numbers), label)
        self.study, self.series, self.uids = study, series, uids
        self.numbers = np.asarray(numbers, np.int64)
        self.client_args, self.batch, self.connections = client_args, batch, connections
        self.keep = 4096  # frames asked for and not yet decoded, at most
        self._kept: OrderedDict = OrderedDict()  # (uid, number) -> Future of {number: bytes}
        self._lock = threading.Lock()
        self._home = Home(url, functools.partial(_Fetcher, url, client_args, connections))
        procs.reset_after_fork(self)

    def _after_fork(self) -> None:
        # the parent's requests in flight never answer here
        self._lock = threading.Lock()
        self._kept = OrderedDict()

    def is_missing(self, index: int) -> bool:
        return self.numbers[index] <= 0

    def home(self, index: int) -> Home:
        return self._home

    def prefetch(self, fetcher: _Fetcher, indices: list[int]) -> None:
        """Ask for the frames of ``indices`` (one read's pieces, in the order they will be
        decoded) in requests of up to ``batch`` frames of one instance each."""
        by_uid: dict = defaultdict(list)
        with self._lock:
            for i in indices:
                key = (self.uids[i], int(self.numbers[i]))
                if key[1] > 0 and key not in self._kept:
                    by_uid[key[0]].append(key[1])
            for uid, numbers in by_uid.items():
                numbers = sorted(set(numbers))
                for k in range(0, len(numbers), self.batch):
                    chunk = numbers[k:k + self.batch]
                    future = fetcher.pool.submit(self._get, fetcher, uid, chunk)
                    for n in chunk:
                        self._kept[(uid, n)] = future
            while len(self._kept) > self.keep:
                self._kept.popitem(last=False)

    def _get(self, fetcher: _Fetcher, uid: str, numbers: list[int]) -> dict:
        client = fetcher.client()
        series = self.series[uid]
        what = f"study {self.study} series {series} instance {uid} frames {numbers[0]}-{numbers[-1]}"
        frames = client.call(what, client.api.retrieve_instance_frames, self.study, series, uid,
                             frame_numbers=numbers, media_types=_OCTETS)
        if len(frames) != len(numbers):
            raise CorruptDataError(f"{client.url}: instance {uid}: asked for {len(numbers)} frames, got "
                                   f"{len(frames)}")
        return dict(zip(numbers, (bytes(f) for f in frames), strict=True))

    def fetch(self, fetcher: _Fetcher, index: int) -> bytes:
        key = (self.uids[index], int(self.numbers[index]))
        with self._lock:
            future = self._kept.pop(key, None)
        if future is not None:
            return future.result()[key[1]]
        return self._get(fetcher, key[0], [key[1]])[key[1]]


class WholeInstance(WebFrames):
    """Frames of an instance whose frames the server does not serve one by one (float and 1-bit
    pixel data on Orthanc 1.10): the instance is retrieved once, its pixel data kept while the
    slide is open; 1-bit frames are packed back to back and start where the previous one ends."""

    _pixels: bytes | None = None

    def _get(self, fetcher: _Fetcher, uid: str, numbers: list[int]) -> dict:
        with self._lock:
            if self._pixels is None:
                client = fetcher.client()
                series = self.series[uid]
                ds = client.call(f"study {self.study} series {series} instance {uid}",
                                 client.api.retrieve_instance, self.study, series, uid)
                element = next((ds[t] for t, _ in dicom.PIXELS if t in ds), None)
                if element is None:
                    raise CorruptDataError(f"{client.url}: instance {uid} has no pixel data")
                self._pixels = bytes(element.value)
                self._bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * \
                    int(ds.get("BitsAllocated", 8))  # float pixel data: 32 or 64
        out = {}
        for n in numbers:
            start = (n - 1) * self._bits
            data = self._pixels[start // 8:-(-(start + self._bits) // 8)]
            out[n] = dicom.realign(data, start % 8) if start % 8 else data
        return out


def _syntax(frame: bytes) -> str:
    """The stored encoding of a frame, from its bytes (WADO-RS metadata does not say): a JPEG's
    start-of-frame marker (after any APPn segments: CharLS writes a SPIFF header first) tells
    baseline from JPEG-LS; an RLE frame opens with its segment count and a first offset of 64."""
    if frame[:2] == b"\xff\xd8":
        pos = 2
        while pos + 4 <= len(frame) and frame[pos] == 0xFF:
            marker = frame[pos + 1]
            if marker == 0xF7:
                return "1.2.840.10008.1.2.4.80"
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                return "1.2.840.10008.1.2.4.50"
            pos += 2 + int.from_bytes(frame[pos + 2:pos + 4], "big")
        return "1.2.840.10008.1.2.4.50"
    if frame[:4] == b"\xff\x4f\xff\x51" or frame[4:8] == b"jP  ":
        return "1.2.840.10008.1.2.4.90"
    if len(frame) >= 64 and 1 <= int.from_bytes(frame[:4], "little") <= 15 and \
            int.from_bytes(frame[4:8], "little") == 64:
        return dicom.RLE
    return "1.2.840.10008.1.2.1"


def open_url(url: str, options: Options, web: WebOptions) -> Slide:
    """The slide of ``series`` (of ``study``) on the DICOMweb server at ``url``
    (``dicomweb+http(s)://host:port/path``); without ``series``, the first SM series (of
    ``study``) the server lists. With ``whole_study``, the study's other series add the slide's
    instances stored there (same frame of reference and container) and its segmentations and
    parametric maps."""
    try:
        return _open_url(url, options, web)
    except TilescopeError:
        raise
    except Exception as e:  # the metadata's content broke a parse (pydicom's, ours): ours, naming the URL
        raise CorruptDataError(f"{url}: cannot read the DICOMweb metadata: {type(e).__name__}: {e}") from e


def _open_url(url: str, options: Options, web: WebOptions) -> Slide:
    try:
        import dicomweb_client  # noqa: F401
        import pydicom  # noqa: F401
    except ImportError:
        raise UnsupportedFormatError(f"{url}: DICOMweb needs the [dicom] extra (pydicom, dicomweb-client)") \
            from None
    study, series = web.study, web.series
    base = url[len(SCHEME):] if url.startswith(SCHEME) else url
    args = (web.headers, web.verify, web.timeout, web.retries, web.max_response_bytes)
    fetching = (args, web.batch, web.connections)
    client = _Client(base, *args)
    try:
        if series is None or study is None:
            q = {"Modality": "SM"}
            found = client.call("QIDO-RS series search", client.api.search_for_series, study,
                                search_filters=q)
            if not found:
                where = f" in study {study}" if study else ""
                raise SourceNotFoundError(f"{base}: no slide microscopy series{where}")
            study = study or found[0]["0020000D"]["Value"][0]
            series = found[0]["0020000E"]["Value"][0]
        meta = client.call(f"study {study} series {series} metadata",
                           client.api.retrieve_series_metadata, study, series)
        instances = _instances(meta, client, study, series, lambda ds: _sop(ds) == dicom.WSI_SOP_CLASS)
        more, derived = _study(client, study, series, instances) if web.whole_study and instances else \
            ([], [])
        instances += more
        source = UrlSource(f"{base}/studies/{study}/series/{series}")
        levels = dicom.volume_levels(instances, f"{source.path}: no VOLUME instance in the series")
        first = levels[0][0].ds
        # level 0's profile, as for files (a label's or overview's may differ; metadata order varies)
        icc = _icc([m for m in meta if m.get("00080018", {}).get("Value", [None])[0] == first.SOPInstanceUID]
                   or meta, client)
    finally:
        client.close()
    props = {**dicom.attributes(first), "url": base, "StudyInstanceUID": study, "SeriesInstanceUID": series,
             "instances": [i.ds.SOPInstanceUID for i in instances + derived],
             "series": sorted({str(i.ds.SeriesInstanceUID) for i in instances})}
    slide = Slide(source, NAME, options, vendor="dicom", properties={"dicom": props}, icc_profile=icc,
                  quickhash=dicom.quickhash1(series))

    def make_level(insts: list[Instance], label: str, axes: Any = None) -> LevelSpec:
        return _level(insts, base, study, fetching, label, axes)
    return dicom.assemble(slide, levels, instances, derived, make_level)


def _no_bulk_data(tag: str, vr: str, value: str) -> bytes:
    """Bulk data (pixels; the ICC profile: :func:`_icc`) stays on the server while the metadata is
    parsed."""
    return b""


def _sop(ds: Dataset) -> str:
    return str(ds.get("SOPClassUID", ""))


def _instances(meta: list, client: _Client, study: str, series: str, keep) -> list:
    """The instances in a series' metadata that ``keep(dataset)`` accepts, each with the transfer
    syntax of its stored frames (probed with its first frame)."""
    import pydicom

    out = []
    # pixel elements only say which one an instance has (Orthanc 1.10 even puts a float pixel
    # value where a bulk data URI belongs): parse them as empty bulk data
    pixels = {f"{tag:08X}" for tag, _ in dicom.PIXELS}
    datasets = [pydicom.Dataset.from_json({k: {"vr": v.get("vr"), "BulkDataURI": ""} if k in pixels else v
                                           for k, v in m.items()}, bulk_data_uri_handler=_no_bulk_data)
                for m in meta]
    probed: dict = {}  # concatenation UID -> (syntax, whole): its parts share one transfer syntax
    for ds in datasets:
        if not keep(ds):
            continue
        uid = ds.SOPInstanceUID
        concatenation = ds.get("ConcatenationUID")
        if concatenation in probed:
            syntax, whole = probed[concatenation]
        else:
            whole = False
            try:  # a request costs the server a parse of the whole instance: one per concatenation
                probe = client.call(f"instance {uid} frame 1", client.api.retrieve_instance_frames, study,
                                    series, uid, frame_numbers=[1], media_types=_OCTETS)
                syntax = _syntax(bytes(probe[0]))
            except RemoteError:  # Orthanc 1.10 serves no frames of float or 1-bit data: take the instance
                if "PixelData" in ds and int(ds.get("BitsAllocated", 8)) != 1:
                    raise
                syntax, whole = "1.2.840.10008.1.2.1", True
            if concatenation:
                probed[concatenation] = syntax, whole
        inst = dicom.Instance(f"{client.url} instance {uid}", ds, syntax)
        inst.whole = whole
        out.append(inst)
    return out


def _icc(meta: list, client: _Client) -> bytes | None:
    """The slide's ICC profile (of the first whole-slide instance that has one): inline, or bulk
    data fetched as octets (Orthanc answers 400 to a bulk data request without a media type)."""
    for m in meta:
        if m.get("00080016", {}).get("Value", [None])[0] != dicom.WSI_SOP_CLASS:
            continue
        paths = m.get("00480105", {}).get("Value") or [{}]
        element = paths[0].get("00282000") or m.get("00282000")
        if not element:
            continue
        if "InlineBinary" in element:
            return base64.b64decode(element["InlineBinary"])
        if "BulkDataURI" in element:
            uri = element["BulkDataURI"]
            data = client.call(f"ICC profile {uri}", client.api.retrieve_bulkdata, uri,
                               media_types=("application/octet-stream",))
            return bytes(data[0]) if data else None
    return None


def _study(client: _Client, study: str, series: str, instances: list) -> tuple[list, list]:
    """The slide's instances in the study's other series: whole-slide images of the same frame of
    reference and container (optical paths or levels stored as series of their own), and
    segmentations and parametric maps of the frame of reference (QIDO-RS lists the series, their
    WADO-RS metadata says what they hold)."""
    first = instances[0].ds
    frame_of_reference, container = first.get("FrameOfReferenceUID"), first.get("ContainerIdentifier")
    if not frame_of_reference:  # nothing ties other series to this slide
        return [], []
    found = client.call(f"QIDO-RS series of study {study}", client.api.search_for_series, study)

    def ours(ds: Dataset) -> bool:
        if ds.get("FrameOfReferenceUID") != frame_of_reference:
            return False
        return _sop(ds) in dicom.DERIVED or (_sop(ds) == dicom.WSI_SOP_CLASS and
                                             ds.get("ContainerIdentifier") == container)
    more: list[dicom.Instance] = []
    derived: list[dicom.Instance] = []
    for item in found:
        other = item["0020000E"]["Value"][0]
        modality = (item.get("00080060", {}).get("Value") or [""])[0]
        if other == series or modality not in ("SEG", "OT", "SM"):  # SEG; parametric maps are often OT
            continue
        meta = client.call(f"study {study} series {other} metadata", client.api.retrieve_series_metadata,
                           study, other)
        for inst in _instances(meta, client, study, other, ours):
            (more if inst.sop_class == dicom.WSI_SOP_CLASS else derived).append(inst)
    return more, derived


def _level(insts, base, study, fetching, label, axes=None):
    kind = WholeInstance if insts[0].whole else WebFrames

    def make_pieces(z: int, op: int, owner: Instance, frames: list[tuple[int, Instance, int]]) -> Pieces:
        n = owner.grid[0] * owner.grid[1]
        uids, numbers = [None] * n, np.zeros(n, np.int64)
        for i, inst, k in frames:  # frame numbers count per instance, from 1
            uids[i], numbers[i] = inst.ds.SOPInstanceUID, k + 1
        series = {inst.ds.SOPInstanceUID: str(inst.ds.SeriesInstanceUID) for _, inst, _ in frames}
        return kind(base, study, series, uids, numbers, f"{label} z={z} layer={op}", *fetching)
    return dicom.level_layout(insts, axes, make_pieces)


def find_slides(url: str, options: Options, web: WebOptions, *, study_instance_uid: str | None = None,
                patient_id: str | None = None, study_id: str | None = None,
                container_id: str | None = None) -> list[Slide]:
    """Every slide-microscopy series on the server matching the filters, opened (QIDO-RS series
    search on study, patient and study ID; the container identifier is checked in each series'
    metadata, which QIDO-RS does not search)."""
    base = url[len(SCHEME):] if url.startswith(SCHEME) else url
    client = _Client(base, web.headers, web.verify, web.timeout, web.retries, web.max_response_bytes)
    filters = {"Modality": "SM"}
    if patient_id:
        filters["PatientID"] = patient_id
    if study_id:
        filters["StudyID"] = study_id
    try:
        found = client.call("QIDO-RS series search", client.api.search_for_series, study_instance_uid,
                            search_filters=filters)
    finally:
        client.close()
    slides, seen = [], set()
    for item in found:
        study, series = item["0020000D"]["Value"][0], item["0020000E"]["Value"][0]
        if series in seen:  # already part of a slide found through another of its series
            continue
        slide = open_url(url, options, dataclasses.replace(web, study=study, series=series))
        seen.update(slide.properties["dicom"]["series"])
        if container_id is None or slide.properties["dicom"].get("ContainerIdentifier") == container_id:
            slides.append(slide)
        else:
            slide.close()
    return slides
