"""Locating and loading the Amazon 2014 5-core recommendation data (Beauty, Sports, Toys).

Files (see shared/data/README.md):
- ``sequential_data.txt``: one user per line, ``user_id item_id item_id ...`` in time order.
- ``datamaps.json``: ``id2item`` maps each integer item id to its ASIN; it defines the valid item ids.
- ``DERIVED_asin_title.csv`` (Beauty only): ``asin,title``.

Loaders are strict on purpose: a malformed benchmark file silently loaded would shift every reported metric, so
each problem raises :class:`DataFormatError` naming the file, the line and the reason.
"""

from __future__ import annotations

import csv
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

from arcast_core.data_dir import find_data_dir

# Dataset name -> folder under the data directory.
DATASET_FOLDERS: dict[str, str] = {
    "beauty": "amazon_beauty",
    "sports": "amazon_sports",
    "toys": "amazon_toys",
}

SEQUENCES_FILE = "sequential_data.txt"
DATAMAPS_FILE = "datamaps.json"
TITLES_FILE = "DERIVED_asin_title.csv"
ATTRIBUTES_FILE = "item2attributes.json"

# Text used for an item whose title is empty in the source data. The ASIN keeps the text unique per item; the
# fixed prefix carries the only semantics we know (the category), so these items embed near each other.
MISSING_TITLE_TEMPLATE = "Beauty product (ASIN {asin}, title unavailable)"


class DataFormatError(ValueError):
    """A data file does not have the expected content; the message names the file, line and reason."""

    def __init__(self, path: Path, line: int | None, reason: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


def dataset_dir(name: str, data_dir: Path) -> Path:
    """Folder of one named dataset (``beauty``, ``sports``, ``toys``) under the data directory."""
    if name not in DATASET_FOLDERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASET_FOLDERS)}")
    folder = data_dir / DATASET_FOLDERS[name]
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset {name!r}: folder {folder} does not exist")
    return folder


def _parse_id(token: str, path: Path, line: int | None, what: str) -> int:
    try:
        value = int(token)
    except ValueError:
        raise DataFormatError(path, line, f"{what} {token!r} is not an integer") from None
    if value < 0:
        raise DataFormatError(path, line, f"{what} {value} is negative")
    return value


def load_sequences(path: Path, known_item_ids: set[int] | None = None) -> dict[int, list[int]]:
    """Read ``user_id item_id ...`` lines into ``{user_id: [item ids in time order]}`` (file order kept).

    ``known_item_ids``, when given, is the item vocabulary (from ``datamaps.json``); an id outside it is an error.
    """
    path = Path(path)
    sequences: dict[int, list[int]] = {}
    with path.open(encoding="utf-8") as handle:
        for line_no, raw in enumerate(handle, start=1):
            tokens = raw.split()
            if not tokens:
                raise DataFormatError(path, line_no, "blank line (expected 'user_id item_id ...')")
            user = _parse_id(tokens[0], path, line_no, "user id")
            if len(tokens) == 1:
                raise DataFormatError(path, line_no, f"user {user} has an empty history")
            if user in sequences:
                raise DataFormatError(path, line_no, f"user {user} appears on more than one line")
            items = [_parse_id(t, path, line_no, "item id") for t in tokens[1:]]
            if known_item_ids is not None:
                unknown = [i for i in items if i not in known_item_ids]
                if unknown:
                    raise DataFormatError(path, line_no, f"unknown item id(s) {unknown[:5]} (not in {DATAMAPS_FILE})")
            sequences[user] = items
    if not sequences:
        raise DataFormatError(path, None, "file has no user lines")
    return sequences


def load_item_asins(path: Path) -> dict[int, str]:
    """Read ``id2item`` (item id -> ASIN) from a ``datamaps.json``."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataFormatError(path, err.lineno, f"invalid JSON: {err.msg}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("id2item"), dict):
        raise DataFormatError(path, None, "missing the 'id2item' object")
    asins: dict[int, str] = {}
    for key, asin in payload["id2item"].items():
        item = _parse_id(key, path, None, "id2item key")
        if not isinstance(asin, str) or not asin:
            raise DataFormatError(path, None, f"id2item[{key!r}] is not a non-empty ASIN string")
        asins[item] = asin
    if not asins:
        raise DataFormatError(path, None, "'id2item' is empty")
    return asins


@dataclass(frozen=True)
class InteractionData:
    """One dataset's user sequences (raw ids, time order) and its item vocabulary."""

    name: str
    sequences: dict[int, list[int]]
    item_asins: dict[int, str]

    @property
    def num_interactions(self) -> int:
        return sum(len(items) for items in self.sequences.values())


