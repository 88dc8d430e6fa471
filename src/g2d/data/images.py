"""Reading image files into uint8 arrays with Pillow (imported lazily, so only image datasets need it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from g2d.errors import G2DError

MODES = {"RGB": 3, "L": 1}


def pillow() -> Any:
    """The ``PIL.Image`` module, or an error saying how to install it."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise G2DError("reading images needs Pillow: pip install pillow") from exc
    return Image


def read_image(path: Path, size: tuple[int, int], mode: str = "RGB") -> np.ndarray:
    """The image at ``path`` resized to ``size = (height, width)`` (aspect not kept), as uint8 ``[C, H, W]``."""
    if mode not in MODES:
        raise G2DError(f"image mode must be one of {', '.join(MODES)}, got {mode!r}")
    image_module = pillow()
    if not path.is_file():
        raise G2DError(f"{path}: image file not found")
    try:
        with image_module.open(path) as image:
            image = image.convert(mode).resize((size[1], size[0]), image_module.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:  # PIL.UnidentifiedImageError is an OSError
        raise G2DError(f"{path}: cannot read image ({exc})") from exc
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))
