"""Pictures of evaluation results: image and text tiles, framed green or red, laid out in grids.

Shared by ``fundus-lit search`` (a strip of a photograph's nearest cases), ``fundus-lit
evaluate`` and the retrieval callback (retrieval examples: a query, its top images, its top
texts). Only the few images drawn are opened, through the source that made their record.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from fundus_lit.core.errors import DataError
from fundus_lit.data.records import FundusRecord
from fundus_lit.data.sources import Source
from fundus_lit.data.transforms import fov_crop, pad_resize

GREEN, RED, GREY = (0, 170, 0), (220, 0, 0), (136, 136, 136)
FRAME = 4  # frame width of a relevant (green) or irrelevant (red) hit, in pixels
CAPTION = 40  # three caption lines under each tile
GAP = 4  # between tiles
TILE = 128  # default tile side

Item = tuple[Source, FundusRecord]


def tile(
    image: Image.Image | str | Path | None,
    size: int = TILE,
    caption: str = "",
    frame: tuple[int, int, int] | None = None,
) -> Image.Image:
    """An image (or a path to one) fitted into a ``size`` square above a caption (three lines,
    long ones wrapped); an unreadable or missing image is a grey square."""
    out = Image.new("RGB", (size, size + CAPTION), "white")
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as opened:
                image = opened.convert("RGB")
        except (OSError, ValueError):
            image = None
    if image is None:
        ImageDraw.Draw(out).rectangle([0, 0, size - 1, size - 1], fill=GREY)
    else:
        image = image.convert("RGB")
        image.thumbnail((size, size))
        out.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return _finish(out, size, caption, frame)


def text_tile(
    text: str, size: int = TILE, caption: str = "", frame: tuple[int, int, int] | None = None
) -> Image.Image:
    """A text (a report, a caption) wrapped into a ``size`` square, cut where it overflows."""
    out = Image.new("RGB", (size, size + CAPTION), "white")
    draw = ImageDraw.Draw(out)
    draw.rectangle([0, 0, size - 1, size - 1], fill=(244, 244, 240))
    inner = size - 2 * FRAME - 6
    lines = textwrap.wrap(" ".join(text.split()), max(8, inner // 6)) or ["(empty)"]
    fits = max(1, inner // 11)
    if len(lines) > fits:
        lines = [*lines[: fits - 1], lines[fits - 1][:-3] + "..."]
    for row, line in enumerate(lines):
        draw.text((FRAME + 3, FRAME + 3 + 11 * row), line, fill="black")
    return _finish(out, size, caption, frame)


def _finish(
    out: Image.Image, size: int, caption: str, frame: tuple[int, int, int] | None
) -> Image.Image:
    draw = ImageDraw.Draw(out)
    if frame is not None:
        draw.rectangle([0, 0, size - 1, size - 1], outline=frame, width=FRAME)
    width = max(8, size // 6)
    lines = [cut for line in caption.split("\n") for cut in textwrap.wrap(line, width) or [""]]
    for row, text in enumerate(lines[:3]):
        draw.text((3, size + 2 + 12 * row), text[:width], fill="black")
    return out


def grid(rows: Sequence[Sequence[Image.Image]], size: int = TILE) -> Image.Image:
    """Tiles of side ``size`` in rows (rows may differ in length), on white."""
    cols = max((len(row) for row in rows), default=1)
    canvas = Image.new(
        "RGB", (cols * (size + GAP) - GAP, len(rows) * (size + CAPTION + GAP) - GAP), "white"
    )
    for r, row in enumerate(rows):
        for c, piece in enumerate(row):
            canvas.paste(piece, tile_box(r, c, size)[:2])
    return canvas


def tile_box(row: int, col: int, size: int = TILE) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of the picture square of tile (row, col) in :func:`grid`;
    right and bottom inclusive."""
    left, top = col * (size + GAP), row * (size + CAPTION + GAP)
    return left, top, left + size - 1, top + size - 1


def open_item(item: Item, size: int = TILE, crop_fov: bool = True) -> Image.Image | None:
    """A record's image as training prepares it (aperture crop, padded square), at ``size``;
    None when its source cannot open it."""
    source, record = item
    try:
        image = source.open_image(record).convert("RGB")
    except (DataError, OSError, SyntaxError, ValueError):
        return None
    return pad_resize(fov_crop(image) if crop_fov else image, size)


def categories_of(record: FundusRecord) -> str:
    return ", ".join(record.categories) or "-"


