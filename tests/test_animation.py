from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageSequence

from corrdiff_tools.animation import write_gif


def test_gif_has_every_frame_in_order(tmp_path: Path) -> None:
    levels = [0, 60, 120, 180, 240]
    frames = [np.full((20, 30, 4), level, dtype=np.uint8) for level in levels]
    write_gif(frames, tmp_path / "a.gif", fps=4)
    with Image.open(tmp_path / "a.gif") as gif:
        got = [int(np.asarray(frame.convert("L"))[0, 0]) for frame in ImageSequence.Iterator(gif)]
        assert gif.info["duration"] == 250 and gif.info["loop"] == 0
    assert got == pytest.approx(levels, abs=3)
    assert not list(tmp_path.glob(".*partial"))


def test_no_frames_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no frames"):
        write_gif([], tmp_path / "a.gif", fps=1)
    assert not (tmp_path / "a.gif").exists()
