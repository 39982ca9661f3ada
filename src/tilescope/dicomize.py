"""DICOM WSI output: tilescope as a source of wsidicomizer, which writes the DICOM files (its
metadata model, UIDs, encoders and instance layout, through wsidicom): nothing of DICOM's encoding
is written here. Used by ``tilescope.write(..., format="dicom")``.

The source shows a scene as wsidicomizer's openslide-like sources do (properties, levels and
associated images from the drop-in) and reads pixels with ``Scene.read_level``. With passthrough, a
level stored as JPEG tiles of the output's tile size hands its tiles over as they are (the shared
tables spliced in front of each, as a DICOM frame is a whole JPEG stream): no decode, no re-encode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as Pillow
from pydicom.uid import JPEGBaseline8Bit
from wsidicom.geometry import Point, Region
from wsidicomizer.sources.openslide_like import (
    OpenSlideLikeLevelImageData,
    OpenSlideLikeProperties,
    OpenSlideLikeSource,
)
from wsidicomizer.sources.openslide_like.openslide_like_metadata import OpenSlideLikeMetadata

import tilescope
from tilescope import openslide as dropin


def _passable(enc: Any, tile: int) -> bool:
    """Stored tiles a DICOM frame can be: JPEG of the output's tile size, decoding as YCbCr (TIFF's
    YCbCr, or RGB-labelled JFIF streams; DICOM's YBR frames)."""
    if enc is None or enc.codec != "jpeg" or enc.tile != (tile, tile) or enc.samples != 3:
        return False
    photometric, colorspace = int(enc.params.get("photometric") or 0), enc.params.get("colorspace")
    return (photometric == 6 and colorspace in (None, "YCbCr")) or (photometric == 2 and colorspace is None)


class _Level(OpenSlideLikeLevelImageData):
    def __init__(self, scene: tilescope.Scene, passthrough: bool, *args: Any):
        super().__init__(*args)
        self._scene = scene
        enc = scene.encoded_tiles(self._level_index) if passthrough else None
        self._stored = enc if enc is not None and _passable(enc, self.tile_size.width) and \
            self._offset == Point(0, 0) else None

    @property
    def samples_per_pixel(self) -> int:
        return 3

    @property
    def transfer_syntax(self) -> Any:
        return JPEGBaseline8Bit if self._stored is not None else super().transfer_syntax

    @property
    def transcoder(self) -> Any:  # None: the writer takes get_encoded_tile's frames as they are
        return None if self._stored is not None else super().transcoder

    @property
    def photometric_interpretation(self) -> str:
        return "YBR_FULL_422" if self._stored is not None else super().photometric_interpretation

    def _region(self, region: Region) -> np.ndarray | None:
        x = region.start.x + self._offset.x / self._downsample
        y = region.start.y + self._offset.y / self._downsample
        w, h = region.size.width, region.size.height
        a = self._scene.read_level(self._level_index, (x, y, w, h), threads=1)
        return None if self._detect_blank_tile(a) else a

    def read_region(self, region: Region, z: float, path: str) -> Pillow.Image:
        a = self._region(region)
        return self._get_blank_decoded_frame(region.size) if a is None else Pillow.fromarray(a)

    def get_decoded_tile(self, tile_point: Point, z: float, path: str) -> Pillow.Image:
        return self.read_region(Region(tile_point * self.tile_size, self.tile_size), z, path)

    def get_encoded_tile(self, tile: Point, z: float, path: str) -> bytes:
        if self._stored is not None:
            data = self._stored.get(tile.x, tile.y)
            tables = self._stored.params.get("tables")
            if data is not None:
                return tables[:-2] + data[2:] if tables else data  # tables, then the tile's own segments
        a = self._region(Region(tile * self.tile_size, self.tile_size))
        return self._get_blank_encoded_frame(self.tile_size) if a is None else self.encoder.encode(a)


class TilescopeSource(OpenSlideLikeSource):
    """A wsidicomizer source over any slide tilescope reads (its first scene, or ``scene``)."""

    def __init__(self, filepath: Path, encoder: Any, tile_size: int | None = None, metadata: Any = None,
                 default_metadata: Any = None, include_confidential: bool = True,
                 metadata_post_processor: Any = None, uid_generator: Any = None, scene: int = 0,
                 passthrough: bool = False):
        self._slide = tilescope.open(str(filepath))
        self._scene = self._slide.scenes[scene]
        self._passthrough = passthrough
        osr = dropin.OpenSlide(str(filepath))
        p = osr.properties
        properties = OpenSlideLikeProperties(
            background_color=p.get(dropin.PROPERTY_NAME_BACKGROUND_COLOR),
            bounds_x=p.get(dropin.PROPERTY_NAME_BOUNDS_X), bounds_y=p.get(dropin.PROPERTY_NAME_BOUNDS_Y),
            bounds_height=p.get(dropin.PROPERTY_NAME_BOUNDS_HEIGHT),
            bounds_width=p.get(dropin.PROPERTY_NAME_BOUNDS_WIDTH),
            objective_power=p.get(dropin.PROPERTY_NAME_OBJECTIVE_POWER),
            vendor=p.get(dropin.PROPERTY_NAME_VENDOR),
            mpp_x=p.get(dropin.PROPERTY_NAME_MPP_X), mpp_y=p.get(dropin.PROPERTY_NAME_MPP_Y))
        associated = {name: im for name, im in osr.associated_images.items()}
        super().__init__(filepath, properties, [lv.downsample for lv in self._scene.levels],
                         [lv.size for lv in self._scene.levels], associated,
                         OpenSlideLikeMetadata(properties, osr.color_profile), encoder, tile_size, metadata,
                         default_metadata, include_confidential, metadata_post_processor, uid_generator)
        osr.close()

    def close(self) -> None:
        self._slide.close()

    @staticmethod
    def is_supported(path: Path) -> bool:
        return tilescope.detect(str(path)) is not None

    def _create_level_image_data(self, level_index: int) -> Any:
        return _Level(self._scene, self._passthrough, self._blank_color, self._base_level_offset,
                      self._base_level_size, [lv.size for lv in self._scene.levels],
                      [lv.downsample for lv in self._scene.levels], self.metadata.pyramid.image, level_index,
                      self._tile_size, self._encoder)


def write_dicom(scene: tilescope.Scene, folder: str, *, tile_size: int, compression: str, quality: int,
                workers: int) -> list[str]:
    """The scene's levels (and the slide's label, macro, thumbnail) as DICOM WSI files in ``folder``."""
    from wsidicom.codec import Jpeg2kSettings, JpegSettings
    from wsidicom.codec.settings import Subsampling
    from wsidicomizer import WsiDicomizer

    if compression == "jpeg2000":  # a PSNR in dB as for TIFF (0: lossless)
        encoding: Any = Jpeg2kSettings(levels=round(quality / 2) if quality < 100 else 0)
    else:
        encoding = JpegSettings(quality=quality, subsampling=Subsampling.R420)
    return WsiDicomizer.convert(scene.slide.path, folder, tile_size=tile_size, encoding=encoding,
                                workers=workers, preferred_source=TilescopeSource, scene=scene.index,
                                passthrough=compression == "passthrough")
