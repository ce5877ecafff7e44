"""Domain knowledge: what each fundus category looks like in a colour photograph.

The built-in dictionary (``fundus.yaml`` next to this file) gives every category a canonical
name, 1-6 visual descriptions (used as prompts and as FLAIR/KeepFIT-style expert knowledge)
and aliases (used to map report text and dataset spellings onto one label). Users extend or
override it with their own YAML files of the same schema::

    version: 1
    categories:
      - name: glaucoma
        descriptions: ["..."]
        aliases: [glaucomatous optic neuropathy]

Every look-up goes through :func:`category_key`, so "Age-related macular degeneration." and
"age related macular degeneration" are the same category.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .keys import category_key

__all__ = ["BUILTIN_PATH", "Category", "KnowledgeBase", "KnowledgeError", "category_key"]

BUILTIN_PATH = Path(__file__).with_name("fundus.yaml")
SUPPORTED_VERSIONS = (1,)
MAX_DESCRIPTIONS = 6
_FIELDS = ("name", "descriptions", "aliases")
_TOP_FIELDS = ("version", "categories")


class KnowledgeError(ValueError):
    """A knowledge file or category is invalid; the message names the file, category and field."""


@dataclass(frozen=True)
class Category:
    """One class: its canonical name, what it looks like, and how else it is written."""

    name: str
    descriptions: tuple[str, ...]
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # accept lists from callers while keeping the dataclass hashable
        object.__setattr__(self, "descriptions", tuple(self.descriptions))
        object.__setattr__(self, "aliases", tuple(self.aliases))

    @property
    def key(self) -> str:
        return category_key(self.name)

    def all_keys(self) -> list[str]:
        """The name's key first, then every distinct alias key."""
        out = [self.key]
        for alias in self.aliases:
            k = category_key(alias)
            if k not in out:
                out.append(k)
        return out


def _where(source: str | None, label: str, field: str | None = None) -> str:
    parts = [p for p in (source, label) if p]
    if field:
        parts.append(f"field '{field}'")
    return ": ".join(parts)


def _label(cat: Category | str) -> str:
    return f"category '{cat.name if isinstance(cat, Category) else cat}'"


class KnowledgeBase:
    """An ordered set of categories, addressable by the key of any name or alias."""

    def __init__(self, categories: Iterable[Category]) -> None:
        self._cats: dict[str, Category] = {}
        self._index: dict[str, str] = {}  # any key -> the owning category's name key
        for cat in categories:
            if cat.key in self._cats:
                raise KnowledgeError(
                    f"{_label(cat)}: field 'name': duplicate of {_label(self._cats[cat.key])}"
                )
            self._add(cat)

    def _owner_clash(self, cat: Category) -> tuple[str, Category] | None:
        """The first key of `cat` already owned by a category with another name."""
        for k in cat.all_keys():
            owner = self._index.get(k)
            if owner is not None and owner != cat.key:
                return k, self._cats[owner]
        return None

    def _add(self, cat: Category, source: str | None = None) -> None:
        """Insert or replace (same name key) `cat`; alias clashes with others are errors."""
        old = self._cats.get(cat.key)
        clash = self._owner_clash(cat)
        if clash:
            k, other = clash
            field = "name" if k == cat.key else "aliases"
            raise KnowledgeError(
                _where(source, _label(cat), field)
                + f": '{k}' is already a name or alias of {_label(other)}"
            )
        if old is not None:
            for k in old.all_keys():
                if self._index.get(k) == old.key:
                    del self._index[k]
        self._cats[cat.key] = cat  # replacing keeps the original position
        for k in cat.all_keys():
            self._index[k] = cat.key

    @classmethod
    def load(cls, paths: Sequence[str | Path] = (), builtin: bool = True) -> KnowledgeBase:
        """Built-in dictionary (unless ``builtin=False``), then each user YAML in order: a
        category whose name (by :func:`category_key`) already exists is replaced by the user's
        entry; new ones are added."""
        if isinstance(paths, (str, Path)):
            paths = [paths]
        kb = cls(())
        for path in ([BUILTIN_PATH] if builtin else []) + [Path(p) for p in paths]:
            for cat in load_file(path):
                kb._add(cat, str(path))
        return kb

    def get(self, name: str) -> Category | None:
        owner = self._index.get(category_key(name))
        return None if owner is None else self._cats[owner]

    def __getitem__(self, name: str) -> Category:
        cat = self.get(name)
        if cat is None:
            raise KeyError(name)
        return cat

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and category_key(name) in self._index

    def __iter__(self) -> Iterator[Category]:
        return iter(list(self._cats.values()))

    def __len__(self) -> int:
        return len(self._cats)

    def names(self) -> list[str]:
        return [c.name for c in self._cats.values()]

    def __repr__(self) -> str:
        return f"KnowledgeBase({len(self)} categories)"


