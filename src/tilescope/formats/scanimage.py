"""ScanImage TIFF/BigTIFF stacks (two-photon and other laser-scanning microscopes).

ScanImage writes one IFD per frame (one uncompressed strip each), channels interleaved fastest,
then the frames of a slice, the slices of a volume, the volumes. Since 2016 a BigTIFF carries a
static block right after the header: magic 117637889, version, the frame-invariant settings as
MATLAB-evaluable ``SI.x.y = value`` lines and the ROI group JSON (the same text is in each frame's
Software and Artist tags); older files put ``scanimage.SI.`` lines in each ImageDescription. Each
frame's ImageDescription holds per-frame values (frame numbers, timestamps, triggers, I2C data).

The IFD chain is walked with ``struct`` over a memory map, reading only the entries that matter
(a 4096-frame file in a few ms, no pixels touched); channels, z-slices and time points come from
the settings. The Scene reads like any other through the engine, and adds the raw frame sequence
(``frames(start, stop)``, read straight from the page cache into the output array),
``frame_descriptions`` (lazy, one per frame) and the parsed settings (``scanimage``, ``roi_groups``).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import mmap
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from .. import codecs
from ..engine import GridPlane, Layout
from ..errors import CorruptDataError, InvalidRequestError, UnsupportedFormatError
from ..model import Scene, Slide, make_levels
from ..source import ByteRanges, local

if TYPE_CHECKING:
    from ..engine import Options
    from ..source import ByteSource
    from . import Probe

NAME = "ScanImage"
OPENSLIDE_VENDOR = "scanimage"  # openslide's name for the format (detect_format, openslide.vendor)
MAGIC = 117637889
_TAGS = (256, 257, 258, 270, 273, 277, 279, 305, 315, 339)
_TYPES = {1: "B", 2: "B", 3: "H", 4: "I", 16: "Q", 13: "I", 18: "Q", 6: "b", 8: "h", 9: "i", 17: "q"}


def _static_block(head: bytes) -> tuple[int, int, int, int] | None:
    """(version, settings length, ROI length, offset of the settings) of the static block."""
    big = head[2:4] == b"+\x00"
    off = 16 if big else 8
    if len(head) < off + 16:
        return None
    magic, version, n0, n1 = struct.unpack_from("<IIII", head, off)
    return (version, n0, n1, off + 16) if magic == MAGIC else None


def detect(probe: Probe) -> bool:
    if probe.head[:4] not in (b"II*\x00", b"II+\x00"):
        return False
    if _static_block(probe.head) is not None:
        return True
    page = probe.first_page()  # older ScanImage: its keys in the frame description
    text = (page.description or "") + (page.software or "")
    return "scanimage.SI" in text or text.lstrip().startswith("SI.") or "state.software.version" in text


# -- the settings ----------------------------------------------------------------------------------
def matlab_assignments(text: str) -> dict:
    """``key = value`` lines (or ScanImage 3.x's ``key=value``, separated by carriage returns) as
    {key: value}, values as Python (numbers, strings, nested lists for arrays and cells): tifffile's
    MATLAB parser (``matlabstr2py``), which every ScanImage generation's text goes through. A text
    it cannot parse is a ValueError."""
    import tifffile

    try:
        parsed = tifffile.matlabstr2py(text) if text.strip() else {}
    except Exception as e:  # its parser's own errors on text that is not MATLAB
        raise ValueError(f"{type(e).__name__}: {e}") from None
    return parsed if isinstance(parsed, dict) else {}


def parse_settings(text: str, prefix: str = "SI.") -> dict:
    """``SI.a.b = value`` (or ScanImage 3.x ``state.a.b=value``, with ``prefix="state."``) lines
    into {"a": {"b": value}}; a ``scanimage.`` before the prefix (older files) is dropped."""
    out: dict = {}
    for key, value in matlab_assignments(text).items():
        key = key.removeprefix("scanimage.")
        if not key.startswith(prefix):
            continue
        d = out
        parts = key[len(prefix):].split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                break
        else:
            d[parts[-1]] = value
    return out


def _get(d: dict, path: str, default=None):
    for p in path.split("."):
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Acquisition:
    """What a stack's settings say about its layout, whichever ScanImage generation wrote them."""

    channels: tuple[int, ...]  # ScanImage's own (1-based) numbers of the saved channels
    slices: int
    frames_per_slice: int
    volumes: int | None
    z_step: float | None  # um
    frame_rate: float | None  # Hz
    version: str | None

    @classmethod
    def from_si(cls, si: dict) -> Acquisition:
        """ScanImage 2015 and later (``SI.`` settings)."""
        save = _get(si, "hChannels.channelSave", 1)
        chans = [c[0] if isinstance(c, list) else c for c in save] if isinstance(save, list) else [save]
        stack = bool(_get(si, "hStackManager.enable", False))
        slices = _get(si, "hStackManager.actualNumSlices", _get(si, "hStackManager.numSlices", 1))
        major, minor = _get(si, "VERSION_MAJOR"), _get(si, "VERSION_MINOR")
        return cls(tuple(int(c) for c in chans if _number(c) is not None),
                   _count(slices) if stack else 1, _count(_get(si, "hStackManager.framesPerSlice")),
                   _get(si, "hFastZ.actualNumVolumes"), _number(_get(si, "hStackManager.stackZStepSize")),
                   _number(_get(si, "hRoiManager.scanFrameRate")),
                   f"{major}.{minor}" if major is not None else None)

    @classmethod
    def from_state(cls, st: dict) -> Acquisition:
        """ScanImage 3.x (``state.`` settings): ``savingChannelN`` flags, ``numberOfZSlices``,
        ``numberOfFrames`` per slice (averaged ``numAvgFramesSave`` at a time when averaging)."""
        acq = st.get("acq", {}) if isinstance(st.get("acq"), dict) else {}
        chans = tuple(n for n in range(1, 17) if acq.get(f"savingChannel{n}") == 1)
        frames = _count(acq.get("numberOfFrames"))
        avg = _count(acq.get("numAvgFramesSave"))
        if acq.get("averaging") == 1 and frames % avg == 0:
            frames //= avg
        zstep = _number(acq.get("zStepSize"))
        if zstep is None:
            zstep = _number(_get(st, "motor.zStepSize"))
        version = _get(st, "software.version")
        return cls(chans or (1,), _count(acq.get("numberOfZSlices")), frames, None,
                   abs(zstep) if zstep else None, _number(acq.get("frameRate")),
                   str(version) if version is not None else None)


def _count(value) -> int:
    """A positive count from a setting (1 when missing, zero, not a number or infinite)."""
    v = _number(value)
    return int(v) if v is not None and 1 <= v < 2**31 else 1


# -- the IFD chain --------------------------------------------------------------------------------
class _Frames:
    """Per-frame IFD facts, as arrays: description (offset, count), strips (offsets, counts)."""

    def __init__(self, path: str, mm, big: bool):
        self.path = path
        self._unpack = struct.unpack_from if isinstance(mm, mmap.mmap) else mm.unpack_from
        fmt_n, fmt_e, fmt_next, esize = ("<Q", "<HHQ", "<Q", 20) if big else ("<H", "<HHI", "<I", 12)
        vsize = 8 if big else 4
        first = self._unpack("<Q" if big else "<I", mm, 8 if big else 4)[0]
        size = len(mm)
        desc: list[tuple[int, int]] = []
        strips: list[tuple[tuple, tuple]] = []
        layout: tuple | None = None
        pos, seen = first, 0
        while pos:
            if pos + 8 > size or seen > size // 8:
                raise CorruptDataError(f"{path}: IFD {len(desc)} at {pos} is outside the file or loops")
            n = self._unpack(fmt_n, mm, pos)[0]
            base = pos + struct.calcsize(fmt_n)
            if layout is None or layout[0] != n:  # learn (or re-learn) where the entries that matter are
                layout = (n, {}, {})
                for k in range(n):
                    tag = self._unpack("<H", mm, base + k * esize)[0]
                    if tag in _TAGS:
                        layout[1][tag] = k
                if 273 not in layout[1] or 279 not in layout[1]:
                    raise UnsupportedFormatError(f"{path}: frame {len(desc)} is not stored in strips")
            entries = {}
            for tag, k in layout[1].items():
                e = base + k * esize
                t, typ, count = self._unpack(fmt_e, mm, e)
                if t != tag:  # a frame with a different tag layout: re-learn it
                    layout = (-1, {}, {})
                    break
                entries[tag] = (typ, count, e + 4 + (vsize if big else 4))
            else:
                self._frame(mm, entries, vsize, big, desc, strips)
                seen += 1
                pos = self._unpack(fmt_next, mm, base + n * esize)[0]
                continue
            layout = None
        if not desc:
            raise CorruptDataError(f"{path}: no frames")
        self.desc = np.array(desc, np.int64).reshape(-1, 2)
        self.strips = strips

    def _frame(self, mm, entries, vsize, big, desc, strips):
        def values(tag):
            typ, count, at = entries[tag]
            code = _TYPES.get(typ, "B")
            nbytes = struct.calcsize(code) * count
            if nbytes > vsize:
                at = self._unpack("<Q" if big else "<I", mm, at)[0]
            return at, count, code
        if not hasattr(self, "shape"):  # the first frame: what every frame shares
            get = {}
            for t in (256, 257, 258, 277, 339):
                if t in entries:
                    at, _, code = values(t)
                    get[t] = self._unpack("<" + code, mm, at)[0]
            self.shape = (get[257], get[256])
            self.bits, self.spp, self.format = get.get(258, 16), get.get(277, 1), get.get(339, 1)
            self.software = self._text(mm, *values(305)[:2]) if 305 in entries else ""
            self.artist = self._text(mm, *values(315)[:2]) if 315 in entries else ""
        d = values(270)[:2] if 270 in entries else (0, 0)
        desc.append(d)
        so, sc = values(273), values(279)
        offs = self._unpack(f"<{so[1]}{so[2]}", mm, so[0])
        cnts = self._unpack(f"<{sc[1]}{sc[2]}", mm, sc[0])
        strips.append((offs, cnts))

    @staticmethod
    def _text(mm, at, count) -> str:
        return bytes(mm[at:at + count]).split(b"\0")[0].decode("utf-8", "replace")


class FrameDescriptions(Sequence):
    """Each frame's ImageDescription text, read when looked up (all of them: a few ms)."""

    def __init__(self, scene: ScanImageScene, desc: np.ndarray):
        self._scene, self._desc = scene, desc

    def __len__(self) -> int:
        return len(self._desc)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        off, count = self._desc[i]
        if count <= 0:
            return ""
        data = self._scene.slide.source.pread(int(off), int(count))
        return data.split(b"\0")[0].decode("utf-8", "replace")

    def parsed(self, i: int) -> dict:
        """Frame ``i``'s description as {key: value} (see :func:`matlab_assignments`)."""
        try:
            values = matlab_assignments(self[i])
        except ValueError as e:
            raise CorruptDataError(f"{self._scene._slide.path}: frame {i}'s description: {e}") from None
        return {k: v for k, v in values.items() if not k.startswith("scanimage.")}


class ScanImageScene(Scene):
    """A ScanImage stack: a Scene (channels, z = slices, t = volumes x frames per slice) plus the
    raw frame sequence, per-frame descriptions and the acquisition settings.

    Beyond Scene's attributes: ``scanimage`` (the settings the file records, ``{"SI.hChannels.
    channelSave": ..., ...}`` by their dotted names), ``roi_groups`` (the ROI groups' JSON, parsed),
    ``frame_descriptions`` (each frame's text fields as a dict, parsed when indexed),
    ``frame_order`` (how frames interleave in the file), ``acquisition`` (channels, slices,
    frames per slice and volumes the settings say), ``num_frames``, ``shape`` (frames, h, w) and
    ``raw_frames(start, stop)``.
    """

    def __init__(self, slide: Slide, *, frames: _Frames, settings: dict, roi_groups: dict,
                 acquisition: Acquisition, **scene):
        """A Scene (``scene``: its keywords) with the stack's frames, parsed settings, ROI groups
        and what the settings say of its layout."""
        super().__init__(slide, **scene)
        self._frames_info = frames
        self._acq = acquisition
        self.scanimage = settings
        self.roi_groups = roi_groups
        self.frame_order = "channel, frame of slice, slice, volume"
        self.frame_descriptions = FrameDescriptions(self, frames.desc)

    def _bind(self, slide):
        new = super()._bind(slide)
        new.frame_descriptions = FrameDescriptions(new, self._frames_info.desc)
        return new

    @property
    def acquisition(self) -> dict:
        """Key acquisition settings: frames, channels saved, slices, volumes, frames per slice,
        z step (um), frame rate (Hz), ScanImage version."""
        a = self._acq
        volumes = a.volumes if a.volumes is not None else \
            self.num_frames // (self.num_channels * a.slices * a.frames_per_slice)
        return {"frames": self.num_frames, "channels_saved": list(a.channels), "slices": self.num_z_slices,
                "volumes": volumes, "frames_per_slice": a.frames_per_slice, "z_step_um": self.z_resolution,
                "frame_rate_hz": a.frame_rate, "version": a.version}

    @property
    def num_frames(self) -> int:
        """Frames in the file (every channel of every slice, frame and volume)."""
        return len(self._frames_info.strips)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(frames, height, width) of the raw frame sequence, as ScanImageTiffReader's ``shape()``
        gives it (:meth:`raw_frames` reads them)."""
        w, h = self.size
        return self.num_frames, h, w

    def raw_frames(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``start:stop`` as the microscope wrote them: in file order (channels, slices,
        frames and volumes interleaved), as (n, h, w) with no channel axis since each frame is one
        channel of one plane (``read`` gives the (z, t, h, w, c) view). Each strip is read straight
        from the file into the output array; only those frames are touched."""
        n = self.num_frames
        stop = n if stop is None else stop
        if not 0 <= start <= stop <= n:
            raise InvalidRequestError(f"{self.location}: frames {start}:{stop} are outside 0:{n}")
        self._reader()
        src = cast("ByteSource", self.slide.source)  # stacks are parsed from bytes: always one
        h, w = self._frames_info.shape
        out = np.empty((stop - start, h, w), self.dtype)
        flat = out.reshape(stop - start, -1).view(np.uint8)
        strips = self._frames_info.strips
        for i in range(start, stop):
            offs, cnts = strips[i]
            row = flat[i - start]
            at = 0
            for o, c in zip(offs, cnts, strict=True):
                if at + c > row.size:
                    raise CorruptDataError(f"{self._slide.path}: frame {i}: strips hold more than "
                                           f"{h}x{w} pixels")
                src.readinto(o, row[at:at + c])
                at += c
            if at != row.size:
                raise CorruptDataError(f"{self._slide.path}: frame {i}: strips hold {at} of "
                                       f"{row.size} bytes")
        return out


def open(probe: Probe, options: Options) -> Slide:
    src = probe.source
    big = probe.head[2:4] == b"+\x00"
    with _mapped(src) as mm:
        frames = _Frames(src.path, mm, big)
        block = _static_block(bytes(mm[:32]))
        settings_text, roi_text = frames.software, frames.artist
        if block is not None:
            _version, n0, n1, at = block
            settings_text = bytes(mm[at:at + n0]).split(b"\0")[0].decode("utf-8", "replace")
            roi_text = bytes(mm[at + n0:at + n0 + n1]).split(b"\0")[0].decode("utf-8", "replace")
        elif not settings_text.lstrip().startswith("SI."):  # older: the keys are in the description
            off, count = frames.desc[0]
            settings_text = bytes(mm[int(off):int(off) + int(count)]).decode("utf-8", "replace")
    if frames.spp != 1 or frames.bits not in (8, 16, 32):
        raise UnsupportedFormatError(f"{src.path}: ScanImage frames of {frames.spp} samples x "
                                     f"{frames.bits} bits are not supported")
    dtype = np.dtype({1: "u", 2: "i", 3: "f"}.get(frames.format, "u") + str(frames.bits // 8))
    try:
        if "SI." in settings_text:
            settings = parse_settings(settings_text)
            acq = Acquisition.from_si(settings)
        else:  # ScanImage 3.x
            settings = parse_settings(settings_text, "state.")
            acq = Acquisition.from_state(settings)
    except ValueError as e:
        raise CorruptDataError(f"{src.path}: ScanImage settings cannot be parsed: {e}") from None
    try:
        roi = json.loads(roi_text) if roi_text.strip() else {}
        roi = roi.get("RoiGroups", roi) if isinstance(roi, dict) else {}
    except json.JSONDecodeError as e:
        raise CorruptDataError(f"{src.path}: ScanImage ROI group JSON is malformed: {e}") from None
    nc, ns, fps = len(acq.channels), acq.slices, acq.frames_per_slice
    n = len(frames.strips)
    if n % (nc * ns * fps):  # an aborted acquisition: every whole channel group is a time point
        ns = fps = 1
    nt = n // (nc * ns)  # volumes x frames per slice
    if nt == 0:
        raise CorruptDataError(f"{src.path}: {n} frames do not fill one plane of {nc} channels")
    h, w = frames.shape
    codec = codecs.raw(dtype=dtype, samples=1)
    planes = {}
    for t in range(nt):
        volume, frame = divmod(t, fps)
        for z in range(ns):
            row = []
            for c in range(nc):  # channel fastest, then frame of a slice, slice, volume
                i = ((volume * ns + z) * fps + frame) * nc + c
                offs, cnts = frames.strips[i]
                rows = -(-h // len(offs))
                row.append(GridPlane(ByteRanges(offs, cnts, f"frame {i}"), codec, (w, h), (w, rows)))
            planes[(z, t)] = tuple(row)
    layout = Layout(planes, tuple((c, 0) for c in range(nc)))
    channel_names = [f"Channel {c}" for c in acq.channels]  # ScanImage's own numbering of saved channels
    rate = acq.frame_rate  # t steps a volume, or a frame of one slice
    t_res = (ns if fps == 1 else 1) / rate if rate and rate > 0 else None
    slide = Slide(src, NAME, options, raw_metadata=settings_text + ("\n" + roi_text if roi_text else ""),
                  vendor="scanimage", properties={"scanimage": settings})
    levels = make_levels([((w, h), planes[(0, 0)][0].tile, layout)])
    scene = ScanImageScene(slide, frames=frames, settings=settings, roi_groups=roi, acquisition=acq,
                           name="main", levels=levels, channel_names=channel_names, dtype=dtype,
                           compression="none", num_z_slices=ns, num_t_frames=nt,
                           z_resolution=acq.z_step if ns > 1 else None, t_resolution=t_res)
    slide.set_contents([scene], {})
    return slide


@contextlib.contextmanager
def _mapped(src: ByteSource):
    """The file memory-mapped for the IFD walk (unmapped afterwards), or its bytes on a server
    read through the source's block cache."""
    path = local(src)
    if path is None:
        yield _Ranged(src)
        return
    with builtins.open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        yield mm


class _Ranged:
    """The parts of an mmap the IFD walk uses, over a source that is not a local file."""

    def __init__(self, src: ByteSource):
        self.src = src

    def __len__(self) -> int:
        return self.src.size

    def __getitem__(self, s: slice) -> bytes:
        start, stop, _ = s.indices(self.src.size)
        return self.src.pread(start, max(0, stop - start))

    def unpack_from(self, fmt: str, _mm: Any, at: int) -> tuple:
        n = struct.calcsize(fmt)
        if at < 0 or at + n > self.src.size:
            raise struct.error(f"{n} bytes at {at} are outside the file")
        return struct.unpack(fmt, self.src.pread(at, n))