def load_dataset(name: str, data_dir: Path | None = None) -> InteractionData:
    """Load a named dataset, validating every item id against ``datamaps.json``."""
    folder = dataset_dir(name, data_dir if data_dir is not None else find_data_dir())
    item_asins = load_item_asins(folder / DATAMAPS_FILE)
    sequences = load_sequences(folder / SEQUENCES_FILE, known_item_ids=set(item_asins))
    return InteractionData(name=name, sequences=sequences, item_asins=item_asins)


@dataclass(frozen=True)
class ItemTitles:
    """Text per raw item id; ``missing_title_item_ids`` lists items whose title was empty (placeholder used)."""

    texts: dict[int, str]
    missing_title_item_ids: tuple[int, ...]


_WHITESPACE = re.compile(r"\s+")


def clean_title(title: str) -> str:
    """Decode HTML entities (the scrape keeps e.g. ``&#9733;``) and collapse whitespace runs."""
    return _WHITESPACE.sub(" ", html.unescape(title)).strip()


def load_item_titles(item_asins: dict[int, str], titles_path: Path) -> ItemTitles:
    """Join item id -> ASIN -> title. Every item must have a row; an empty title gets the placeholder text."""
    titles_path = Path(titles_path)
    by_asin: dict[str, str] = {}
    with titles_path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != ["asin", "title"]:
            raise DataFormatError(titles_path, 1, f"expected header 'asin,title', found {header!r}")
        for row in reader:
            line_no = reader.line_num
            if len(row) != 2:
                raise DataFormatError(titles_path, line_no, f"expected 2 fields (asin,title), found {len(row)}")
            asin, title = row
            if not asin:
                raise DataFormatError(titles_path, line_no, "empty ASIN")
            if asin in by_asin:
                raise DataFormatError(titles_path, line_no, f"ASIN {asin} appears twice")
            by_asin[asin] = title
    texts: dict[int, str] = {}
    missing: list[int] = []
    for item, asin in sorted(item_asins.items()):
        if asin not in by_asin:
            raise DataFormatError(titles_path, None, f"no row for item {item} (ASIN {asin})")
        title = clean_title(by_asin[asin])
        if not title:
            missing.append(item)
            title = MISSING_TITLE_TEMPLATE.format(asin=asin)
        texts[item] = title
    return ItemTitles(texts=texts, missing_title_item_ids=tuple(missing))


def load_beauty_titles(data_dir: Path | None = None) -> ItemTitles:
    """Titles of every Beauty item (the only dataset here that ships titles)."""
    folder = dataset_dir("beauty", data_dir if data_dir is not None else find_data_dir())
    return load_item_titles(load_item_asins(folder / DATAMAPS_FILE), folder / TITLES_FILE)


def load_item_attributes(name: str, data_dir: Path | None = None) -> dict[int, list[int]] | None:
    """Attribute ids per raw item id from ``item2attributes.json`` (Beauty and Sports; Toys has none: None).

    The ids are anonymous (no brand, category or price names ship with the data), so they cannot be written into
    an item's text: :func:`recsys.text_embeddings.attribute_embeddings` turns them into vectors instead.
    """
    path = dataset_dir(name, data_dir if data_dir is not None else find_data_dir()) / ATTRIBUTES_FILE
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataFormatError(path, err.lineno, f"invalid JSON: {err.msg}") from None
    if not isinstance(payload, dict):
        raise DataFormatError(path, None, "expected an object of item id -> list of attribute ids")
    out: dict[int, list[int]] = {}
    for key, values in payload.items():
        item = _parse_id(key, path, None, "item id")
        if not isinstance(values, list) or not all(isinstance(v, int) for v in values):
            raise DataFormatError(path, None, f"item {key}: attributes must be a list of integers")
        out[item] = values
    return out