def _strings(value: Any, where: str, allow_empty_list: bool) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise KnowledgeError(f"{where}: must be a list of strings, got {type(value).__name__}")
    if not value and not allow_empty_list:
        raise KnowledgeError(f"{where}: must not be empty")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise KnowledgeError(f"{where}: item {i} must be a non-empty string, got {item!r}")
    return tuple(" ".join(item.split()) for item in value)


def _parse_category(entry: Any, i: int, src: str) -> Category:
    label = f"categories[{i}]"
    if not isinstance(entry, dict):
        raise KnowledgeError(f"{src}: {label}: must be a mapping, got {type(entry).__name__}")
    name = entry.get("name")
    if not isinstance(name, str) or not category_key(name):
        raise KnowledgeError(_where(src, label, "name") + ": missing or empty")
    name = " ".join(name.split()).lower()
    label = f"{label} (category '{name}')"
    unknown = sorted(str(k) for k in entry if k not in _FIELDS)
    if unknown:
        raise KnowledgeError(
            _where(src, label, unknown[0])
            + f": unknown field(s) {unknown}; allowed fields are {', '.join(_FIELDS)}"
        )
    if "descriptions" not in entry:
        raise KnowledgeError(_where(src, label, "descriptions") + ": missing")
    where = _where(src, label, "descriptions")
    descriptions = _strings(entry["descriptions"], where, allow_empty_list=False)
    if len(descriptions) > MAX_DESCRIPTIONS:
        raise KnowledgeError(
            f"{where}: at most {MAX_DESCRIPTIONS} descriptions, got {len(descriptions)}"
        )
    aliases = entry.get("aliases")
    aliases = (
        ()
        if aliases is None
        else _strings(aliases, _where(src, label, "aliases"), allow_empty_list=True)
    )
    return Category(name, descriptions, aliases)


def load_file(path: str | Path) -> list[Category]:
    """Parse and validate one knowledge YAML; raises :class:`KnowledgeError` naming the file,
    the category and the field at fault."""
    path = Path(path)
    src = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KnowledgeError(f"{src}: knowledge file not found") from None
    except OSError as e:
        raise KnowledgeError(f"{src}: cannot read knowledge file: {e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise KnowledgeError(f"{src}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise KnowledgeError(
            f"{src}: top level must be a mapping with 'categories', got {type(data).__name__}"
        )
    unknown = sorted(str(k) for k in data if k not in _TOP_FIELDS)
    if unknown:
        raise KnowledgeError(
            f"{src}: unknown top-level field(s) {unknown}; allowed: {', '.join(_TOP_FIELDS)}"
        )
    version = data.get("version", 1)
    if version not in SUPPORTED_VERSIONS or isinstance(version, bool):
        raise KnowledgeError(
            f"{src}: field 'version': unsupported version {version!r} "
            f"(supported: {', '.join(map(str, SUPPORTED_VERSIONS))})"
        )
    if "categories" not in data:
        raise KnowledgeError(f"{src}: field 'categories': missing")
    entries = data["categories"]
    if not isinstance(entries, list):
        raise KnowledgeError(f"{src}: field 'categories': must be a list of category mappings")
    cats = [_parse_category(entry, i, src) for i, entry in enumerate(entries)]
    owners: dict[str, Category] = {}
    for cat in cats:  # names first, so a clash always names both categories correctly
        if cat.key in owners:
            raise KnowledgeError(
                _where(src, _label(cat), "name")
                + f": duplicate category (same key '{cat.key}' as {_label(owners[cat.key])})"
            )
        owners[cat.key] = cat
    for cat in cats:
        for alias in cat.aliases:
            k = category_key(alias)
            other = owners.get(k)
            if other is not None and other is not cat:
                what = "name" if k == other.key else "an alias"
                raise KnowledgeError(
                    _where(src, _label(cat), "aliases")
                    + f": alias '{alias}' (key '{k}') is {what} of {_label(other)}"
                )
            owners[k] = cat
    return cats
