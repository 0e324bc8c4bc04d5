"""Image decoding for SAM3: any file PIL reads, as the RGB uint8 array FiftyOne's App shows.

Pure (PIL + numpy). Handles grayscale, palette, RGBA (alpha dropped), 16-bit, CMYK, EXIF-rotated
JPEGs (rotated as the App shows them) and animated images (first frame). A size guard refuses
images whose pixel count would exhaust memory, before decoding them.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: the default largest image decoded, in pixels (about 16k x 16k)
DEFAULT_MAX_PIXELS = 268_435_456


class ImageLoadError(ValueError):
    """An image that cannot be used: missing, unreadable, corrupt, or too large."""


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Converts a PIL image of any mode to an ``(H, W, 3)`` uint8 RGB array."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (or 32-bit integer) grayscale: scale the 16-bit range onto 8 bits
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(values / 257.0, 0, 255).round().astype(np.uint8)
    elif image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        low, high = float(values.min()), float(values.max())
        gray = ((values - low) / (high - low) * 255 if high > low else np.zeros_like(values)).astype(np.uint8)
    else:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return np.array(rgb, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on read-only arrays
    return np.repeat(gray[:, :, None], 3, axis=2)


def load_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Reads an image file as an ``(H, W, 3)`` uint8 RGB array, oriented as its EXIF tag says.

    Args:
        path: the image file
        max_pixels (``DEFAULT_MAX_PIXELS``): refuse images with more pixels than this (checked from
            the header, before decoding); ``None`` for no limit

    Raises:
        ImageLoadError: the file is missing, empty, not an image, corrupt or truncated, or too large
    """
    path = os.fspath(path)
    with _open_image(path) as image:
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageLoadError(
                f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
                f"pixels: {path}"
            )
        image.seek(0)  # animated GIF/WebP/APNG: the first frame
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # not a copy of every upright image
        return to_rgb_array(image)


#: EXIF orientations that turn an image by 90 or 270 degrees (its width and height swap)
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """The ``(height, width)`` :func:`load_image` would return for ``path``, read from the header only
    (EXIF orientation applied), without decoding the pixels.

    Raises:
        ImageLoadError: the file is missing, empty or not an image
    """
    with _open_image(os.fspath(path)) as image:
        width, height = image.size
        if image.getexif().get(0x0112) in _TRANSPOSED_ORIENTATIONS:
            width, height = height, width
        return height, width


@contextlib.contextmanager
def _open_image(path: str) -> Iterator[Image.Image]:
    """``path`` opened by PIL, header read; a missing, empty or undecodable file raises
    :class:`ImageLoadError` (PIL's own bomb check is off: :func:`load_image`'s is explicit)."""
    if not os.path.isfile(path):
        raise ImageLoadError(f"image file not found: {path}")
    if os.path.getsize(path) == 0:
        raise ImageLoadError(f"image file is empty (0 bytes): {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                yield image
    except ImageLoadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageLoadError(f"cannot decode image {path}: {error}") from error
