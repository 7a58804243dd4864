"""Frames -> animated GIF, with Pillow (no ImageMagick)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def write_gif(frames: Sequence[np.ndarray], path: Path, fps: float) -> None:
    """Write RGB(A) frames, in order, as a GIF that loops forever.

    The file appears whole or not at all (written beside it, then renamed). Pillow
    merges identical consecutive frames, so a GIF of N distinct frames has N frames.

    Parameters
    ----------
    frames : sequence of ndarray
        (height, width, 3 or 4) uint8 images, all the same size.
    path : Path
        Where to write the GIF.
    fps : float
        Frames per second.
    """
    from PIL import Image

    if not frames:
        raise ValueError("no frames to animate")
    images = [
        Image.fromarray(np.ascontiguousarray(frame[..., :3])).convert(
            "P", palette=Image.Palette.ADAPTIVE, colors=256
        )
        for frame in frames
    ]
    path.parent.mkdir(parents=True, exist_ok=True)  # --gif PATH may name new folders
    partial = path.with_name(f".{path.name}.partial")
    images[0].save(
        partial,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(1, round(1000 / fps)),
        loop=0,
    )
    partial.replace(path)
