"""params.yaml / mlflow.yaml parsing: templates, unknown keys, types, choices, ranges, URIs."""
from __future__ import annotations

import copy
import dataclasses
import re
from importlib import resources
from pathlib import Path

import pytest
import yaml

from oblivio.config import (
    MlflowConfig,
    Params,
    load_mlflow_config,
    load_params,
    params_as_flat_dict,
    parse_params,
)
from oblivio.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = resources.files("oblivio.templates")


def template_raw() -> dict:
    return yaml.safe_load(TEMPLATES.joinpath("params.yaml").read_text())


def minimal_raw(**overrides) -> dict:
    """The smallest valid params: features must be declared, everything else defaults."""
    raw = {"data": {"columns": {"features": ["f1", "f2"]}}}
    raw.update(overrides)
    return raw


def problems(err: ConfigError) -> list[str]:
    return [line[4:] for line in str(err).splitlines() if line.startswith("  - ")]


def header_count(err: ConfigError) -> int:
    m = re.search(r"has (\d+) problem\(s\)", str(err))
    assert m, str(err)
    return int(m.group(1))


# --- the shipped files ---------------------------------------------------------------

def test_shipped_params_template_parses_to_its_declared_values() -> None:
    params = load_params(Path(str(TEMPLATES.joinpath("params.yaml"))))
    assert isinstance(params, Params)
    assert params.seed == 20240601
    assert params.data.columns.subject_id == "idcode"
    assert params.data.columns.features[:3] == ("year", "birth_yr", "age")
    assert len(params.data.columns.features) == 19
    kinds = {s.name: s for s in params.data.columns.feature_specs}
    assert kinds["ind_code"].kind == "categorical" and kinds["ind_code"].vocabulary == tuple(range(1, 13))
    assert kinds["year"].kind == ""  # inferred from the column's type
    assert params.data.label_domain == (0, 1)
    assert params.data.min_rows == 1000
    assert params.sisa.shards == 8 and params.sisa.slices == 4
    assert params.train.hidden == (64, 64)
    assert params.dp.delta == pytest.approx(1e-5) and isinstance(params.dp.delta, float)
    assert params.gates.min_accuracy == 0.6
    assert params.executor.dask_address == ""
    assert params.schedule.cron == "0 2 * * *"


def test_shipped_mlflow_template_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    cfg = load_mlflow_config(Path(str(TEMPLATES.joinpath("mlflow.yaml"))), tmp_path)
    assert cfg.model_name == "oblivio-ensemble"
    assert (cfg.candidate_alias, cfg.champion_alias) == ("candidate", "champion")


@pytest.mark.parametrize("name, template", [("params.yaml", "params.yaml"), ("mlflow.yaml", "mlflow.yaml"),
                                            ("dvc.yaml", "dvc.yaml.template")])
def test_repo_root_files_are_byte_identical_to_templates(name: str, template: str) -> None:
    root_file = REPO_ROOT / name
    assert root_file.is_file(), f"{root_file} is missing"
    assert root_file.read_bytes() == TEMPLATES.joinpath(template).read_bytes(), (
        f"{name} at the repo root and src/oblivio/templates/{template} have drifted apart"
    )


def test_dvc_at_the_repo_root_sees_one_pipeline_only() -> None:
    """The shipped template is not a dvc.yaml, so DVC does not collect it as a second pipeline
    (whose outputs would never exist and keep `dvc status` dirty)."""
    import subprocess
    import sys

    dvc = Path(sys.executable).parent / "dvc"
    listed = subprocess.run([str(dvc), "stage", "list", "--all"], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=True).stdout
    assert "templates" not in listed
    assert sorted(line.split()[0] for line in listed.splitlines() if line.strip()) == ["evaluate", "ingest", "train"]


# --- unknown keys -----------------------------------------------------------------------

def test_unknown_top_level_key_is_reported_by_name() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_params(minimal_raw(sede=3))
    (msg,) = problems(exc.value)
    assert msg.startswith("sede is not a known key")
    assert "seed" in msg  # the known keys are listed as a hint


