"""params.yaml and mlflow.yaml as frozen dataclasses, validated once.

Every problem in a file is collected before raising, so a user fixes them all in one go:
"params.yaml: train.epochs_per_slice must be an integer >= 1, got 'four'".
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from oblivio.errors import ConfigError


FEATURE_KINDS = ("numeric", "categorical", "datetime", "excluded")
DATETIME_PARTS = ("year", "month", "day", "weekday", "hour", "minute")  # what a datetime expands into
FEATURE_OPTIONS = {"name", "kind", "buckets", "vocabulary", "parts"}


@dataclass(frozen=True)
class FeatureSpec:
    """One `data.columns.features` entry: a plain name (kind from the file's type) or a mapping.

    The encoding itself lives in oblivio.data.encoding; this is only what the user declared.
    """

    name: str
    kind: str = ""  # "" = inferred from the column's type when the data is read
    buckets: int = 0  # categorical, hashed: 0 = the default bucket count
    vocabulary: tuple | None = None  # categorical: declared values; anything else goes to "other"
    parts: tuple[str, ...] = ()  # datetime: () = the default parts


@dataclass(frozen=True)
class Columns:
    record_id: str = "record_id"  # unique per row
    derive_record_id: bool = False  # the table has none: record_id is derived from the row (data/record_ids.py)
    subject_id: str = "subject_id"  # the person; several rows may share one
    label: str = "label"
    features: tuple[str, ...] = ()  # the feature columns read (every entry but the excluded ones)
    feature_specs: tuple[FeatureSpec, ...] = ()  # every entry as declared (set by the parser)

    def specs(self) -> tuple[FeatureSpec, ...]:
        """The declared entries of the features read; plain names when built without the parser."""
        declared = {s.name: s for s in self.feature_specs}
        return tuple(declared.get(name, FeatureSpec(name=name)) for name in self.features)


@dataclass(frozen=True)
class DataParams:
    source: str = "builtin:nlswork"  # builtin:nlswork | builtin:fashion-mnist | path to .parquet/.csv
    columns: Columns = Columns()
    label_domain: tuple[int | str, ...] = (0, 1)  # class names: integers or strings, not mixed
    holdout_fraction: float = 0.2  # share of *subjects* held out for evaluation and audits
    max_null_fraction: float = 0.5  # per feature column
    min_rows: int = 100
    limit_subjects: int = 0  # 0 = all; >0 keeps a deterministic subset (tests, quick tours)


@dataclass(frozen=True)
class SisaParams:
    shards: int = 8
    slices: int = 4
    aggregation: str = "mean_proba"  # mean_proba | majority_vote
    placement: str = "subject"  # subject (a person's first records share one slice) | record (each record its own)


@dataclass(frozen=True)
class TrainParams:
    model: str = "mlp"  # mlp | cnn
    hidden: tuple[int, ...] = (64, 64)
    epochs_per_slice: int = 4
    batch_size: int = 64
    lr: float = 0.002
    weight_decay: float = 0.0
    numerics: str = "portable"  # portable (same bits on every AVX2 x86-64 CPU) | native (this CPU kind only)


@dataclass(frozen=True)
class DpParams:
    enabled: bool = False
    target_epsilon: float = 8.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "prv"  # prv | rdp
    grad_sample_mode: str = "fused"  # fused (MLPs; fastest) | ghost (per person: hooks) | hooks: Opacus' paths
    unit: str = "subject"  # subject (sample people, clip each person's contribution) | record
    batch_size: int = 64  # expected people (unit record: records) per DP step; 0 = train.batch_size
    lr: float = 0.01  # learning rate of DP training; 0 = train.lr


@dataclass(frozen=True)
class GateParams:
    min_accuracy: float = 0.6
    max_accuracy_regression: float = 0.01  # vs the current champion, absolute
    max_mia_auc: float = 0.75  # worst membership-inference AUC (ensemble and every shard model)
    max_mia_tpr_at_1pct_fpr: float = 0.1  # worst attack TPR at 1 % FPR
    max_epsilon: float = 10.0  # DP epsilon at dp.unit (per person or per record), when dp.enabled
    max_forget_set_auc: float = 0.6  # after an erasure: erased rows must score like non-members
    min_forget_set_subjects: int = 20  # ... judged only from this many erased people on
    require_approval: bool = False


@dataclass(frozen=True)
class UnlearningParams:
    ssd_tolerance: float = 0.03  # per shard: largest validation accuracy drop SSD may cost (alpha, lambda)


@dataclass(frozen=True)
class ExecutorParams:
    kind: str = "process"  # sequential | thread | process | dask
    max_workers: int = 2
    dask_address: str = ""  # tcp://host:8786 for an existing cluster; empty = local cluster


@dataclass(frozen=True)
class ReportParams:
    baseline: bool = True  # also train one non-sharded model the same way, for comparison


@dataclass(frozen=True)
class ScheduleParams:
    cron: str = "0 2 * * *"
    timezone: str = "UTC"


@dataclass(frozen=True)
class RequestsParams:
    deadline_days: int = 30  # a request is due this many days after it is recorded (GDPR art. 12(3): one month)
    callback_hosts: tuple[str, ...] = ()  # hosts a request's callback_url may name; empty: callbacks off
    callback_attempts: int = 6  # sends of one callback before it is abandoned
    callback_backoff_seconds: float = 5.0  # wait after the first failed send; doubles after each


@dataclass(frozen=True)
class OpenLineageParams:
    transport: str = "none"  # none | http | file (oblivio/openlineage_events.py)
    url: str = ""  # http: the receiver's base URL (Marquez: http://HOST:5000); key from OPENLINEAGE_API_KEY
    endpoint: str = "api/v1/lineage"  # http: the path events are POSTed to
    file: str = "lineage/openlineage.jsonl"  # file: one JSON event a line, relative to the workspace
    namespace: str = "oblivio"  # the jobs' namespace in the catalogue
    timeout_seconds: float = 5.0  # http: per request (two retries)


@dataclass(frozen=True)
class Params:
    seed: int = 0
    data: DataParams = DataParams()
    sisa: SisaParams = SisaParams()
    train: TrainParams = TrainParams()
    dp: DpParams = DpParams()
    gates: GateParams = GateParams()
    unlearning: UnlearningParams = UnlearningParams()
    executor: ExecutorParams = ExecutorParams()
    report: ReportParams = ReportParams()
    schedule: ScheduleParams = ScheduleParams()
    requests: RequestsParams = RequestsParams()
    openlineage: OpenLineageParams = OpenLineageParams()


CHOICES = {
    "sisa.aggregation": ("mean_proba", "majority_vote"),
    "sisa.placement": ("subject", "record"),
    "train.model": ("mlp", "cnn"),
    "train.numerics": ("portable", "native"),
    "dp.accountant": ("prv", "rdp"),
    "dp.grad_sample_mode": ("fused", "ghost", "hooks"),  # training.dp.GRAD_SAMPLE_MODES
    "dp.unit": ("subject", "record"),
    "executor.kind": ("sequential", "thread", "process", "dask"),
    "openlineage.transport": ("none", "http", "file"),
}
# Choices of commands rather than of params.yaml, kept here with the others so the CLI's argparse
# and the API's checks share one list (importing this module stays cheap for `oblivio --help`).
SCENARIO_KINDS = ("backdoor", "label-flip")
STAGES = ("ingest", "train", "evaluate")  # the dvc.yaml stages `oblivio stage` runs
POSITIVE = {"sisa.slices", "train.epochs_per_slice", "train.batch_size", "executor.max_workers", "requests.deadline_days",
            "requests.callback_attempts", "requests.callback_backoff_seconds", "openlineage.timeout_seconds"}
FRACTIONS = {"data.holdout_fraction", "data.max_null_fraction", "unlearning.ssd_tolerance"}


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str = "sqlite:///mlflow.db"
    registry_uri: str = ""  # empty = same as tracking_uri
    experiment: str = "oblivio"
    artifact_location: str = "mlartifacts"  # empty = the tracking server's (its --artifacts-destination)
    model_name: str = "oblivio-ensemble"
    candidate_alias: str = "candidate"
    champion_alias: str = "champion"
    # the tracking server's own database, for the purge's `mlflow gc` (a server cannot hard-delete
    # through its REST API); password from PGPASSWORD or ~/.pgpass. Empty = the tracking URI.
    gc_backend_store_uri: str = ""

    @property
    def remote(self) -> bool:
        """A tracking server (http), not a database this process opens itself."""
        return self.tracking_uri.startswith(("http://", "https://"))


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0]).removeprefix('an ').removeprefix('a ')}s"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, where: str, errors: list[str]) -> Any:
    """Convert a YAML value to the annotated type, or record why it cannot be."""
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, errors)
    if typing.get_origin(tp) is tuple:
        (item,) = typing.get_args(tp)[:1]
        if not isinstance(value, list):
            errors.append(f"{where} must be {_describe(tp)}, got {value!r}")
            return None
        return tuple(_coerce(v, item, f"{where}[{i}]", errors) for i, v in enumerate(value))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            attempt: list[str] = []
            got = _coerce(value, option, where, attempt)
            if not attempt:
                return got
        errors.append(f"{where} must be {_describe(tp)}, got {value!r}")
        return None
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        errors.append(f"{where} must be {_describe(tp)}, got {value!r}")
        return None
    return float(value) if tp is float else value


def _build(cls: type, raw: Any, where: str, errors: list[str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(f"{where or 'the file'} must be a mapping of keys to values, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.name != "feature_specs"}
    for key in raw:
        if key not in known:
            errors.append(f"{where + '.' if where else ''}{key} is not a known key (known: {', '.join(sorted(known))})")
    values = {}
    for name in known & raw.keys():
        if cls is Columns and name == "features":
            specs = _feature_specs(raw[name], f"{where}.features", errors)
            values["feature_specs"] = specs
            values[name] = tuple(s.name for s in specs if s.kind != "excluded")
            continue
        values[name] = _coerce(raw[name], hints[name], f"{where + '.' if where else ''}{name}", errors)
    return cls(**{k: v for k, v in values.items() if v is not None})


def _feature_specs(raw: Any, where: str, errors: list[str]) -> tuple[FeatureSpec, ...]:
    """`data.columns.features`: each entry a column name or a mapping {name, kind, options}."""
    if not isinstance(raw, list):
        errors.append(f"{where} must be a list of column names or mappings, got {raw!r}")
        return ()
    specs, seen = [], set()
    for i, entry in enumerate(raw):
        spec = _feature_spec(entry, f"{where}[{i}]", errors)
        if spec is None:
            continue
        if spec.name in seen:
            errors.append(f"{where}: column {spec.name!r} is listed twice")
        seen.add(spec.name)
        specs.append(spec)
    return tuple(specs)


def _feature_spec(entry: Any, where: str, errors: list[str]) -> FeatureSpec | None:
    if isinstance(entry, str) and entry:
        return FeatureSpec(name=entry)
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
        errors.append(f"{where} must be a column name or a mapping with a `name` (and `kind`, options), got {entry!r}")
        return None
    name = entry["name"]
    at = f"{where} (column {name!r})"
    count = len(errors)
    for key in sorted(set(entry) - FEATURE_OPTIONS):
        errors.append(f"{at}: {key} is not a known option (known: {', '.join(sorted(FEATURE_OPTIONS))})")
    kind = entry.get("kind", "")
    if kind not in ("", *FEATURE_KINDS):
        errors.append(f"{at}: kind must be one of {', '.join(FEATURE_KINDS)}, got {kind!r}")
    buckets = entry.get("buckets", 0)
    if "buckets" in entry and (kind != "categorical" or not isinstance(buckets, int) or isinstance(buckets, bool)
                               or not 2 <= buckets <= 4096):
        errors.append(f"{at}: buckets must be an integer in [2, 4096] on a categorical column, got {buckets!r}")
    vocabulary = entry.get("vocabulary")
    if vocabulary is not None:
        if kind != "categorical":
            errors.append(f"{at}: a vocabulary needs kind: categorical, got kind {kind or '(inferred)'!r}")
        if not isinstance(vocabulary, list) or not vocabulary:
            errors.append(f"{at}: vocabulary must be a non-empty list of values, got {vocabulary!r}")
        elif any(isinstance(v, (list, dict)) or v is None for v in vocabulary):
            errors.append(f"{at}: vocabulary values must be plain strings, numbers or booleans")
        elif len({str(v) for v in vocabulary}) != len(vocabulary):
            errors.append(f"{at}: vocabulary lists a value twice")
        if "buckets" in entry:
            errors.append(f"{at}: give either a vocabulary or buckets, not both")
    parts = entry.get("parts", [])
    if "parts" in entry and (kind != "datetime" or not isinstance(parts, list) or not parts
                             or any(p not in DATETIME_PARTS for p in parts)):
        errors.append(f"{at}: parts must be a non-empty list of {', '.join(DATETIME_PARTS)} on a datetime column, "
                      f"got {parts!r}")
    if len(errors) > count:
        return FeatureSpec(name=name)  # reported above; kept so the list does not read as empty
    return FeatureSpec(name=name, kind=kind, buckets=buckets,
                       vocabulary=tuple(vocabulary) if isinstance(vocabulary, list) else None, parts=tuple(parts))


def _check_ranges(params: Params, errors: list[str]) -> None:
    def get(path: str) -> Any:
        obj: Any = params
        for part in path.split("."):
            obj = getattr(obj, part)
        return obj

    for path, choices in CHOICES.items():
        if get(path) not in choices:
            errors.append(f"{path} must be one of {', '.join(choices)}, got {get(path)!r}")
    for path in POSITIVE:
        if get(path) < 1:
            errors.append(f"{path} must be >= 1, got {get(path)!r}")
    for path in FRACTIONS:
        if not 0 <= get(path) < 1:
            errors.append(f"{path} must be in [0, 1), got {get(path)!r}")
    if params.sisa.shards < 2:
        errors.append(f"sisa.shards must be >= 2 (the MIA audit uses the other shards as references), got {params.sisa.shards}")
    domain = params.data.label_domain
    if len(domain) < 2:
        errors.append(f"data.label_domain must list at least two labels, got {list(domain)}")
    if len({type(v) for v in domain}) > 1:
        errors.append(f"data.label_domain must list integers or strings, not both, got {list(domain)}")
    if len(set(domain)) != len(domain):
        errors.append(f"data.label_domain lists a label twice: {list(domain)}")
    if not params.data.columns.features:
        errors.append("data.columns.features must list at least one feature column")
    if params.dp.target_epsilon <= 0:
        errors.append(f"dp.target_epsilon must be > 0, got {params.dp.target_epsilon}")
    if not 0 < params.dp.delta < 1:
        errors.append(f"dp.delta must be in (0, 1), got {params.dp.delta}")
    lineage = params.openlineage
    if lineage.transport == "http" and not lineage.url.startswith(("http://", "https://")):
        errors.append(f"openlineage.url must be an http(s):// address when openlineage.transport is http, "
                      f"got {lineage.url!r}")
    if lineage.transport == "file" and not lineage.file:
        errors.append("openlineage.file must name a file when openlineage.transport is file")
    if params.dp.max_grad_norm <= 0:
        errors.append(f"dp.max_grad_norm must be > 0, got {params.dp.max_grad_norm}")
    if params.dp.batch_size < 0:
        errors.append(f"dp.batch_size must be >= 0 (0: train.batch_size), got {params.dp.batch_size}")
    if params.dp.lr < 0:
        errors.append(f"dp.lr must be >= 0 (0: train.lr), got {params.dp.lr}")


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml where PyYAML has it: ~10x faster


def parse_yaml(text: str) -> Any:
    """`yaml.safe_load`, through libyaml when available (params and dvc.lock are read many times a run)."""
    return yaml.load(text, Loader=_YAML_LOADER)


def _read_yaml(path: Path) -> Any:
    if not path.exists():
        raise ConfigError(f"{path} does not exist. Run `oblivio init DIR` to create a workspace with defaults.")
    try:
        return parse_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None


def _raise_if(errors: list[str], path: Path) -> None:
    if errors:
        listing = "\n".join(f"  - {e}" for e in errors)
        raise ConfigError(f"{path.name} has {len(errors)} problem(s):\n{listing}\nFix them in {path} and run again.")


def parse_params(raw: Any, path: Path = Path("params.yaml")) -> Params:
    errors: list[str] = []
    params = _build(Params, raw, "", errors)
    _check_ranges(params, errors)  # on the values that parsed; the others kept their defaults
    _raise_if(errors, path)
    return params


def load_params(path: Path) -> Params:
    return parse_params(_read_yaml(path), path)


ENV_OVERRIDES = {
    "MLFLOW_TRACKING_URI": "tracking_uri",
    "MLFLOW_REGISTRY_URI": "registry_uri",
    "MLFLOW_EXPERIMENT_NAME": "experiment",
}


def load_mlflow_config(path: Path, root: Path) -> MlflowConfig:
    """mlflow.yaml with `MLFLOW_*` environment overrides; relative paths resolved against `root`."""
    errors: list[str] = []
    cfg = _build(MlflowConfig, _read_yaml(path), "", errors)
    _raise_if(errors, path)
    overrides = {f: os.environ[v] for v, f in ENV_OVERRIDES.items() if os.environ.get(v)}
    cfg = dataclasses.replace(cfg, **overrides)
    return dataclasses.replace(
        cfg,
        tracking_uri=_absolute_uri(cfg.tracking_uri, root),
        registry_uri=_absolute_uri(cfg.registry_uri or cfg.tracking_uri, root),
        artifact_location=str((root / cfg.artifact_location).resolve())
        if cfg.artifact_location and "://" not in cfg.artifact_location
        else cfg.artifact_location,
    )


def _absolute_uri(uri: str, root: Path) -> str:
    """`sqlite:///mlflow.db` means the workspace's file; MLflow needs it absolute."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str((root / uri[len(prefix):]).resolve())
    return uri


def params_as_flat_dict(params: Params) -> dict[str, Any]:
    """`{"train.lr": 0.002, ...}` for MLflow params (no personal data lives in params)."""
    flat: dict[str, Any] = {}

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                walk(value, key + ".")
            elif f.name == "feature_specs":  # declared kinds: column names and options, no data
                declared = [{k: v for k, v in dataclasses.asdict(s).items() if v not in ("", 0, (), None)}
                            for s in value if s.kind or s.vocabulary or s.buckets or s.parts]
                text = json.dumps(declared, default=list)
                # MLflow caps a param at 6,000 characters: long vocabularies are logged by digest
                flat[key] = declared if len(text) <= 5000 else "sha256:" + hashlib.sha256(text.encode()).hexdigest()
            else:
                flat[key] = list(value) if isinstance(value, tuple) else value

    walk(params, "")
    return flat


__all__ = ["Params", "MlflowConfig", "load_params", "parse_params", "load_mlflow_config", "params_as_flat_dict"]
