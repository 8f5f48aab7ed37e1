"""`oblivio init --from-table`: a commented params.yaml written from a table's schema.

Kinds come from the column types (Parquet's schema; for a CSV, the types pandas reads),
never from the values: integers and floats are numeric, text and booleans categorical
(hashed buckets), timestamps and dates datetime, nested and binary columns excluded. The
only values read into params.yaml are the label's classes (at most MAX_CLASSES: they are
the task's class names, not anyone's data). The rows are also scanned, as hashes, for
identifier-like feature columns (data/identifiers.py), which are reported, not dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from oblivio.data.encoding import infer_kind
from oblivio.data.identifiers import IdentifierScan, candidate
from oblivio.data.sources import BATCH_ROWS
from oblivio.errors import DataError

MAX_CLASSES = 20


@dataclass
class Inferred:
    """What `init --from-table` decided: the params.yaml data section and why, column by column."""

    columns: dict  # record_id, subject_id, label, derive_record_id, features (entries as params.yaml takes them)
    label_domain: list
    decisions: list[tuple[str, str, str]] = field(default_factory=list)  # (column, kind or role, why)
    warnings: list[str] = field(default_factory=list)


def _arrow_kind(t) -> tuple[str, str]:
    import pyarrow as pa

    if pa.types.is_boolean(t):
        return "categorical", "boolean"
    if pa.types.is_integer(t):
        return "numeric", "integer (declare kind: categorical if these are codes)"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "numeric", f"{t}"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return "categorical", "text: hashed buckets (declare a vocabulary to name the values)"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "datetime", f"{t}"
    if pa.types.is_null(t):
        return "excluded", "no values at all"
    return "excluded", f"type {t} (nested or binary) cannot be a feature"


def _pandas_kind(dtype) -> tuple[str, str]:
    if pd.api.types.is_bool_dtype(dtype):
        return "categorical", "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "numeric", "integer (declare kind: categorical if these are codes)"
    if pd.api.types.is_numeric_dtype(dtype):
        return "numeric", "number"
    return "categorical", "text: hashed buckets (declare a vocabulary to name the values)"


def read_table(path: Path) -> tuple[pd.DataFrame, dict[str, tuple[str, str]]]:
    """The table and each column's (kind, why); one clear error for a file that is not Parquet/CSV."""
    if path.suffix not in (".parquet", ".csv"):
        raise DataError(f"--from-table {path}: only .parquet and .csv files can be read; convert the table first.")
    if not path.is_file():
        raise DataError(f"--from-table {path}: no such file.")
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            return table.to_pandas(), {f.name: _arrow_kind(f.type) for f in table.schema}
        frame = pd.read_csv(path)
    except Exception as err:  # pyarrow and pandas raise many types for a corrupt file
        raise DataError(f"--from-table {path} could not be read ({type(err).__name__}: {err}).") from None
    return frame, {c: _pandas_kind(frame[c].dtype) for c in frame.columns}


def infer(path: Path, *, subject_id: str, label: str, record_id: str | None = None) -> Inferred:
    frame, kinds = read_table(path)
    return _infer(frame, kinds, path.name, subject_id=subject_id, label=label, record_id=record_id)


def _infer(frame: pd.DataFrame, kinds: dict, name: str, *, subject_id: str, label: str,
           record_id: str | None) -> Inferred:
    wanted = {"--subject-id": subject_id, "--label": label, **({"--record-id": record_id} if record_id else {})}
    absent = [f"{flag} {col!r}" for flag, col in wanted.items() if col not in frame.columns]
    if absent:
        raise DataError(f"--from-table {name}: no column for {', '.join(absent)}. "
                        f"The columns found: {', '.join(map(str, frame.columns))}.")
    classes = frame[label].dropna().unique()
    if len(classes) > MAX_CLASSES or len(classes) < 2:
        raise DataError(f"--label {label!r} has {len(classes)} distinct values; a classification label needs "
                        f"2 to {MAX_CLASSES}. Choose another column, or bin this one into classes first.")
    domain = _label_domain(classes)
    decisions = [(subject_id, "subject id", "all of one person's rows land in one shard"),
                 (label, "label", f"classes {domain}")]
    if record_id:
        decisions.append((record_id, "record id", "unique per row"))
    else:
        decisions.append(("record_id", "record id (derived)",
                          "no --record-id: each row's id is a hash of its subject id, label and feature values; "
                          "two identical rows of one person would share an id and fail validation, and "
                          "changing the features changes the ids (forget --subject is unaffected)"))
    features, scanned = [], []
    roles = {subject_id, label, *([record_id] if record_id else [])}
    for col in frame.columns:
        if col in roles:
            continue
        kind, why = kinds[col]
        decisions.append((str(col), kind, why))
        plain = kind == infer_kind(frame[col].dtype)  # a plain name reads as this kind at run time
        features.append(str(col) if plain else {"name": str(col), "kind": kind})
        if kind != "excluded" and candidate(kind, pd.api.types.is_integer_dtype(frame[col].dtype)):
            scanned.append(col)
    scan = IdentifierScan(scanned, subject_id)
    for start in range(0, len(frame), BATCH_ROWS):
        scan.add(frame.iloc[start:start + BATCH_ROWS])
    columns = {"record_id": record_id or "record_id", "subject_id": subject_id, "label": label,
               "derive_record_id": not record_id, "features": features}
    return Inferred(columns=columns, label_domain=domain, decisions=decisions, warnings=scan.warnings())


