import subprocess
import sys
from pathlib import Path

import pytest

from shared import datasets
from shared.cleaning import load_dataset
from shared.datasets import BBBP_MD5, make_spec
from shared.errors import InvalidDataError


def _spec(path: Path, **kwargs):
    return make_spec(str(path), smiles_column="smiles", label_column="p_np", **kwargs)


def test_bbbp_cleaning_counts(bbbp_path):
    summary = load_dataset(make_spec("bbbp", bbbp_path=str(bbbp_path))).summary
    assert summary.rows == 2050
    assert summary.unparsable == 11
    assert summary.multi_fragment == 105
    assert summary.conflicting_molecules == 11
    assert summary.conflicting_rows == 22
    assert summary.duplicate_rows_merged == 62
    assert summary.molecules == 2050 - 11 - 22 - 62


def test_bbbp_keeping_all_fragments_changes_duplicates(bbbp_path):
    summary = load_dataset(make_spec("bbbp", bbbp_path=str(bbbp_path), keep_largest_fragment=False)).summary
    assert summary.unparsable == 11
    assert summary.conflicting_molecules == 10
    assert summary.molecules > 1955


def test_cleaned_molecules_are_unique_and_sorted(bbbp_path):
    dataset = load_dataset(make_spec("bbbp", bbbp_path=str(bbbp_path)))
    assert dataset.smiles == sorted(set(dataset.smiles))
    assert all("." not in s for s in dataset.smiles), "the largest fragment is kept by default"
    assert len(dataset.fingerprint) == 64


def test_b3db_loads_without_importing_its_module():
    code = (
        "import sys; from shared.cleaning import load_dataset; from shared.datasets import make_spec; "
        "d = load_dataset(make_spec('b3db')); "
        "assert 'B3DB' not in sys.modules, 'the B3DB module was imported'; print(d.summary.rows, d.summary.unparsable)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["7807", "2"]


def test_missing_labels_rejected_with_line_numbers(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("smiles,p_np\nCCO,1\nCCN,\n,0\nCCC,0\n")
    with pytest.raises(InvalidDataError, match=r"2 rows .*lines 3, 4"):
        load_dataset(_spec(path))


def test_string_labels_need_positive_label(tmp_path):
    path = tmp_path / "strings.csv"
    path.write_text("smiles,p_np\nCCO,yes\nCCN,no\nCCC,yes\n")
    with pytest.raises(InvalidDataError, match="--positive-label"):
        load_dataset(_spec(path))
    dataset = load_dataset(_spec(path, positive_label="yes"))
    assert sorted(dataset.labels.tolist()) == [0, 1, 1]


def test_unknown_positive_label_rejected(tmp_path):
    path = tmp_path / "strings.csv"
    path.write_text("smiles,p_np\nCCO,yes\nCCN,no\n")
    with pytest.raises(InvalidDataError, match="'maybe' does not occur"):
        load_dataset(_spec(path, positive_label="maybe"))


def test_missing_column_named(tmp_path):
    path = tmp_path / "columns.csv"
    path.write_text("smi,p_np\nCCO,1\n")
    with pytest.raises(InvalidDataError, match="column 'smiles' not found"):
        load_dataset(_spec(path))


def test_unknown_dataset_name():
    with pytest.raises(InvalidDataError, match="neither a built-in name"):
        make_spec("bbbq")


def test_tsv_with_bom_and_crlf(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_bytes("\ufeffsmiles\tp_np\r\nCCO\t1\r\nCCN\t0\r\n\r\n".encode())
    assert load_dataset(_spec(path)).summary.molecules == 2


class TestBbbpDownload:
    @pytest.fixture(autouse=True)
    def cache(self, tmp_path, monkeypatch):
        monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
        return tmp_path / "cache"

    def test_download_verified_and_cached(self, bbbp_path, cache, monkeypatch):
        monkeypatch.setenv("HPO_BBBP_URL", bbbp_path.resolve().as_uri())
        path = datasets.resolve_path(make_spec("bbbp"))
        assert path == cache / "BBBP.csv"
        assert datasets.file_md5(path) == BBBP_MD5
        monkeypatch.setenv("HPO_BBBP_URL", "http://127.0.0.1:9/unreachable")
        assert datasets.resolve_path(make_spec("bbbp")) == path, "the second call must read the cache"

    def test_checksum_mismatch_leaves_nothing(self, tmp_path, cache, monkeypatch):
        wrong = tmp_path / "wrong.csv"
        wrong.write_text("smiles,p_np\nCCO,1\n")
        monkeypatch.setenv("HPO_BBBP_URL", wrong.as_uri())
        with pytest.raises(InvalidDataError, match=f"expected {BBBP_MD5}.*place"):
            datasets.resolve_path(make_spec("bbbp"))
        assert list(cache.iterdir()) == [], "a rejected download must not stay in the cache"

    def test_offline_message_says_where_to_put_the_file(self, cache, monkeypatch):
        monkeypatch.setenv("HPO_BBBP_URL", "http://127.0.0.1:9/BBBP.csv")
        with pytest.raises(InvalidDataError, match=f"could not download .* at {cache / 'BBBP.csv'}"):
            datasets.resolve_path(make_spec("bbbp"))

    def test_explicit_path_used_as_is(self, bbbp_path):
        assert datasets.resolve_path(make_spec("bbbp", bbbp_path=str(bbbp_path))) == bbbp_path
