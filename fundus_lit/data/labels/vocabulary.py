"""The label vocabulary of multi-hot report labels: canonical dictionary names, and the 0/1 vector
of a label list over it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from fundus_lit.knowledge import KnowledgeBase, category_key


def label_vocabulary(
    names: list[str] | None = None, knowledge: list[str] | None = None
) -> list[str]:
    """The ordered label names of the multi-hot vectors: canonical dictionary names, so a label
    list written with aliases ("AMD") gives the same columns as one written with names."""
    return vocabulary_of(KnowledgeBase.load(knowledge or []), names)


def vocabulary_of(kb: KnowledgeBase, names: Sequence[str] | None) -> list[str]:
    if names is None:
        return kb.names()
    out: dict[str, str] = {}  # canonical name -> the name the user wrote
    for name in names:
        cat = kb.get(name)
        if cat is None:
            raise ValueError(
                f"label {name!r} is neither a category nor an alias of the knowledge dictionary"
            )
        if cat.name in out:
            raise ValueError(
                f"labels {out[cat.name]!r} and {name!r} are the same category {cat.name!r}"
            )
        out[cat.name] = name
    return list(out)


def multi_hot(labels: Iterable[str], vocabulary: Sequence[str]) -> tuple[float, ...]:
    """The 0/1 vector of ``labels`` over ``vocabulary``; an unknown label is an error rather than
    a silently dropped column."""
    index = {category_key(name): i for i, name in enumerate(vocabulary)}
    out = [0.0] * len(vocabulary)
    for label in labels:
        i = index.get(category_key(label))
        if i is None:
            shown = ", ".join(vocabulary[:8]) + (", ..." if len(vocabulary) > 8 else "")
            raise KeyError(
                f"label {label!r} is not in the label vocabulary "
                f"({len(vocabulary)} labels: {shown})"
            )
        out[i] = 1.0
    return tuple(out)
