"""Labels from free-text reports: the label vocabulary (:mod:`.vocabulary`), the phrase tables
and normalisation reports go through (:mod:`.phrases`), and the rule-based extractor
(:mod:`.extractor`) that turns a report into a multi-hot vector over the vocabulary."""

from fundus_lit.data.labels.extractor import Extraction, LabelExtractor
from fundus_lit.data.labels.vocabulary import label_vocabulary, multi_hot, vocabulary_of

__all__ = ["Extraction", "LabelExtractor", "label_vocabulary", "multi_hot", "vocabulary_of"]
