"""The built-in fundus knowledge dictionary, user overrides and schema validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from fundus_lit.knowledge import (
    BUILTIN_PATH,
    Category,
    KnowledgeBase,
    KnowledgeError,
    category_key,
)
from fundus_lit.synthetic import CATEGORIES


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return KnowledgeBase.load()


def test_builtin_loads(kb: KnowledgeBase) -> None:
    assert BUILTIN_PATH.name == "fundus.yaml" and BUILTIN_PATH.is_file()
    assert len(kb) >= 60
    assert len(kb.names()) == len(kb) == len(list(kb))
    for cat in kb:
        assert isinstance(cat, Category)
        assert cat.name == cat.name.lower() and "-" not in cat.name
        assert 1 <= len(cat.descriptions) <= 6, cat.name
        assert all(d.strip() for d in cat.descriptions)


def test_synthetic_categories_present(kb: KnowledgeBase) -> None:
    for name in CATEGORIES:
        assert name in kb, name
        cat = kb.get(name)
        assert cat is not None and cat.name == name
        assert 3 <= len(cat.descriptions) <= 6, name


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("Age-related macular degeneration.", "age related macular degeneration"),
        ("AMD", "age related macular degeneration"),
        ("ARMD", "age related macular degeneration"),
        ("diabetic macular oedema", "diabetic macular edema"),
        ("DME", "diabetic macular edema"),
        (
            "Mild non-proliferative diabetic retinopathy",
            "mild non proliferative diabetic retinopathy",
        ),
        ("NPDR", "non proliferative diabetic retinopathy"),
        ("PDR", "proliferative diabetic retinopathy"),
        ("papilloedema", "optic disc edema"),
        ("Haemorrhages", "hemorrhages"),
        ("CRVO", "central retinal vein occlusion"),
        ("tessellated fundus", "tessellation"),
        ("laser spot", "laser scars"),
        ("Normal fundus", "normal"),
        ("pathological myopia", "pathologic myopia"),
    ],
)
def test_lookup_by_alias_and_spelling(kb: KnowledgeBase, query: str, name: str) -> None:
    cat = kb.get(query)
    assert cat is not None and cat.name == name
    assert query in kb


def test_unknown_lookup(kb: KnowledgeBase) -> None:
    assert kb.get("no such disease") is None
    assert "no such disease" not in kb


def test_category_key_reexported() -> None:
    assert category_key("Age-related  Macular degeneration.") == "age related macular degeneration"


def _write(tmp_path: Path, text: str, name: str = "user.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_user_override_and_addition(tmp_path: Path, kb: KnowledgeBase) -> None:
    user = _write(
        tmp_path,
        """
version: 1
categories:
  - name: Glaucoma
    descriptions: ["A huge white cup."]
    aliases: [my glaucoma]
  - name: star disease
    descriptions: ["Star-shaped spots."]
    aliases: [sd]
