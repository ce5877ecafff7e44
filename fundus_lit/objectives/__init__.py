"""Training objectives: pure functions in :mod:`.functional`, modules in one file each."""

from fundus_lit.objectives.base import Objective, ObjectiveOutput
from fundus_lit.objectives.clip import CLIPObjective

__all__ = ["CLIPObjective", "Objective", "ObjectiveOutput"]