def _label_domain(classes) -> list:
    values = [v.item() if hasattr(v, "item") else v for v in classes]
    if all(isinstance(v, bool) for v in values):
        return [0, 1]
    if all(isinstance(v, (int, float)) and float(v).is_integer() for v in values):
        return sorted(int(v) for v in values)
    return sorted(str(v) for v in values)


def _yaml_value(value) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False)
    return text.strip().removesuffix("...").strip()


def data_section(inferred: Inferred, source: str) -> str:
    """The `data:` block of params.yaml, each feature commented with its kind and why."""
    why = {col: f"{kind}: {reason}" for col, kind, reason in inferred.decisions}
    cols = inferred.columns
    lines = [
        "data:",
        f"  source: {_yaml_value(source)}",
        "  columns:",
        f"    record_id: {_yaml_value(cols['record_id'])}",
        f"    derive_record_id: {'true' if cols['derive_record_id'] else 'false'}"
        + ("        # no record id column: derived from the row (see oblivio init's output)"
           if cols["derive_record_id"] else ""),
        f"    subject_id: {_yaml_value(cols['subject_id'])}",
        f"    label: {_yaml_value(cols['label'])}",
        "    # written by `oblivio init` from the table's schema (not its values): review each kind",
        "    # (numeric | categorical | datetime | excluded; a categorical may declare a vocabulary)",
        "    features:",
    ]
    for entry in cols["features"]:
        name = entry if isinstance(entry, str) else entry["name"]
        lines.append(f"      - {_yaml_value(entry)}    # {why.get(name, '')}")
    if not cols["features"]:
        lines.append("      []")
    lines += [
        f"  label_domain: {_yaml_value(inferred.label_domain)}",
        "  holdout_fraction: 0.2       # share of subjects (people) kept out of training for evaluation and audits",
        "  max_null_fraction: 0.5      # per feature; the validation suite fails above it",
        "  min_rows: 100",
        "  limit_subjects: 0           # 0 = everyone; N keeps a deterministic sample of N subjects",
    ]
    return "\n".join(lines) + "\n"


def params_text(template: str, inferred: Inferred, source: str) -> str:
    """The params.yaml template with its `data:` section replaced by the inferred one."""
    start = template.index("\ndata:\n") + 1
    end = template.index("\n\n", start) + 1
    return template[:start] + data_section(inferred, source) + template[end:]


def init_from_table(directory: Path, table: Path, *, subject_id: str | None, label: str | None,
                    record_id: str | None = None):
    """A new workspace whose params.yaml is inferred from `table`; (workspace, what was decided, as text).

    Everything is checked before anything is written."""
    from oblivio.workspace import init_workspace, template_text

    if not subject_id or not label:
        raise DataError("--from-table needs --subject-id COL and --label COL (and optionally --record-id COL).")
    inferred = infer(table, subject_id=subject_id, label=label, record_id=record_id)
    source = str(table.resolve())
    ws = init_workspace(directory, params=params_text(template_text("params.yaml"), inferred, source))
    width = max(len(c) for c, _, _ in inferred.decisions)
    lines = [f"params.yaml written from the schema of {table.name}:"]
    lines += [f"  {col:<{width}}  {kind}: {why}" for col, kind, why in inferred.decisions]
    lines += [f"warning: {w}" for w in inferred.warnings]
    return ws, "\n".join(lines)


# Built-ins whose params.yaml `init --source` writes from their schema, as --from-table would.
BUILTIN_ROLES = {"builtin:psid": {"subject_id": "id", "label": "label", "record_id": "record_id"}}
# ... and the columns whose integers are codes: PSID's 7 survey years (as a number, log1p(1976)
# and log1p(1982) would barely differ, and wages rose year on year)
BUILTIN_CODES = {"builtin:psid": {"year": "survey year, 7 values: categorical (as codes)"}}


def builtin_params(template: str, source: str) -> str | None:
    """params.yaml for a built-in listed in BUILTIN_ROLES (None for the others: the template fits them)."""
    if source not in BUILTIN_ROLES:
        return None
    from oblivio.data.sources import BUILTIN

    frame = BUILTIN[source]()
    roles = BUILTIN_ROLES[source]
    kinds = {c: _pandas_kind(frame[c].dtype) for c in frame.columns}
    kinds.update({c: ("categorical", why) for c, why in BUILTIN_CODES.get(source, {}).items()})
    inferred = _infer(frame, kinds, source, **roles)
    return params_text(template, inferred, source)