def test_unknown_nested_key_is_reported_with_dotted_path() -> None:
    raw = minimal_raw(train={"epochz": 3})
    with pytest.raises(ConfigError) as exc:
        parse_params(raw)
    (msg,) = problems(exc.value)
    assert msg.startswith("train.epochz is not a known key")
    assert "epochs_per_slice" in msg


def test_unknown_deeply_nested_key_has_full_path() -> None:
    raw = minimal_raw()
    raw["data"]["columns"]["labell"] = "y"
    with pytest.raises(ConfigError) as exc:
        parse_params(raw)
    assert problems(exc.value)[0].startswith("data.columns.labell is not a known key")


# --- types ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("section", "key", "value", "needle"),
    [
        ("train", "epochs_per_slice", "four", "train.epochs_per_slice must be an integer, got 'four'"),
        ("train", "epochs_per_slice", True, "train.epochs_per_slice must be an integer, got True"),
        ("sisa", "shards", 2.5, "sisa.shards must be an integer, got 2.5"),
        ("train", "lr", False, "train.lr must be a number, got False"),
        ("dp", "enabled", "yes please", "dp.enabled must be true or false, got 'yes please'"),
        ("train", "hidden", 64, "train.hidden must be a list"),
        ("data", "label_domain", "0,1", "data.label_domain must be a list"),
    ],
)
def test_wrong_type_is_reported(section: str, key: str, value: object, needle: str) -> None:
    raw = minimal_raw()
    raw.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError) as exc:
        parse_params(raw)
    (msg,) = problems(exc.value)
    assert msg.startswith(needle), msg


def test_wrong_item_type_inside_a_list_names_the_index() -> None:
    raw = minimal_raw(train={"hidden": [64, "wide"]})
    with pytest.raises(ConfigError) as exc:
        parse_params(raw)
    (msg,) = problems(exc.value)
    assert msg.startswith("train.hidden[1] must be an integer, got 'wide'")


def test_integer_is_accepted_for_a_float_and_converted() -> None:
    params = parse_params(minimal_raw(train={"lr": 1}))
    assert params.train.lr == 1.0 and isinstance(params.train.lr, float)


def test_section_that_is_not_a_mapping_is_reported() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_params(minimal_raw(sisa=5))
    (msg,) = problems(exc.value)
    assert msg.startswith("sisa must be a mapping")


def test_file_that_is_not_a_mapping_is_reported() -> None:
    with pytest.raises(ConfigError, match="the file must be a mapping"):
        parse_params(["seed", 1])


def test_several_problems_are_reported_together_in_one_error() -> None:
    raw = minimal_raw(
        sede=1,
        train={"epochz": 3, "batch_size": "big", "hidden": 64},
        dp={"enabled": 1},
    )
    with pytest.raises(ConfigError) as exc:
        parse_params(raw, Path("/ws/params.yaml"))
    msgs = problems(exc.value)
    assert len(msgs) == 5
    assert header_count(exc.value) == 5
    assert str(exc.value).startswith("params.yaml has 5 problem(s):")
    assert "/ws/params.yaml" in str(exc.value)
    joined = "\n".join(msgs)
    for path in ("sede", "train.epochz", "train.batch_size", "train.hidden", "dp.enabled"):
        assert re.search(rf"^{re.escape(path)} ", joined, re.M), path


# --- choices and ranges ------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("section", "key", "value", "path"),
    [
        ("executor", "kind", "kubernetes", "executor.kind"),
        ("sisa", "aggregation", "median", "sisa.aggregation"),
        ("train", "model", "transformer", "train.model"),
        ("dp", "accountant", "gdp", "dp.accountant"),
    ],
)
def test_choices_are_enforced(section: str, key: str, value: str, path: str) -> None:
    raw = minimal_raw()
    raw.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError) as exc:
        parse_params(raw)
    (msg,) = problems(exc.value)
    assert msg.startswith(f"{path} must be one of")
    assert repr(value) in msg


