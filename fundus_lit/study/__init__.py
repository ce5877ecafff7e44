"""Ablation studies (``fundus-lit ablate``): a study file names cells (recipes with overrides),
seeds, a scale and evaluations; every cell x seed is an ordinary ``fit`` + ``evaluate`` run, and the
study's statistics compare each cell with the baseline."""

from fundus_lit.study.spec import Cell, Evaluation, Metric, Scale, Study, load_study

__all__ = ["Cell", "Evaluation", "Metric", "Scale", "Study", "load_study"]