""",
    )
    merged = KnowledgeBase.load([user])
    assert len(merged) == len(kb) + 1
    g = merged.get("glaucoma")
    assert g is not None and g.descriptions == ("A huge white cup.",)
    assert merged.get("my glaucoma") is g
    assert merged.get("gon") is None  # the replaced entry's aliases go with it
    assert merged.names().index("glaucoma") == kb.names().index("glaucoma")
    assert merged.get("SD").name == "star disease"
    only = KnowledgeBase.load([user], builtin=False)
    assert only.names() == ["glaucoma", "star disease"]


def test_later_user_file_wins(tmp_path: Path) -> None:
    a = _write(tmp_path, "categories: [{name: x, descriptions: [first]}]", "a.yaml")
    b = _write(tmp_path, "categories: [{name: X., descriptions: [second]}]", "b.yaml")
    kb = KnowledgeBase.load([a, b], builtin=False)
    assert len(kb) == 1 and kb.get("x").descriptions == ("second",)


def test_user_alias_clash_with_other_category(tmp_path: Path) -> None:
    user = _write(tmp_path, "categories: [{name: foo, descriptions: [d], aliases: [AMD]}]")
    with pytest.raises(KnowledgeError) as e:
        KnowledgeBase.load([user])
    msg = str(e.value)
    assert "user.yaml" in msg and "foo" in msg and "aliases" in msg
    assert "age related macular degeneration" in msg


def test_constructor_rejects_duplicates() -> None:
    cats = [Category("a", ("x",)), Category("A.", ("y",))]
    with pytest.raises(KnowledgeError):
        KnowledgeBase(cats)


_SEVEN = "[" + ", ".join(f"d{i}" for i in range(7)) + "]"
# (yaml text, strings the message must contain besides the file name)
_BAD = {
    "missing name": ("categories:\n  - descriptions: [a]\n", ["categories[0]", "name"]),
    "empty name": ("categories:\n  - {name: ' ', descriptions: [a]}\n", ["categories[0]", "name"]),
    "missing descriptions": ("categories:\n  - name: foo\n", ["foo", "descriptions"]),
    "descriptions not list": (
        "categories:\n  - {name: foo, descriptions: just one}\n",
        ["foo", "descriptions"],
    ),
    "descriptions empty": (
        "categories:\n  - {name: foo, descriptions: []}\n",
        ["foo", "descriptions"],
    ),
    "too many descriptions": (
        f"categories:\n  - {{name: foo, descriptions: {_SEVEN}}}\n",
        ["foo", "descriptions", "6"],
    ),
    "description not string": (
        "categories:\n  - {name: foo, descriptions: [ok, 3]}\n",
        ["foo", "descriptions"],
    ),
    "description empty string": (
        "categories:\n  - {name: foo, descriptions: [ok, '']}\n",
        ["foo", "descriptions"],
    ),
    "aliases not list": (
        "categories:\n  - {name: foo, descriptions: [a], aliases: bar}\n",
        ["foo", "aliases"],
    ),
    "alias empty": (
        "categories:\n  - {name: foo, descriptions: [a], aliases: [bar, '']}\n",
        ["foo", "aliases"],
    ),
    "unknown field": (
        "categories:\n  - {name: foo, descriptons: [a]}\n",
        ["foo", "descriptons", "name, descriptions, aliases"],
    ),
    "duplicate name": (
        "categories:\n  - {name: foo, descriptions: [a]}\n  - {name: Foo., descriptions: [b]}\n",
        ["foo", "name", "duplicate"],
    ),
    "alias equals other name": (
        "categories:\n  - {name: foo, descriptions: [a]}\n"
        "  - {name: bar, descriptions: [b], aliases: [FOO]}\n",
        ["foo", "bar", "aliases"],
    ),
    "alias equals other alias": (
        "categories:\n  - {name: foo, descriptions: [a], aliases: [baz]}\n"
        "  - {name: bar, descriptions: [b], aliases: [Baz]}\n",
        ["foo", "bar", "aliases", "baz"],
    ),
    "category not mapping": ("categories:\n  - just a string\n", ["categories[0]"]),
    "top level not mapping": ("- a\n- b\n", ["top level", "mapping"]),
    "missing categories": ("version: 1\n", ["categories"]),
    "categories not list": ("categories: {name: foo}\n", ["categories", "list"]),
    "unsupported version": ("version: 2\ncategories: []\n", ["version", "2"]),
    "unknown top field": ("version: 1\ncategories: []\nextra: 1\n", ["extra"]),
    "invalid yaml": ("categories: [unclosed\n", ["YAML"]),
}


@pytest.mark.parametrize("case", sorted(_BAD))
def test_validation_errors(tmp_path: Path, case: str) -> None:
    text, expected = _BAD[case]
    path = _write(tmp_path, text, "bad_knowledge.yaml")
    with pytest.raises(KnowledgeError) as e:
        KnowledgeBase.load([path], builtin=False)
    msg = str(e.value)
    assert "bad_knowledge.yaml" in msg, msg
    for part in expected:
        assert part in msg, (part, msg)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeError, match="nowhere.yaml"):
        KnowledgeBase.load([tmp_path / "nowhere.yaml"])


def test_error_is_value_error() -> None:
    assert issubclass(KnowledgeError, ValueError)
