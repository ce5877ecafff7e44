"""Zero-shot classification with class prototypes from the domain-knowledge dictionary."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fundus_lit.data.text import collapse_spaces
from fundus_lit.eval.metrics import classification_metrics
from fundus_lit.knowledge import KnowledgeBase, category_key
from fundus_lit.models.dual_encoder import DualEncoder


class ZeroShot:
    """Prototype zero-shot classifier and its evaluation (docs/objectives.md §2 and §6).

    The prototype of class k averages the normalised embeddings of ``template`` filled with k and
    each of its dictionary descriptions; ``renormalize`` L2-normalises the average (false
    reproduces the original FLAIR behaviour). A sample's class is the first category of its record.

    Args:
        classes: Class names, in order; matched to record categories by the normalised key.
        knowledge: Extra knowledge YAML files over the built-in dictionary.
        renormalize: L2-normalise each prototype.
        template: Prompt with a ``[CLS]`` placeholder.
    """

    def __init__(
        self,
        classes: list[str],
        knowledge: list[str] | None = None,
        renormalize: bool = True,
        template: str = "A fundus photograph of [CLS]",
    ) -> None:
        if len(classes) < 2:
            raise ValueError(f"zero-shot needs at least 2 classes, got {classes}")
        keys = [category_key(c) for c in classes]
        if len(set(keys)) != len(keys):
            raise ValueError(f"zero-shot classes repeat after normalisation: {classes}")
        self.classes, self.keys = list(classes), keys
        self.knowledge = KnowledgeBase.load(knowledge or [])
        self.renormalize, self.template = renormalize, template

    def prompts(self, name: str) -> list[str]:
        entry = self.knowledge.get(name)
        texts = [name, *(entry.descriptions if entry else ())]
        return [collapse_spaces(self.template.replace("[CLS]", t)) for t in texts]

    @torch.no_grad()
    def prototypes(self, encoder: DualEncoder, tokenizer, max_length: int = 77) -> Tensor:
        """(K, D) class prototypes, on the encoder's device."""
        device = encoder.logit_scale.device
        was_training = encoder.training
        encoder.eval()
        rows = []
        for name in self.classes:
            tok = tokenizer(
                self.prompts(name),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            emb = encoder.encode_text(tok["input_ids"].to(device), tok["attention_mask"].to(device))
            mean = emb["emb"].mean(dim=0)
            rows.append(F.normalize(mean, dim=-1) if self.renormalize else mean)
        encoder.train(was_training)
        return torch.stack(rows)

    def targets(self, record_categories: Sequence[Sequence[str]]) -> Tensor:
        """Class index of each sample (first category); -1 when it is not one of the classes."""
        index = {k: i for i, k in enumerate(self.keys)}
        return torch.tensor(
            [index.get(category_key(cats[0]), -1) if cats else -1 for cats in record_categories],
            dtype=torch.long,
        )

    def evaluate(
        self, image_emb: Tensor, targets: Tensor, prototypes: Tensor, scale: Tensor | float
    ) -> dict:
        """Metrics over the samples whose class is known, with counts and per-class recall."""
        known = targets >= 0
        logits = scale * image_emb[known].float() @ prototypes.float().t()
        labels = targets[known].to(logits.device)
        result: dict = classification_metrics(logits, labels)
        preds = logits.argmax(dim=1).cpu()
        labels = labels.cpu()
        result["per_class_recall"] = {
            name: float((preds[labels == k] == k).float().mean()) if (labels == k).any() else None
            for k, name in enumerate(self.classes)
        }
        # per image, in test order: what a paired bootstrap over images (fundus-lit ablate) needs
        result["targets"] = labels.tolist()
        result["predictions"] = preds.tolist()
        result["n"] = int(known.sum())
        result["skipped"] = int((~known).sum())
        result["classes"] = self.classes
        return result


def format_table(result: dict, title: str = "zero-shot") -> str:
    """A small markdown table of the headline metrics and per-class recall."""
    lines = [f"{title}: {result['n']} images, {len(result['classes'])} classes"]
    lines += ["", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {result[k]:.4f} |" for k in ("aca", "kappa", "f1", "auc")]
    lines += ["", "| class | recall |", "|---|---|"]
    for name, recall in result["per_class_recall"].items():
        lines.append(f"| {name} | {'-' if recall is None else f'{recall:.3f}'} |")
    return "\n".join(lines)
