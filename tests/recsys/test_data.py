"""Loading the Amazon files: real counts, title join, and clear errors on malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import recsys.data as data_module
from recsys.data import (
    DataFormatError,
    load_beauty_titles,
    load_dataset,
    load_item_asins,
    load_item_titles,
    load_sequences,
)

# Published sizes of the 5-core sets (shared/data/README.md): users, items, interactions.
EXPECTED_SIZES = {
    "beauty": (22363, 12101, 198502),
    "sports": (35598, 18357, 296337),
    "toys": (19412, 11924, 167597),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_SIZES))
def test_real_datasets_have_published_sizes(name: str, amazon_data_dir: Path) -> None:
    dataset = load_dataset(name, amazon_data_dir)
    users, items, interactions = EXPECTED_SIZES[name]
    assert len(dataset.sequences) == users
    assert len({i for seq in dataset.sequences.values() for i in seq}) == items == len(dataset.item_asins)
    assert dataset.num_interactions == interactions
    assert min(len(seq) for seq in dataset.sequences.values()) >= 5  # 5-core


def test_beauty_first_line_is_read_in_order(beauty: data_module.InteractionData) -> None:
    # First line of sequential_data.txt: "1 1 2 3 4 5".
    assert beauty.sequences[1] == [1, 2, 3, 4, 5]
    assert list(beauty.sequences)[:3] == [1, 2, 3]


def test_beauty_titles_join_and_missing_titles(amazon_data_dir: Path) -> None:
    titles = load_beauty_titles(amazon_data_dir)
    assert len(titles.texts) == 12101
    assert all(text.strip() for text in titles.texts.values())
    assert len(titles.missing_title_item_ids) == 7
    asins = load_item_asins(amazon_data_dir / "amazon_beauty" / "datamaps.json")
    for item in titles.missing_title_item_ids:
        assert asins[item] in titles.texts[item] and "title unavailable" in titles.texts[item]
    # Item 1 is ASIN B004756YJA; HTML entities in the scraped titles are decoded.
    assert asins[1] == "B004756YJA"
    assert not any("&#" in text or "&amp;" in text for text in titles.texts.values())


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        ("1 1 2\n2 3 x\n", 2, "item id 'x' is not an integer"),
        ("1 1 2\nu2 3 4\n", 2, "user id 'u2' is not an integer"),
        ("1 1 2\n2\n", 2, "user 2 has an empty history"),
        ("1 1 2\n\n2 3 4\n", 2, "blank line (expected 'user_id item_id ...')"),
        ("1 1 2\n1 3 4\n", 2, "user 1 appears on more than one line"),
        ("1 1 -2\n", 1, "item id -2 is negative"),
        ("1 1 2.5\n", 1, "item id '2.5' is not an integer"),
    ],
)
def test_malformed_sequence_lines(tmp_path: Path, content: str, line: int, reason: str) -> None:
    path = write(tmp_path / "sequential_data.txt", content)
    with pytest.raises(DataFormatError) as err:
        load_sequences(path)
    assert err.value.line == line
    assert str(err.value) == f"{path}:{line}: {reason}"


def test_unknown_item_ids_and_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path / "sequential_data.txt", "1 1 2\n2 2 7 9\n")
    with pytest.raises(DataFormatError, match=r"sequential_data.txt:2: unknown item id\(s\) \[7, 9\]"):
        load_sequences(path, known_item_ids={1, 2, 3})
    with pytest.raises(DataFormatError, match="no user lines"):
        load_sequences(write(tmp_path / "empty.txt", ""))


def test_malformed_datamaps(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="invalid JSON"):
        load_item_asins(write(tmp_path / "a.json", "{not json"))
    with pytest.raises(DataFormatError, match="missing the 'id2item' object"):
        load_item_asins(write(tmp_path / "b.json", json.dumps({"id2user": {}})))
    with pytest.raises(DataFormatError, match="id2item key 'x' is not an integer"):
        load_item_asins(write(tmp_path / "c.json", json.dumps({"id2item": {"x": "B0"}})))


def test_titles_join_errors_and_placeholder(tmp_path: Path) -> None:
    asins = {1: "A1", 2: "A2"}
    good = write(tmp_path / "t.csv", 'asin,title\nA1,"Lip &amp; Cheek  Tint"\nA2,\n')
    titles = load_item_titles(asins, good)
    assert titles.texts[1] == "Lip & Cheek Tint"
    assert titles.missing_title_item_ids == (2,)
    assert "A2" in titles.texts[2]
    with pytest.raises(DataFormatError, match="expected header 'asin,title'"):
        load_item_titles(asins, write(tmp_path / "h.csv", "id,name\nA1,x\n"))
    with pytest.raises(DataFormatError, match=r"t2.csv: no row for item 2 \(ASIN A2\)"):
        load_item_titles(asins, write(tmp_path / "t2.csv", "asin,title\nA1,x\n"))
    with pytest.raises(DataFormatError, match=r"t3.csv:3: expected 2 fields"):
        load_item_titles(asins, write(tmp_path / "t3.csv", "asin,title\nA1,x\nA2,y,z\n"))
    with pytest.raises(DataFormatError, match=r"t4.csv:3: ASIN A1 appears twice"):
        load_item_titles(asins, write(tmp_path / "t4.csv", "asin,title\nA1,x\nA1,y\n"))


def test_unknown_dataset_name(amazon_data_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'movies'"):
        load_dataset("movies", amazon_data_dir)


def test_item_attributes_and_their_embedding(amazon_data_dir: Path, beauty: data_module.InteractionData) -> None:
    from recsys.data import load_item_attributes
    from recsys.text_embeddings import attribute_embeddings, combine_item_sides

    attributes = load_item_attributes("beauty", amazon_data_dir)
    assert attributes is not None and attributes[4] == [1, 2, 3]  # the file's first entry
    assert load_item_attributes("toys", amazon_data_dir) is None  # Toys ships none
    items = sorted(beauty.item_asins)[:3000]
    vectors = attribute_embeddings(attributes, items, dim=32)
    assert vectors.shape == (3000, 32)
    with_attributes = np.array([bool(attributes.get(i)) for i in items])
    np.testing.assert_allclose(np.linalg.norm(vectors[with_attributes], axis=1), 1.0, atol=1e-5)
    # Items with the same attribute set are nearer each other than items sharing none.
    sets = [frozenset(attributes.get(i, [])) for i in items]
    same = [(a, b) for a in range(300) for b in range(a + 1, 3000) if sets[a] and sets[a] == sets[b]][:200]
    apart = [(a, a + 1) for a in range(2000) if sets[a] and sets[a + 1] and not sets[a] & sets[a + 1]][:200]
    cosine = lambda pairs: np.mean([vectors[a] @ vectors[b] for a, b in pairs])  # noqa: E731
    assert len(same) > 20 and cosine(same) > 0.99 > cosine(apart) + 0.5
    joined = combine_item_sides([np.random.default_rng(0).normal(size=(3000, 8)), vectors])
    assert joined.shape == (3000, 40) and np.allclose(np.linalg.norm(joined, axis=1), 1.0, atol=1e-5)
