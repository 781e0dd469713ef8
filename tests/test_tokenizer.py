import importlib.util
from pathlib import Path

import pytest

from shared.cleaning import load_dataset
from shared.datasets import make_spec, read_rows
from shared.tokenizer import PAD_INDEX, UNK_INDEX, Vocabulary, encode_all, tokenize


def _b3db_rows():
    location = Path(next(iter(importlib.util.find_spec("B3DB").submodule_search_locations)))
    return read_rows(location / "B3DB_classification.tsv", "SMILES", "BBB+/BBB-")


@pytest.mark.parametrize("source", ["bbbp", "b3db"])
def test_round_trip_every_molecule(source, bbbp_path):
    rows = read_rows(bbbp_path, "smiles", "p_np") if source == "bbbp" else _b3db_rows()
    assert len(rows) > 2000
    broken = [row.smiles for row in rows if "".join(tokenize(row.smiles)) != row.smiles]
    assert broken == [], f"{len(broken)} {source} SMILES do not survive tokenizing, e.g. {broken[:3]}"


def test_round_trip_cleaned_bbbp(bbbp_path):
    dataset = load_dataset(make_spec("bbbp", bbbp_path=str(bbbp_path)))
    broken = [s for s in dataset.smiles if "".join(tokenize(s)) != s]
    assert broken == []


@pytest.mark.parametrize(
    ("smiles", "expected"),
    [
        ("c1cc[nH]c1", ["c", "1", "c", "c", "[nH]", "c", "1"]),
        ("ClCBr", ["Cl", "C", "Br"]),
        ("C%12CC%12", ["C", "%12", "C", "C", "%12"]),
        ("[C@@H](F)(Cl)Br", ["[C@@H]", "(", "F", ")", "(", "Cl", ")", "Br"]),
        ("C/C=C\\C", ["C", "/", "C", "=", "C", "\\", "C"]),
        ("[N+](=O)[O-]", ["[N+]", "(", "=", "O", ")", "[O-]"]),
    ],
)
def test_multi_character_tokens(smiles, expected):
    assert tokenize(smiles) == expected


def test_vocabulary_pad_and_unknown():
    vocab = Vocabulary.from_smiles(["CCO", "c1ccccc1"])
    assert vocab.itos[PAD_INDEX] == "<pad>"
    assert vocab.itos[UNK_INDEX] == "<unk>"
    assert vocab.encode("CBr") == [vocab.stoi["C"], UNK_INDEX]


def test_encode_all_pads_to_longest():
    vocab = Vocabulary.from_smiles(["CCO", "C"])
    matrix, lengths = encode_all(vocab, ["CCO", "C"])
    assert matrix.shape == (2, 3)
    assert lengths.tolist() == [3, 1]
    assert matrix[1, 1:].tolist() == [PAD_INDEX, PAD_INDEX]
