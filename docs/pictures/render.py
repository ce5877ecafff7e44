"""Small, readable copies of the pictures fundus-lit writes, for the README (run by make.sh).

    python docs/pictures/render.py shrink SRC DST            # any PNG, at most 700 px wide
    python docs/pictures/render.py retrieval SRC DST         # some columns of a retrieval grid
    python docs/pictures/render.py overlay RUN_DIR DST       # pseudo_seg/overlay from the events
    python docs/pictures/render.py projector FOLDER DST      # 2-D PCA of a projector folder

Every output is at most ``--width`` (700) px wide and saved as an optimised PNG: full colour when
that is under ``--max-kb`` (150), else quantised to a 256-colour palette.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

WIDTH, MAX_KB = 700, 150


def save_small(image: Image.Image, dst: str | Path, width: int = WIDTH, max_kb: int = MAX_KB):
    """``image`` scaled down to at most ``width`` px wide, written as the smaller-than-``max_kb``
    of full-colour and palette PNG (full colour when both fit)."""
    image = image.convert("RGB")
    if image.width > width:
        height = round(image.height * width / image.width)
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    full = _png(image)
    data = full
    if len(full) > max_kb * 1024:
        palette = _png(image.quantize(colors=256, method=Image.Quantize.MEDIANCUT))
        data = min(full, palette, key=len)
    Path(dst).write_bytes(data)
    kind = "RGB" if data is full else "palette"
    print(f"{dst}: {image.width}x{image.height}, {len(data) / 1024:.0f} KB ({kind})")


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def retrieval(src: str, columns: list[int]) -> Image.Image:
    """The chosen columns of every row of a retrieval-examples grid (``fundus_lit.eval.pictures``
    geometry: query, top images, top texts)."""
    from fundus_lit.eval.pictures import CAPTION, GAP, TILE, tile_box

    full = Image.open(src).convert("RGB")
    rows = (full.height + GAP) // (TILE + CAPTION + GAP)
    out = Image.new("RGB", (len(columns) * (TILE + GAP) - GAP, full.height), "white")
    for r in range(rows):
        for c, col in enumerate(columns):
            left, top, right, _ = tile_box(r, col)
            piece = full.crop((left, top, right + 1, top + TILE + CAPTION))
            out.paste(piece, tile_box(r, c)[:2])
    return out


def overlay(run_dir: str, tag: str = "pseudo_seg/overlay") -> Image.Image:
    """The last ``tag`` image of a run's TensorBoard events, its side-by-side panels (input |
    pseudo mask | prediction, one such strip per image) stacked one strip per row under a header."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(run_dir, size_guidance={"images": 0})
    events.Reload()
    if tag not in events.Tags()["images"]:
        raise SystemExit(f"{run_dir}: no {tag!r} image (images: {events.Tags()['images']})")
    last = events.Images(tag)[-1]
    picture = Image.open(io.BytesIO(last.encoded_image_string)).convert("RGB")
    side = picture.height  # one row of strips, each 3 square panels wide
    strips = [picture.crop((x, 0, x + 3 * side, side)) for x in range(0, picture.width, 3 * side)]
    header, gap = 16, 4
    out = Image.new("RGB", (3 * side, header + len(strips) * (side + gap) - gap), "white")
    draw = ImageDraw.Draw(out)
    for i, label in enumerate(("input", "pseudo mask (red)", "decoder (green)")):
        draw.text((i * side + 3, 2), label, fill="black")
    for i, strip in enumerate(strips):
        out.paste(strip, (0, header + i * (side + gap)))
    print(f"{tag} at step {last.step}: {len(strips)} images of {side} px")
    return out


def projector(folder: str, dst: str, thumbs: int = 8) -> None:
    """A 2-D PCA of a projector folder's tensors.tsv coloured by the metadata's first category,
    with a few thumbnails from sprite.png: a still stand-in for TensorBoard's PROJECTOR tab."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    folder = Path(folder)
    emb = np.loadtxt(folder / "tensors.tsv", delimiter="\t", ndmin=2)
    with open(folder / "metadata.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    labels = [row[1] for row in rows[1:]]
    centred = emb - emb.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    explained = s[:2] ** 2 / (s**2).sum()

    classes = list(dict.fromkeys(labels))
    cmap = plt.get_cmap("tab10")
    colour = {c: cmap(i % 10) for i, c in enumerate(classes)}
    fig, ax = plt.subplots(figsize=(7, 6.2), dpi=100)
    for c in classes:
        pts = xy[[i for i, lab in enumerate(labels) if lab == c]]
        ax.scatter(pts[:, 0], pts[:, 1], s=10, color=colour[c], label=c, alpha=0.8, lw=0)

    sprite_path = folder / "sprite.png"
    if sprite_path.is_file() and thumbs:
        sprite = Image.open(sprite_path).convert("RGB")
        cols = math.ceil(math.sqrt(len(labels)))
        side = sprite.width // cols
        for i in _spread(xy, thumbs):
            r, c = divmod(i, cols)
            thumb = np.asarray(sprite.crop((c * side, r * side, (c + 1) * side, (r + 1) * side)))
            box = AnnotationBbox(
                OffsetImage(thumb, zoom=1.0),
                xy[i],
                frameon=True,
                pad=0.15,
                bboxprops={"edgecolor": colour[labels[i]], "linewidth": 2},
            )
            ax.add_artist(box)
    ax.set_xlabel(f"PC 1 ({explained[0]:.0%} of the variance)", fontsize=9)
    ax.set_ylabel(f"PC 2 ({explained[1]:.0%})", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.set_title(
        f"2-D PCA of {len(labels)} image embeddings ({folder.name}):\n"
        "a still stand-in for TensorBoard's interactive PROJECTOR tab",
        fontsize=10,
    )
    ax.legend(
        fontsize=7.5,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.11),
        ncol=2,
        frameon=False,
        markerscale=1.8,
        title="first category (metadata.tsv); framed thumbnails from sprite.png",
        title_fontsize=8,
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    save_small(Image.open(buf), dst)


def _spread(xy: np.ndarray, k: int) -> list[int]:
    """``k`` points far from each other (greedy farthest-point, from the one nearest the centre)."""
    chosen = [int(np.argmin(((xy - xy.mean(axis=0)) ** 2).sum(axis=1)))]
    dist = ((xy - xy[chosen[0]]) ** 2).sum(axis=1)
    while len(chosen) < min(k, len(xy)):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, ((xy - xy[nxt]) ** 2).sum(axis=1))
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["shrink", "retrieval", "overlay", "projector"])
    parser.add_argument("src", help="a PNG, a run directory or a projector folder")
    parser.add_argument("dst", help="the small PNG to write")
    parser.add_argument(
        "--columns", default="0,1,2,6,7", help="retrieval: tile columns kept (0 = query)"
    )
    args = parser.parse_args()
    if args.what == "shrink":
        save_small(Image.open(args.src), args.dst)
    elif args.what == "retrieval":
        save_small(retrieval(args.src, [int(c) for c in args.columns.split(",")]), args.dst)
    elif args.what == "overlay":
        save_small(overlay(args.src), args.dst)
    else:
        projector(args.src, args.dst)


if __name__ == "__main__":
    main()
