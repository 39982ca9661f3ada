"""Format drivers: one module per format, each with ``NAME``, ``OPENSLIDE_VENDOR``, ``detect(probe)``
and ``open(probe, options)``. Detection asks the drivers in ``DRIVERS`` order, most specific first,
so a file reaches the driver that knows most about it (an Aperio SVS is a TIFF too). Drivers of
URLs (``URL_DRIVERS``) declare the ``SCHEMES`` they open, their keywords as a dataclass
``URL_OPTIONS``, and ``open_url(url, options, url_options)``."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any, cast

import tifffile

from ..errors import CorruptDataError, InvalidRequestError
from ..source import ByteSource, SourceFile, local
from . import ifd

if TYPE_CHECKING:
    import xml.etree.ElementTree as ET

# detection order: vendor dialects of TIFF and other formats first, the generic TIFF reader last
DRIVERS = ("svs", "ome", "ndpi", "philips", "qptiff", "scn", "ventana", "scanimage", "czi", "afi", "dicom",
           "tiff", "pillow", "omezarr", "gdal")

URL_DRIVERS = ("dicomweb",)

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class Probe:
    """What detection looks at: the file's first bytes and, for TIFFs, its parsed IFDs.

    Parsing happens once and is shared by every driver asked. Plain TIFFs are read by
    :mod:`.ifd` (a first open costs a quarter of tifffile's), the rest by tifffile. ``close()``
    releases tifffile's handle; drivers copy what they need (offsets, tags, descriptions) before that.
    """

    def __init__(self, source: ByteSource):
        self.source = source
        self.path = source.path
        self.head = source.head(64)
        self.folder: str | None = None  # the folder the caller opened, when it stands for this file
        self._tiff: tifffile.TiffFile | None = None
        self._plain: ifd.Pages | bool | None = False  # False: not read yet

    @property
    def is_tiff(self) -> bool:
        return self.head[:4] in TIFF_MAGIC

    def tiff(self) -> tifffile.TiffFile:
        """The file as a ``tifffile.TiffFile``; CorruptDataError if its structure is broken."""
        if self._tiff is None:
            try:
                self._tiff = self.tifffile()
                self._tiff.pages[0]
            except Exception as e:
                if self._tiff is not None:
                    self._tiff.close()
                    self._tiff = None
                raise CorruptDataError(f"{self.path}: TIFF structure is broken: {e}") from e
        return self._tiff

    def tifffile(self, **kw: Any) -> tifffile.TiffFile:
        """A new ``tifffile.TiffFile`` of the file (its path, or its bytes from a server)."""
        path = local(self.source)
        return tifffile.TiffFile(path if path is not None else cast(IO[bytes], SourceFile(self.source)), **kw)

    def plain(self) -> ifd.Pages | None:
        """The IFD chain read by :mod:`.ifd`, or None where tifffile must read the file."""
        if self._plain is False:
            self._plain = ifd.read(self.source, self.head) if self.is_tiff else None
        return cast("ifd.Pages | None", self._plain)

    def first_page(self) -> Any:
        """The first IFD (for detection): a plain :class:`ifd.Page` or tifffile's page."""
        plain = self.plain()
        return plain.first if plain is not None else self.tiff().pages.first

    def pages(self) -> list[Any]:
        """Every page of the IFD chain: plain pages when each is plain, else tifffile's
        (:func:`tiff.pages`)."""
        plain = self.plain()
        pages = ifd.all_pages(plain) if plain is not None else None
        if pages is not None:
            return list(pages)
        from .tiff import pages as tifffile_pages

        return list(tifffile_pages(self.tiff()))

    def close(self) -> None:
        if self._tiff is not None:
            self._tiff.close()
            self._tiff = None


def parse_xml(text: str | bytes, where: str, what: str) -> ET.Element:
    """The root element of a format's XML (loaded on first use: only XML formats pay for it);
    CorruptDataError naming the file and the document when it is malformed."""
    import xml.etree.ElementTree as ET

    try:
        return ET.fromstring(text)
    except ET.ParseError as e:
        raise CorruptDataError(f"{where}: {what} is malformed: {e}") from None


def modules() -> list[ModuleType]:
    """The drivers of files, in detection order."""
    return _MODULES


def url_modules() -> list[ModuleType]:
    return _URL_MODULES


def for_url(source: str) -> ModuleType | None:
    """The driver whose URL scheme ``source`` starts with, if any."""
    return next((m for m in _URL_MODULES if source.startswith(m.SCHEMES)), None)


_MODULES = [importlib.import_module(f"{__name__}.{m}") for m in DRIVERS]
_URL_MODULES = [importlib.import_module(f"{__name__}.{m}") for m in URL_DRIVERS]


# other readers' names for our drivers: slideio's driver ids and openslide's vendors
ALIASES = {"ometiff": "OME", "dcm": "DICOM", "aperio": "SVS", "hamamatsu": "NDPI", "leica": "SCN",
           "generic-tiff": "TIFF", "ome-tiff": "OME", "dicom": "DICOM", "zeiss": "CZI", "ventana": "Ventana",
           "philips": "Philips"}


def by_name(name: str) -> ModuleType:
    """The driver named ``name`` (any case), or named so by slideio (``OMETIFF``, ``DCM``) or by
    openslide's vendors (``aperio``, ``hamamatsu``, ``leica``, ``generic-tiff``)."""
    want = ALIASES.get(name.lower(), name).lower()
    for m in modules():
        if m.NAME.lower() == want:
            return m
    raise InvalidRequestError(f"no driver named {name!r} (drivers: {', '.join(m.NAME for m in modules())}; "
                              f"also slideio's and openslide's names: {', '.join(sorted(ALIASES))})")


def openslide_vendor(driver: str) -> str | None:
    """openslide's vendor name for the format a driver reads (None: a plain image)."""
    web = next((m for m in _URL_MODULES if m.NAME.lower() == driver.lower()), None)
    return (web or by_name(driver)).OPENSLIDE_VENDOR


def detect(probe: Probe) -> ModuleType | None:
    for m in modules():
        if m.detect(probe):
            return m
    return None
