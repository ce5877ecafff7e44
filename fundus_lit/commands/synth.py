"""``fundus-lit synth``: write the procedural fundus dataset in a real dataset's layout."""

from __future__ import annotations

from jsonargparse import ArgumentParser

from fundus_lit.core.progress import add_quiet_flag, set_quiet


def synth(
    out: str,
    n: int = 1000,
    size: int = 512,
    seed: int = 0,
    sites: int = 2,
    image_format: str = "png",
    reports: bool = False,
    masks: bool = False,
    atlas: bool = False,
) -> None:
    """Write a synthetic fundus dataset in the FLAIR CSV layout (one CSV per site) under ``out``,
    or with ``--reports`` one report CSV (``image,report,labels``) over the same images.

    Args:
        out: Output folder (the data root).
        n: Number of images.
        size: Image side in pixels.
        seed: Generator seed; the same seed writes the same dataset.
        sites: Number of camera styles, each written as its own dataset.
        image_format: ``png`` or ``jpg``.
        reports: Write ``reports.csv`` with a free-text report per image instead of the per-site
            FLAIR CSVs.
        masks: Write each image's lesion mask and ``masks.csv`` (``image,mask,categories``)
            instead, for dense transfer evaluation.
        atlas: Write ``atlas.csv`` (``image,caption``: a long atlas-style caption per image)
            instead, the expert image-caption set of two-stream recipes (KeepFIT).
    """
    from fundus_lit.synthetic import write_flair_dataset, write_report_dataset

    if atlas:
        from fundus_lit.synthetic import write_atlas_dataset

        print(write_atlas_dataset(out, n=n, size=size, seed=seed, sites=sites))
        return
    if masks:
        from fundus_lit.synthetic.writer import write_mask_dataset

        print(write_mask_dataset(out, n=n, size=size, seed=seed, sites=sites))
        return
    if reports:
        print(
            write_report_dataset(
                out, n=n, size=size, seed=seed, sites=sites, image_format=image_format
            )
        )
        return
    csvs = write_flair_dataset(
        out, n=n, size=size, seed=seed, sites=sites, image_format=image_format
    )
    for path in csvs:
        print(path)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="fundus-lit synth", description=synth.__doc__)
    parser.add_function_arguments(synth, as_group=False)
    add_quiet_flag(parser)
    return parser


def run(args: list[str]) -> None:
    options = build_parser().parse_args(args).as_dict()
    set_quiet(options.pop("quiet"))
    synth(**options)
