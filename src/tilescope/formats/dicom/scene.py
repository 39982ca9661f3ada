"""The DICOM Scene: the slide coordinate system (mm on the glass) and channel lookups."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import UnsupportedFormatError
from ...model import Scene, Slide

if TYPE_CHECKING:
    from numpy.typing import ArrayLike
    from pydicom import Dataset

    from ...geometry import SizeLike


class DicomScene(Scene):
    """A DICOM slide's Scene, with the slide coordinate system: millimetres on the glass (Total
    Pixel Matrix Origin, Image Orientation (Slide), Pixel Spacing) <-> pixel indices of any level.

    Its image channels are the optical paths' samples; segments of Segmentation instances and
    Parametric Map instances of the same frame of reference follow as derived channels (read when
    asked for by name or index, at the levels of their size). ``channel_info`` describes each
    channel: type OPTICAL_PATH (identifier, description, wavelength), SEGMENT (number, label,
    property_type, segmentation_type, max_fractional_value) or PARAMETER (label, unit).
    ``focal_planes`` lists each z index's focal plane offset in micrometres."""

    focal_planes: tuple[float, ...]  # z index -> focal plane offset (µm)
    slide_origin: tuple[float, float] | None  # mm on the glass of level 0's top-left pixel
    image_orientation: tuple[float, ...] | None  # Image Orientation (Slide): row, column direction
    pixel_spacing_mm: tuple[float, float] | None  # (x, y): mm between columns, between rows

    def __init__(self, slide: Slide, *, ds: Dataset, focal_planes: tuple[float, ...] = (0.0,), **scene):
        """A Scene (``scene``: its keywords) with the slide coordinate system of level-0 dataset
        ``ds`` and ``focal_planes`` (z index -> focal plane offset, micrometres)."""
        super().__init__(slide, **scene)
        self.focal_planes = tuple(focal_planes)
        try:
            o = ds.TotalPixelMatrixOriginSequence[0]
            self.slide_origin = (float(o.XOffsetInSlideCoordinateSystem),
                                 float(o.YOffsetInSlideCoordinateSystem))
            self.image_orientation = tuple(float(v) for v in ds.ImageOrientationSlide)
            sp = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
            self.pixel_spacing_mm = (float(sp[1]), float(sp[0]))  # DICOM lists rows' spacing first
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            self.slide_origin = self.image_orientation = self.pixel_spacing_mm = None

    def _matrix(self, level: int) -> np.ndarray:
        if self.pixel_spacing_mm is None or self.image_orientation is None or self.slide_origin is None:
            raise UnsupportedFormatError(f"{self.location}: no slide coordinate system (origin, orientation, "
                                         f"spacing) in the DICOM metadata")
        sx, sy = self.levels[self.level_index(level)].scale
        r, c = np.asarray(self.image_orientation[:3]), np.asarray(self.image_orientation[3:])
        dc, dr = self.pixel_spacing_mm
        # x_mm = origin + column * (column spacing) * row direction + row * (row spacing) * column direction
        return np.array([[r[0] * dc * sx, c[0] * dr * sy, self.slide_origin[0]],
                         [r[1] * dc * sx, c[1] * dr * sy, self.slide_origin[1]], [0.0, 0.0, 1.0]])

    @property
    def physical_size(self) -> tuple[float, float] | None:
        """(width, height) of the imaged area in mm: level 0's columns x column spacing, rows x
        row spacing (its offset on the glass is ``slide_origin``)."""
        if self.pixel_spacing_mm is None:
            return None
        return self.size[0] * self.pixel_spacing_mm[0], self.size[1] * self.pixel_spacing_mm[1]

    def pixel_to_slide(self, indices: ArrayLike, level: int = 0) -> np.ndarray:
        """(N, 2) (column, row) pixel indices of ``level`` -> (N, 2) (x, y) slide coordinates, mm."""
        p = np.atleast_2d(np.asarray(indices, np.float64))
        return (self._matrix(level) @ np.c_[p, np.ones(len(p))].T).T[:, :2]

    def slide_to_pixel(self, coordinates: ArrayLike, level: int = 0) -> np.ndarray:
        """(N, 2) (x, y) slide coordinates in mm -> (N, 2) fractional (column, row) of ``level``."""
        p = np.atleast_2d(np.asarray(coordinates, np.float64))
        return (np.linalg.inv(self._matrix(level)) @ np.c_[p, np.ones(len(p))].T).T[:, :2]

    def find_optical_paths(self, identifier: str | None = None, description: str | None = None) -> list[str]:
        """Names of the image channels of the optical paths matching ``identifier`` and
        ``description`` (all paths when neither is given)."""
        return self._find("OPTICAL_PATH", identifier=identifier, description=description)

    def find_segments(self, number: int | None = None, label: str | None = None,
                      property_type: str | None = None) -> list[str]:
        """Names of the segment channels (from DICOM Segmentation instances of this slide's frame
        of reference) matching segment ``number``, ``label`` and segmented ``property_type``."""
        return self._find("SEGMENT", number=number, label=label, property_type=property_type)

    def find_parameters(self, label: str | None = None) -> list[str]:
        """Names of the parametric map channels whose content label is ``label`` (all if None)."""
        return self._find("PARAMETER", label=label)

    def _find(self, kind: str, **match) -> list[str]:
        return [str(c["name"]) for c in self.channel_info if c["type"] == kind
                and all(v is None or c.get(k) == v for k, v in match.items())]

    def read_slide_region(self, x: float, y: float, width: float, height: float, size: SizeLike = None,
                          **kw: Any) -> np.ndarray:
        """The region of the glass [x, x + width) x [y, y + height) (mm), as level-0 pixels of the
        smallest pixel rectangle covering it (rotated slides: the image stays in pixel orientation),
        at ``size`` (default: its pixel size); ``kw`` as for :meth:`read`."""
        corners = self.slide_to_pixel([(x, y), (x + width, y), (x, y + height), (x + width, y + height)])
        x0, y0 = np.floor(corners.min(axis=0) + 1e-9).astype(int)
        x1, y1 = np.ceil(corners.max(axis=0) - 1e-9).astype(int)
        return self.read((int(x0), int(y0), int(x1 - x0), int(y1 - y0)), size, **kw)
