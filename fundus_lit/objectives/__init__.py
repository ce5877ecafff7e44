"""Training objectives: pure functions in :mod:`.functional`, modules in one file each."""

from fundus_lit.objectives.base import Objective, ObjectiveOutput
from fundus_lit.objectives.captioning import CaptionObjective
from fundus_lit.objectives.clip import CLIPObjective
from fundus_lit.objectives.flair import FLAIRObjective
from fundus_lit.objectives.keepfit import RevisionObjective
from fundus_lit.objectives.pseudo_seg import PseudoSegObjective
from fundus_lit.objectives.siglip import SigLIPObjective
from fundus_lit.objectives.wsc import WSCObjective

__all__ = [
    "CLIPObjective",
    "CaptionObjective",
    "FLAIRObjective",
    "Objective",
    "ObjectiveOutput",
    "PseudoSegObjective",
    "RevisionObjective",
    "SigLIPObjective",
    "WSCObjective",
]
