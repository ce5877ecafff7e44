"""``fundus-lit zeroshot``: ``evaluate`` with the zero-shot task only."""

from __future__ import annotations

from jsonargparse import ArgumentParser

from fundus_lit.commands import evaluate


def build_parser() -> ArgumentParser:
    parser = evaluate.build_parser("fundus-lit zeroshot")
    parser.set_defaults(tasks="zeroshot")
    return parser


def run(args: list[str]) -> None:
    evaluate.run(args, build_parser())
