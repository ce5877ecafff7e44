"""Can the dense transfer evaluation tell encoders apart? Dice of decoders trained on one frozen
encoder with each setting of the evaluation (mask count, steps, probe width and stride, lesion
weight), and the same with the encoder's vision tower re-initialised (the floor any pretraining
must beat). Settings run one after another; each prints its Dice and seconds.

The evaluation's defaults (``SegmentationConfig``) were chosen from this table: an evaluation
whose decoder predicts nothing scores Dice 0 on every encoder and compares none.

    python benchmarks/segmentation_eval.py --ckpt RUN/checkpoints/last.ckpt \
        [--settings 40:500:10:64:1 4:500:10:64:1 40:50:0:256:1] [--random-encoder]

A setting is ``masks:steps:pos_weight:width:stride`` (pos_weight 1: unweighted BCE). Data: the
400 training and 100 test images of recipes/studies/eval/segmentation.yaml.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np
import torch

from fundus_lit.data import SyntheticSource
from fundus_lit.eval import segmentation as seg
from fundus_lit.eval.loading import load_encoder

DEFAULT_SETTINGS = ["40:50:1:256:1", "40:500:1:64:2", "40:500:10:64:2", "40:500:1:64:1"]
DEFAULT_SETTINGS += ["40:500:10:64:1", "4:500:1:64:1", "4:500:10:64:1"]


def reinitialise(module: torch.nn.Module) -> None:
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS)
    ap.add_argument("--random-encoder", action="store_true", help="re-initialise the vision tower")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    encoder, hp = load_encoder(args.ckpt)
    if args.random_encoder:
        reinitialise(encoder.vision)
    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    train_src = SyntheticSource(n=400, size=160, seed=0, offset=4_000_000, masks=True)
    test_src = SyntheticSource(n=100, size=160, seed=0, offset=5_000_000, masks=True)
    train = [(train_src, r) for r in train_src.load()]
    test = [(test_src, r) for r in test_src.load()]
    size = hp["image_size"]
    test_bank = seg.FeatureBank(encoder, seg.MaskDataset(test, size, True), 16, 2048, 0)
    encoder_name = "random" if args.random_encoder else "trained"
    print(f"encoder: {encoder_name} ({args.ckpt}), image size {size}")
    print("masks  steps  pos_weight  width  stride    dice  per-image  seconds")
    for setting in args.settings:
        masks, steps, pos_weight, width, stride = (float(v) for v in setting.split(":"))
        cfg = dataclasses.replace(
            seg.SegmentationConfig(),
            min_steps=int(steps),
            epochs=1,
            pos_weight=pos_weight,
            decoder_width=int(width),
            decoder_stride=int(stride),
        )
        rng = np.random.default_rng(cfg.seed)  # the evaluation's draw of its first fraction
        subset = [train[i] for i in sorted(rng.permutation(len(train))[: int(masks)])]
        start = time.perf_counter()
        bank = seg.FeatureBank(encoder, seg.MaskDataset(subset, size, True), 8, 2048, 0)
        decoder = seg.make_decoder(encoder, cfg, None)
        seg.train_decoder(decoder, bank, size, cfg)
        scores = seg.test_decoder(decoder, test_bank, size)
        print(
            f"{int(masks):>5}  {int(steps):>5}  {pos_weight:>10g}"
            f"  {int(width):>5}  {int(stride):>6}"
            f"  {scores['dice']:.4f}  {scores['dice_per_image']:>9.4f}"
            f"  {time.perf_counter() - start:>7.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