def retrieval_grid(
    examples: Sequence,
    rows: Sequence[Item],
    gallery: Sequence[Item] | None = None,
    texts: Sequence[str] | None = None,
    size: int = TILE,
    crop_fov: bool = True,
) -> Image.Image:
    """One row per :class:`~fundus_lit.eval.retrieval_tasks.Example`: the query, its top
    images (``i2i``), then its top texts (``i2t``), each hit framed green when relevant by the
    metrics' rule and red when not, captioned with its rank, score and categories.

    Args:
        examples: From :func:`~fundus_lit.eval.retrieval_tasks.retrieval_examples`.
        rows: The items the example rows index (the evaluated split, in feature order).
        gallery: The items image hits index; ``rows`` when the images were retrieved
            leave-one-out among the rows.
        texts: The text of each row (text hits index them).
    """
    gallery = rows if gallery is None else gallery
    lines = []
    for example in examples:
        item = rows[example.query]
        caption = f"query {item[1].dataset}\n{categories_of(item[1])}"
        line = [tile(open_item(item, size, crop_fov), size, caption)]
        for rank, (i, score, relevant) in enumerate(example.images, 1):
            hit = gallery[i]
            caption = f"i2i #{rank} {score:.3f}\n{categories_of(hit[1])}"
            colour = GREEN if relevant else RED
            line.append(tile(open_item(hit, size, crop_fov), size, caption, colour))
        for rank, (i, score, relevant) in enumerate(example.texts, 1):
            caption = f"i2t #{rank} {score:.3f}\n{categories_of(rows[i][1])}"
            text = texts[i] if texts is not None else ""
            line.append(text_tile(text, size, caption, GREEN if relevant else RED))
        lines.append(line)
    return grid(lines, size)


def examples_picture(
    items: Sequence[Item],
    image_emb,
    categories: Sequence[Sequence[str]] | None,
    queries: int = 4,
    k: int = 5,
    text_emb=None,
    texts: Sequence[str] | None = None,
    gallery: Sequence[Item] | None = None,
    gallery_emb=None,
    relevance: str = "categories",
    device: str = "auto",
    crop_fov: bool = True,
) -> Image.Image:
    """Retrieval examples of ``queries`` rows spread evenly over ``items`` (the same rows every
    time): each one's top ``k`` images (from ``gallery``, else leave-one-out among ``items``;
    ``categories=None``: none) and top ``k`` texts (among the rows' own; ``text_emb=None``:
    none), drawn by :func:`retrieval_grid`."""
    from fundus_lit.eval.retrieval_tasks import example_queries, retrieval_examples

    gallery_categories = None if gallery is None else [r.categories for _, r in gallery]
    examples = retrieval_examples(
        example_queries(len(items), queries),
        image_emb,
        categories,
        k,
        text_emb,
        texts if text_emb is not None else None,
        gallery_emb,
        gallery_categories,
        relevance,
        device,
    )
    return retrieval_grid(examples, items, gallery, texts, crop_fov=crop_fov)


def split_examples(cfg, dm, split: str, test, train=None) -> Image.Image:
    """The retrieval examples of ``fundus-lit evaluate``: ``cfg.image_queries`` query rows of
    the encoded ``split`` (features ``test``), their images retrieved from the training split
    (features ``train``) or leave-one-out as the i2i metrics are, their texts among the split's.

    Args:
        cfg: The evaluation config's ``retrieval`` section.
        dm: The data module whose splits the features were encoded from.
    """
    i2i = "i2i" in cfg.tasks
    i2t = "i2t" in cfg.tasks and test.text_emb is not None
    gallery = train if i2i and train is not None else None
    return examples_picture(
        encoded_items(dm.splits[split], test.records),
        test.image_emb,
        [r.categories for r in test.records] if i2i else None,
        cfg.image_queries,
        cfg.image_k,
        test.text_emb if i2t else None,
        test.texts,
        encoded_items(dm.splits["train"], gallery.records) if gallery else None,
        gallery.image_emb if gallery else None,
        cfg.case_relevance,
        cfg.device,
        dm.crop_fov,
    )


def encoded_items(items: Sequence[Item], records: Sequence[FundusRecord]) -> list[Item]:
    """(source, record) of each encoded record (unreadable ones skipped leave gaps)."""
    source_of = {id(record): source for source, record in items}
    return [(source_of[id(record)], record) for record in records]
