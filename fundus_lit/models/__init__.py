"""Encoders: timm image tower, transformers text tower, heads and the dual encoder."""

from fundus_lit.models.dual_encoder import DualEncoder
from fundus_lit.models.outputs import ModelOutputs
from fundus_lit.models.text import TextConfig, TextTower
from fundus_lit.models.vision import VisionConfig, VisionTower

__all__ = ["DualEncoder", "ModelOutputs", "TextConfig", "TextTower", "VisionConfig", "VisionTower"]