@pytest.mark.parametrize("kind", ["sequential", "thread", "process", "dask"])
def test_every_listed_executor_kind_is_accepted(kind: str) -> None:
    assert parse_params(minimal_raw(executor={"kind": kind})).executor.kind == kind


@pytest.mark.parametrize("shards", [1, 0, -3])
def test_fewer_than_two_shards_is_rejected(shards: int) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_params(minimal_raw(sisa={"shards": shards}))
    (msg,) = problems(exc.value)
    assert msg.startswith("sisa.shards must be >= 2")


def test_two_shards_is_the_minimum_accepted() -> None:
    assert parse_params(minimal_raw(sisa={"shards": 2})).sisa.shards == 2


@pytest.mark.parametrize("fraction", [1, 1.0, 1.5, -0.1])
def test_holdout_fraction_outside_zero_one_is_rejected(fraction: float) -> None:
    raw = minimal_raw()
    raw["data"]["holdout_fraction"] = fraction
    with pytest.raises(ConfigError) as exc:
        parse_params(raw)
    (msg,) = problems(exc.value)
    assert msg.startswith("data.holdout_fraction must be in [0, 1)")


@pytest.mark.parametrize("fraction", [0, 0.0, 0.999])
def test_holdout_fraction_inside_range_is_accepted(fraction: float) -> None:
    raw = minimal_raw()
    raw["data"]["holdout_fraction"] = fraction
    assert parse_params(raw).data.holdout_fraction == float(fraction)


@pytest.mark.parametrize(
    ("section", "key", "value", "path"),
    [
        ("sisa", "slices", 0, "sisa.slices"),
        ("train", "epochs_per_slice", 0, "train.epochs_per_slice"),
        ("train", "batch_size", -1, "train.batch_size"),
        ("executor", "max_workers", 0, "executor.max_workers"),
    ],
)
def test_positive_integers_are_enforced(section: str, key: str, value: int, path: str) -> None:
    raw = minimal_raw()
    raw.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError) as exc:
        parse_params(raw)
    (msg,) = problems(exc.value)
    assert msg.startswith(f"{path} must be >= 1")


def test_range_problems_are_collected_together() -> None:
    raw = minimal_raw(sisa={"shards": 1, "aggregation": "median"}, executor={"kind": "k8s"})
    raw["data"]["holdout_fraction"] = 1.0
    with pytest.raises(ConfigError) as exc:
        parse_params(raw)
    assert header_count(exc.value) == 4
    assert len(problems(exc.value)) == 4


def test_missing_features_and_single_label_are_rejected() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_params({"data": {"label_domain": [1]}})
    msgs = problems(exc.value)
    assert len(msgs) == 2
    assert any(m.startswith("data.label_domain must list at least two labels") for m in msgs)
    assert any(m.startswith("data.columns.features must list at least one") for m in msgs)


@pytest.mark.parametrize("enabled", [True, False])
def test_dp_values_are_checked_even_when_disabled(enabled: bool) -> None:
    """A wrong DP setting is a mistake waiting for the day DP is switched on."""
    with pytest.raises(ConfigError, match=r"dp.target_epsilon must be > 0") as err:
        parse_params(minimal_raw(dp={"enabled": enabled, "target_epsilon": 0, "delta": 2.0}))
    assert "dp.delta must be in (0, 1)" in str(err.value)


def test_load_params_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_params(bad)


def test_load_params_reports_problems_found_in_the_file(tmp_path: Path) -> None:
    raw = template_raw()
    raw["train"]["epochz"] = 3
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as exc:
        load_params(path)
    assert problems(exc.value) and problems(exc.value)[0].startswith("train.epochz is not a known key")
    assert str(path) in str(exc.value)


# --- mlflow.yaml ---------------------------------------------------------------------------

