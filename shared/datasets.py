"""Dataset sources: the built-in B3DB and BBBP sets, and user CSV/TSV files."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import logging
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from shared.errors import InvalidDataError

logger = logging.getLogger(__name__)

BUILTIN_DATASETS = ("b3db", "bbbp")

BBBP_URL = "https://deepchemdata.s3-us-west-1.amazonaws.com/datasets/BBBP.csv"
BBBP_MD5 = "66286cb9e6b148bd75d80c870df580fb"
DOWNLOAD_TIMEOUT_S = 30


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset comes from and how its columns are read.

    ``name`` is ``b3db``, ``bbbp`` or ``file``. ``path`` is the file for ``file``,
    and an optional local copy for ``bbbp``. ``positive_label`` names the positive
    class when the labels are two strings instead of 0/1.
    """

    name: str
    path: str | None
    smiles_column: str
    label_column: str
    positive_label: str | None
    keep_largest_fragment: bool = True

    def describe(self) -> str:
        return self.name if self.name != "file" else str(self.path)


def make_spec(
    dataset: str,
    *,
    smiles_column: str | None = None,
    label_column: str | None = None,
    positive_label: str | None = None,
    bbbp_path: str | None = None,
    keep_largest_fragment: bool = True,
) -> DatasetSpec:
    """Build a spec from a built-in name or a file path, with each set's default columns."""
    if dataset == "b3db":
        return DatasetSpec(
            "b3db", None, smiles_column or "SMILES", label_column or "BBB+/BBB-",
            positive_label or "BBB+", keep_largest_fragment,
        )
    if dataset == "bbbp":
        return DatasetSpec(
            "bbbp", bbbp_path, smiles_column or "smiles", label_column or "p_np",
            positive_label, keep_largest_fragment,
        )
    path = Path(dataset)
    if not path.is_file():
        raise InvalidDataError(
            f"dataset {dataset!r} is neither a built-in name ({', '.join(BUILTIN_DATASETS)}) "
            "nor an existing file: pass one of the names or the path of a CSV/TSV file"
        )
    if not smiles_column or not label_column:
        raise InvalidDataError(
            f"dataset file {dataset}: --smiles-column and --label-column are required for a file"
        )
    return DatasetSpec(
        "file", str(path.resolve()), smiles_column, label_column, positive_label,
        keep_largest_fragment,
    )


def resolve_path(spec: DatasetSpec) -> Path:
    """Return the local file that holds the dataset, downloading BBBP once if needed."""
    if spec.name == "b3db":
        return _b3db_path()
    if spec.name == "bbbp":
        if spec.path:
            return _existing(Path(spec.path), "BBBP path")
        return _cached_bbbp()
    return _existing(Path(spec.path or ""), "dataset file")


def _existing(path: Path, what: str) -> Path:
    if not path.is_file():
        raise InvalidDataError(f"{what} {path} not found: check the path")
    return path


def _b3db_path() -> Path:
    # find_spec locates the package without importing it: importing B3DB reads
    # every file it ships, a 68 MB compressed one included.
    spec = importlib.util.find_spec("B3DB")
    if spec is None or not spec.submodule_search_locations:
        raise InvalidDataError(
            "the b3db dataset needs the qc-B3DB package: pip install qc-B3DB==1.1.1"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "B3DB_classification.tsv"
    return _existing(path, "B3DB classification file")


def cache_dir() -> Path:
    """Return the download cache folder: $HPO_CACHE_DIR, else ~/.cache/smiles-hpo."""
    configured = os.environ.get("HPO_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "smiles-hpo"


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cached_bbbp() -> Path:
    target = cache_dir() / "BBBP.csv"
    if target.is_file():
        found = file_md5(target)
        if found == BBBP_MD5:
            return target
        raise InvalidDataError(
            f"cached BBBP file {target} has md5 {found}, expected {BBBP_MD5}: delete it to "
            "download again, or place the MoleculeNet BBBP.csv there"
        )
    url = os.environ.get("HPO_BBBP_URL", BBBP_URL)
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading BBBP from %s to %s", url, target)
    # Download beside the target and rename only after the checksum matches,
    # so an interrupted or corrupt download never sits in the cache.
    handle, temporary_name = tempfile.mkstemp(prefix=".BBBP-", dir=target.parent)
    temporary = Path(temporary_name)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            out.write(response.read())
        found = file_md5(temporary)
        if found != BBBP_MD5:
            raise InvalidDataError(
                f"BBBP downloaded from {url} has md5 {found}, expected {BBBP_MD5}: place the "
                f"MoleculeNet BBBP.csv at {target} yourself, or pass --bbbp-path / HPO_BBBP_PATH"
            )
        temporary.replace(target)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise InvalidDataError(
            f"could not download BBBP from {url} ({error}): place the MoleculeNet BBBP.csv "
            f"(md5 {BBBP_MD5}) at {target}, or pass --bbbp-path / HPO_BBBP_PATH"
        ) from error
    finally:
        temporary.unlink(missing_ok=True)
    return target


@dataclass(frozen=True)
class RawRow:
    line: int
    smiles: str
    label: str


def read_rows(path: Path, smiles_column: str, label_column: str) -> list[RawRow]:
    """Read the two columns of a CSV or TSV file, with file line numbers."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header_line = handle.readline()
            delimiter = "\t" if "\t" in header_line else ","
            handle.seek(0)
            reader = csv.reader(handle, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise InvalidDataError(f"{path} is empty: expected a header line")
            header = [name.strip() for name in header]
            columns = []
            for column in (smiles_column, label_column):
                if column not in header:
                    raise InvalidDataError(
                        f"{path}: column {column!r} not found; the header has {header}: "
                        "pass the right name with --smiles-column / --label-column"
                    )
                columns.append(header.index(column))
            rows = []
            for record in reader:
                if not record:
                    continue  # blank line, such as a trailing one
                cells = [record[i].strip() if i < len(record) else "" for i in columns]
                rows.append(RawRow(reader.line_num, cells[0], cells[1]))
    except UnicodeDecodeError as error:
        raise InvalidDataError(f"{path} is not UTF-8 text ({error}): convert it to UTF-8") from error
    except csv.Error as error:
        raise InvalidDataError(f"{path}: malformed CSV ({error})") from error
    if not rows:
        raise InvalidDataError(f"{path} has a header but no data rows")
    return rows
