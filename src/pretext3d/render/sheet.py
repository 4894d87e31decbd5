"""Contact sheets: views of one or more objects tiled into one PNG, a caption per row."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pretext3d.utils.io import atomic_path

__all__ = ["contact_sheet", "save_contact_sheet"]

_CAPTION = 14  # pixels of caption strip above each row


def contact_sheet(rows: list[np.ndarray], captions: list[str] | None = None, columns: int | None = None,
                  gap: int = 2) -> np.ndarray:
    """Tile image rows into one RGB picture.

    rows: per object, (V, H, W, 3) or (V, H, W) uint8 views (all the same H, W); each object
    fills ``columns`` tiles per line (all its views by default), wrapping onto more lines.
    Returns (H_total, W_total, 3) uint8 on a light grey background.
    """
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("nothing to put on the contact sheet")
    height, width = rows[0].shape[1:3]
    columns = min(columns or 10**9, max(len(r) for r in rows))
    lines = [(i, r[j:j + columns]) for i, r in enumerate(rows) for j in range(0, len(r), columns)]
    tile_h, tile_w = height + gap, width + gap
    size = (columns * tile_w + gap, len(lines) * (tile_h + _CAPTION) + gap)
    sheet = Image.new("RGB", size, (235, 235, 235))
    draw = ImageDraw.Draw(sheet)
    y = gap
    previous = -1
    for obj, views in lines:
        if captions and obj != previous:
            draw.text((gap + 2, y), captions[obj], fill=(20, 20, 20))
        y += _CAPTION
        previous = obj
        for c, view in enumerate(views):
            tile = view if view.ndim == 3 else np.repeat(view[..., None], 3, axis=2)
            sheet.paste(Image.fromarray(tile), (gap + c * tile_w, y))
        y += tile_h
    return np.asarray(sheet)


def save_contact_sheet(path: str | Path, rows: list[np.ndarray], captions: list[str] | None = None,
                       columns: int | None = None) -> Path:
    """Write ``contact_sheet(...)`` as a PNG (atomically) and return its path."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(contact_sheet(rows, captions, columns)).save(tmp, format="PNG")
    return path