@pytest.fixture
def no_mlflow_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def write_mlflow(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "mlflow.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_relative_sqlite_uri_becomes_absolute_under_root(tmp_path: Path, no_mlflow_env) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    path = write_mlflow(tmp_path, {"tracking_uri": "sqlite:///state/mlflow.db"})
    cfg = load_mlflow_config(path, root)
    expected = "sqlite:///" + str(root.resolve()) + "/state/mlflow.db"
    assert cfg.tracking_uri == expected
    assert cfg.registry_uri == expected  # empty registry_uri = the tracking URI
    assert cfg.artifact_location == str(root.resolve()) + "/mlartifacts"


def test_absolute_sqlite_and_server_uris_are_left_alone(tmp_path: Path, no_mlflow_env) -> None:
    path = write_mlflow(tmp_path, {
        "tracking_uri": "sqlite:////var/lib/mlflow.db",
        "registry_uri": "http://registry:5000",
        "artifact_location": "s3://bucket/artifacts",
    })
    cfg = load_mlflow_config(path, tmp_path)
    assert cfg.tracking_uri == "sqlite:////var/lib/mlflow.db"
    assert cfg.registry_uri == "http://registry:5000"
    assert cfg.artifact_location == "s3://bucket/artifacts"


def test_registry_uri_defaults_to_tracking_uri(tmp_path: Path, no_mlflow_env) -> None:
    path = write_mlflow(tmp_path, {"tracking_uri": "http://mlflow:5000", "registry_uri": ""})
    cfg = load_mlflow_config(path, tmp_path)
    assert cfg.registry_uri == "http://mlflow:5000"


def test_environment_overrides_file(tmp_path: Path, no_mlflow_env) -> None:
    path = write_mlflow(tmp_path, {"tracking_uri": "sqlite:///mlflow.db", "experiment": "from-file"})
    no_mlflow_env.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    no_mlflow_env.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    cfg = load_mlflow_config(path, tmp_path)
    assert cfg.tracking_uri == "http://tracking.example:5000"
    assert cfg.registry_uri == "http://tracking.example:5000"
    assert cfg.experiment == "from-env"


def test_relative_sqlite_uri_from_environment_is_made_absolute(tmp_path: Path, no_mlflow_env) -> None:
    path = write_mlflow(tmp_path, {})
    no_mlflow_env.setenv("MLFLOW_TRACKING_URI", "sqlite:///other.db")
    cfg = load_mlflow_config(path, tmp_path)
    assert cfg.tracking_uri == "sqlite:///" + str(tmp_path.resolve()) + "/other.db"


def test_registry_env_overrides_only_registry(tmp_path: Path, no_mlflow_env) -> None:
    path = write_mlflow(tmp_path, {"tracking_uri": "http://t:5000"})
    no_mlflow_env.setenv("MLFLOW_REGISTRY_URI", "http://r:5000")
    cfg = load_mlflow_config(path, tmp_path)
    assert (cfg.tracking_uri, cfg.registry_uri) == ("http://t:5000", "http://r:5000")


def test_empty_mlflow_file_gives_defaults(tmp_path: Path, no_mlflow_env) -> None:
    path = tmp_path / "mlflow.yaml"
    path.write_text("")
    cfg = load_mlflow_config(path, tmp_path)
    assert cfg.tracking_uri == "sqlite:///" + str(tmp_path.resolve()) + "/mlflow.db"
    assert cfg.model_name == MlflowConfig.model_name == "oblivio-ensemble"


def test_mlflow_unknown_key_and_wrong_type_are_reported_together(tmp_path: Path, no_mlflow_env) -> None:
    path = write_mlflow(tmp_path, {"tracking_url": "x", "experiment": 7})
    with pytest.raises(ConfigError) as exc:
        load_mlflow_config(path, tmp_path)
    assert header_count(exc.value) == 2
    msgs = problems(exc.value)
    assert any(m.startswith("tracking_url is not a known key") for m in msgs)
    assert any(m.startswith("experiment must be a string, got 7") for m in msgs)
    assert str(exc.value).startswith("mlflow.yaml has 2 problem(s)")


# --- flat dict -----------------------------------------------------------------------------

def test_params_as_flat_dict_uses_dotted_keys_and_lists() -> None:
    raw = minimal_raw(seed=7, train={"lr": 0.01, "hidden": [32, 16]})
    flat = params_as_flat_dict(parse_params(raw))
    assert flat["seed"] == 7
    assert flat["train.lr"] == 0.01
    assert flat["train.hidden"] == [32, 16]
    assert flat["data.columns.features"] == ["f1", "f2"]
    assert flat["data.columns.record_id"] == "record_id"
    assert flat["sisa.shards"] == 8
    assert flat["executor.kind"] == "process"
    # only leaves: no key names a section, every value is a scalar or list
    assert "train" not in flat and "data.columns" not in flat
    assert all(isinstance(v, (int, float, str, bool, list)) for v in flat.values())
    assert all(re.fullmatch(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*", k) for k in flat)


def test_parse_does_not_mutate_input() -> None:
    raw = minimal_raw(train={"hidden": [8]})
    before = copy.deepcopy(raw)
    parse_params(raw)
    assert raw == before


def test_type_and_range_problems_are_reported_together() -> None:
    raw = minimal_raw(train={"batch_size": "big"}, sisa={"shards": 1})
    with pytest.raises(ConfigError) as exc:
        parse_params(raw)
    assert header_count(exc.value) == 2


def test_a_copied_workspace_is_refused_before_it_touches_the_originals_artifacts(tmp_path: Path,
                                                                                  no_mlflow_env) -> None:
    """MLflow keeps the experiment's artifact location as an absolute URI: a copy of a
    workspace would log to, and purge, the original's `mlartifacts/`."""
    import shutil

    from oblivio import tracking
    from oblivio.errors import WorkspaceError

    original, copy_ = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    mlflow_yaml = write_mlflow(tmp_path, {"tracking_uri": "sqlite:///mlflow.db"})
    experiment = tracking.ensure_experiment(load_mlflow_config(mlflow_yaml, original))
    shutil.copytree(original, copy_)
    with pytest.raises(WorkspaceError, match="copied or moved") as exc:
        tracking.ensure_experiment(load_mlflow_config(mlflow_yaml, copy_))
    assert str(original.resolve() / "mlartifacts") in str(exc.value)
    assert tracking.ensure_experiment(load_mlflow_config(mlflow_yaml, original)) == experiment


def test_declared_feature_kinds_are_logged_as_params_and_long_vocabularies_by_digest() -> None:
    from oblivio.config import params_as_flat_dict

    short = parse_params({"data": {"columns": {"features": [
        "a", {"name": "plan", "kind": "categorical", "vocabulary": ["basic", "pro"]}]}}})
    assert params_as_flat_dict(short)["data.columns.feature_specs"] == [
        {"name": "plan", "kind": "categorical", "vocabulary": ("basic", "pro")}]
    long = parse_params({"data": {"columns": {"features": [
        {"name": "zip", "kind": "categorical", "vocabulary": [f"{i:05d}" for i in range(2000)]}]}}})
    assert params_as_flat_dict(long)["data.columns.feature_specs"].startswith("sha256:")


def test_every_default_equals_the_shipped_template_but_the_builtin_tables_own() -> None:
    """A key left out of params.yaml means what the template says it means; only the seed and
    the `data` section (the built-in table's declaration) are the template's own."""
    shipped = load_params(Path(str(TEMPLATES.joinpath("params.yaml"))))
    differ = []

    def walk(a, b, path: str) -> None:
        if dataclasses.is_dataclass(a):
            for f in dataclasses.fields(a):
                walk(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}".lstrip("."))
        elif a != b:
            differ.append(path)

    walk(shipped, Params(), "")
    assert {p for p in differ if p != "seed" and not p.startswith("data.")} == set()
    assert "seed" in differ  # the walk sees scalars at all


def test_openlineage_transport_needs_its_address() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_params(minimal_raw(openlineage={"transport": "http"}))
    assert any("openlineage.url must be an http(s):// address" in p for p in problems(exc.value))
    with pytest.raises(ConfigError) as exc:
        parse_params(minimal_raw(openlineage={"transport": "kafka"}))
    assert any("openlineage.transport must be one of none, http, file" in p for p in problems(exc.value))
    assert parse_params(minimal_raw(openlineage={"transport": "file"})).openlineage.file == "lineage/openlineage.jsonl"
