"""The membership-inference audit of a published ensemble, with no extra training.

Each training record is a member of exactly one shard model; the other S-1 shard models
are its free "out" references (offline LiRA and offline RMIA, RMIA's own setting); the
gates read the worst of every attack. The deployed ensemble is attacked with a
population (loss) attack: members are the training records (on a large table, a fixed
sample: see `MIA_MEMBERS`), non-members the held-out people. Figures, curves and caveats
go to `reports/`; the summary feeds the gates.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from oblivio.audit.mia import AttackResult, evaluate_attack, logit_margin, probability_margin, shard_attacks
from oblivio.audit.roc_plot import plot_roc
from oblivio.data.columns import RECORD_KEY, SUBJECT_KEY
from oblivio.data.sharding import read_shard, shard_path
from oblivio.ensemble import AuditCache, Ensemble, aggregate

REPORT = "mia.json"
ROC_PLOT = "mia_roc.svg"
# At most this many members are attacked, split evenly over the shards, so the audit's
# memory does not grow with the table. A larger shard contributes a sample: its records
# with the smallest keyed record hashes, uniform over records and fixed by the secret.
MIA_MEMBERS = 50_000
N_BOOTSTRAP = 200  # resamples behind each 95% interval
INTERVALS_PENDING = "intervals_pending"  # in a report whose non-gating intervals are still to be drawn
DEFERRED = ("ensemble", "shards", "rmia_shards")  # the report's entries whose intervals may be drawn later


def _margins_of(logits: np.ndarray, y: np.ndarray, aggregation: str) -> tuple[np.ndarray, np.ndarray]:
    """(per-shard logit margins (n, S), ensemble probability margins (n,)), in float64."""
    per_shard = np.stack([logit_margin(lg, y) for lg in logits], axis=1)
    return per_shard, probability_margin(aggregate(logits, aggregation), y)


def _margins(ensemble: Ensemble, raw: pd.DataFrame, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _margins_of(ensemble.shard_logits(ensemble.featurize(raw)), y, ensemble.aggregation)


@dataclass(frozen=True)
class _AttackInputs:
    """Every attack's scores but the forget set's, from the published models."""

    shard_args: dict  # `shard_attacks`' arguments: every shard model's margins, members' shards, holdout margins
    ensemble_members: np.ndarray  # the ensemble's probability margins on the (sampled) members
    ensemble_holdout: np.ndarray  # ... and on the held-out rows
    notes: tuple[str, ...]  # the member sample's caveat, if the members are a sample


def _attack_inputs(*, ensemble: Ensemble, holdout: tuple[np.ndarray, np.ndarray], shards_dir: Path, n_shards: int,
                   features: list[str], label: str, labels: list, seed: int, cache: AuditCache) -> _AttackInputs:
    scored, n_train = score_members(ensemble, shards_dir=shards_dir, n_shards=n_shards, features=features,
                                    label=label, labels=labels, cache=cache)
    margins = [(k, *_margins_of(logits, y, ensemble.aggregation)) for k, y, logits in scored if len(y)]
    train_shard_m, train_ens_m = np.concatenate([m for _, m, _ in margins]), np.concatenate([e for _, _, e in margins])
    member_of = np.concatenate([np.full(len(e), k) for k, _, e in margins])
    hold_shard_m, hold_ens_m = _margins_of(*holdout, ensemble.aggregation)
    sampled = (f"members are a sample: {len(train_ens_m):,} of {n_train:,} training records (at most "
               f"{MIA_MEMBERS // n_shards:,} per shard, smallest keyed record hashes)",)
    return _AttackInputs(
        shard_args={"margins": train_shard_m, "member_of": member_of, "holdout_margins": hold_shard_m, "rmia": True,
                    "seed": seed},
        ensemble_members=train_ens_m, ensemble_holdout=hold_ens_m, notes=sampled if len(train_ens_m) < n_train else ())


def _attack(inputs: _AttackInputs, *, seed: int, n_bootstrap: int, executor: Executor | None,
            meanwhile: Callable[[], AttackResult | None] = lambda: None
            ) -> tuple[AttackResult, list[AttackResult], AttackResult | None]:
    """The ensemble's and every shard model's attacks, and `meanwhile()`'s result: with `executor`, a
    thread waits on its workers, which draw the shard attacks' bootstraps, while the rest runs here."""
    shard_args = {**inputs.shard_args, "n_bootstrap": n_bootstrap, "executor": executor}
    with ThreadPoolExecutor(1) as side:
        pending = side.submit(shard_attacks, **shard_args) if executor is not None else None
        population = evaluate_attack(attack="population/ensemble", member_scores=inputs.ensemble_members,
                                     nonmember_scores=inputs.ensemble_holdout, seed=seed, n_bootstrap=n_bootstrap,
                                     notes=inputs.notes)
        extra = meanwhile()
        attacked = pending.result() if pending else shard_attacks(**shard_args)
    return population, attacked, extra


def membership_audit(*, ensemble: Ensemble, holdout: tuple[np.ndarray, np.ndarray], shards_dir: Path,
                     n_shards: int, features: list[str], label: str, labels: list, reports_dir: Path,
                     forget: pd.DataFrame | None = None, seed: int = 0, cache: AuditCache | None = None,
                     executor: Executor | None = None, intervals: bool = True) -> dict:
    """Attack the ensemble and every shard model; returns the summary the gates read.

    `holdout`: every shard model's logits (S, n, classes) on the held-out rows and their
    label indices, which the accuracy report has just computed. `forget`: rows just erased
    (still quarantined); they must now score like non-members. `cache`: inputs and logits
    kept from earlier audits in this process (the members' are looked up there, and added).
    `executor`: worker processes for the shard attacks' bootstraps, which then run beside the
    ensemble's and the forget set's attacks here; the summary is the same either way.
    `intervals` False: the bootstrap intervals of the ensemble and shard attacks, which no
    gate reads, are left for `attach_intervals`; the forget set's, which a gate reads, are drawn.
    """
    inputs = _attack_inputs(ensemble=ensemble, holdout=holdout, shards_dir=shards_dir, n_shards=n_shards,
                            features=features, label=label, labels=labels, seed=seed, cache=cache or AuditCache())

    def forget_set() -> AttackResult | None:
        if forget is None or not len(forget):
            return None
        _, forget_m = _margins(ensemble, *_arrays(forget, features, label, labels))
        return evaluate_attack(attack="population/forget-set", member_scores=forget_m,
                               nonmember_scores=inputs.ensemble_holdout, seed=seed, n_bootstrap=N_BOOTSTRAP,
                               member_groups=forget[SUBJECT_KEY].to_numpy())

    population, attacked, erased = _attack(inputs, seed=seed, n_bootstrap=N_BOOTSTRAP if intervals else 0,
                                           executor=executor if intervals else None, meanwhile=forget_set)
    results = [population, *attacked]
    summary = summarise(population, attacked)
    if erased is not None:
        summary["forget_set"] = {**erased.to_json(), "n_subjects": int(forget[SUBJECT_KEY].nunique())}
        results.append(erased)
    if not intervals:
        summary[INTERVALS_PENDING] = True
    reports_dir.mkdir(parents=True, exist_ok=True)
    plot_roc([(r.attack, r.fpr, r.tpr) for r in results], reports_dir / ROC_PLOT)
    (reports_dir / REPORT).write_text(json.dumps(summary, indent=1, sort_keys=True))
    return summary


def attach_intervals(*, ensemble: Ensemble, holdout: tuple[np.ndarray, np.ndarray], shards_dir: Path,
                     n_shards: int, features: list[str], label: str, labels: list, reports_dir: Path, seed: int = 0,
                     cache: AuditCache | None = None, executor: Executor | None = None) -> bool:
    """Draw the intervals a `membership_audit(intervals=False)` left out, into its report.

    The same models and members give the same scores, so the report becomes what an audit
    with intervals would have written. False when the report has none pending. Raises
    AuditChanged if the models or data changed since the audit (a point figure differs).
    """
    path = reports_dir / REPORT
    report = json.loads(path.read_text())
    if not report.get(INTERVALS_PENDING):
        return False
    inputs = _attack_inputs(ensemble=ensemble, holdout=holdout, shards_dir=shards_dir, n_shards=n_shards,
                            features=features, label=label, labels=labels, seed=seed, cache=cache or AuditCache())
    population, attacked, _ = _attack(inputs, seed=seed, n_bootstrap=N_BOOTSTRAP, executor=executor)
    completed = summarise(population, attacked)
    for key in DEFERRED:
        if _without_intervals(report[key]) != _without_intervals(completed[key]):
            raise AuditChanged(f"the audit in {path} no longer matches the published models and data; "
                               "its intervals were not drawn (the next audit draws them)")
    report.update({key: completed[key] for key in DEFERRED})
    del report[INTERVALS_PENDING]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1, sort_keys=True))
    tmp.replace(path)
    return True


class AuditChanged(Exception):
    """The report's audit is not of the models and data published now."""


def _without_intervals(results: dict | list[dict]) -> dict | list[dict]:
    if isinstance(results, list):
        return [_without_intervals(r) for r in results]
    return {k: v for k, v in results.items() if k != "intervals"}


def summarise(population: AttackResult, shard_results: list[AttackResult]) -> dict:
    """The report of every attack; `max_*` (what the gates read) are the worst over all of them."""
    results = [population, *shard_results]
    return {
        "ensemble": population.to_json(),
        "shards": [r.to_json() for r in shard_results if r.attack.startswith("lira")],
        "rmia_shards": [r.to_json() for r in shard_results if r.attack.startswith("rmia")],
        "worst_attack": max(results, key=lambda r: r.auc).attack,
        "max_auc": max(r.auc for r in results),
        "max_tpr_at_1pct_fpr": max(r.tpr_at_1pct_fpr for r in results),
        "max_tpr_at_0_1pct_fpr": max(r.tpr_at_0_1pct_fpr for r in results),
        "notes": sorted({n for r in results for n in r.notes}),
    }


def score_members(ensemble: Ensemble, *, shards_dir: Path, n_shards: int, features: list[str], label: str,
                  labels: list, cache: AuditCache) -> tuple[list[tuple[int, np.ndarray, np.ndarray]], int]:
    """Per shard: (index, label indices, every shard model's logits) of its members; and how
    many records trained. Partitions are read one at a time (unless `cache` holds them) and
    only their members are kept."""
    scored, n_train = [], 0
    cap = MIA_MEMBERS // n_shards
    for k in range(n_shards):
        path = shard_path(shards_dir, k)
        n_train += pq.ParquetFile(path).metadata.num_rows
        y, logits = cache.scored(path, f"members (at most {cap})", ensemble,
                                 lambda: _arrays(_sample(read_shard(shards_dir, k), cap), features, label, labels))
        scored.append((k, y, logits))
    return scored, n_train


def _arrays(frame: pd.DataFrame, features: list[str], label: str, labels: list) -> tuple[pd.DataFrame, np.ndarray]:
    """(raw feature columns, label indices) of the rows."""
    index = {v: i for i, v in enumerate(labels)}
    return frame[features], frame[label].map(index).to_numpy(np.int64)


def _sample(part: pd.DataFrame, cap: int) -> pd.DataFrame:
    """The partition's rows with the `cap` smallest keyed record hashes, in partition order."""
    if len(part) <= cap:
        return part
    return part.iloc[np.sort(np.argsort(part[RECORD_KEY].to_numpy(), kind="stable")[:cap])]


def headline(summary: dict) -> dict:
    """The few numbers that go into metrics, tags and gates."""
    out = {
        "ensemble_auc": summary["ensemble"]["auc"],
        "ensemble_tpr_at_1pct_fpr": summary["ensemble"]["tpr_at_1pct_fpr"],
        "max_auc": summary["max_auc"],
        "max_tpr_at_1pct_fpr": summary["max_tpr_at_1pct_fpr"],
        "max_tpr_at_0_1pct_fpr": summary["max_tpr_at_0_1pct_fpr"],
        "shard_auc_mean": float(np.mean([s["auc"] for s in summary["shards"]])),
    }
    if summary.get("rmia_shards"):
        out["lira_max_auc"] = max(s["auc"] for s in summary["shards"])
        out["rmia_max_auc"] = max(s["auc"] for s in summary["rmia_shards"])
        out["rmia_max_tpr_at_1pct_fpr"] = max(s["tpr_at_1pct_fpr"] for s in summary["rmia_shards"])
        out["rmia_shard_auc_mean"] = float(np.mean([s["auc"] for s in summary["rmia_shards"]]))
    if "worst_attack" in summary:
        out["worst_attack"] = summary["worst_attack"]
    if "forget_set" in summary:
        out["forget_set_auc"] = summary["forget_set"]["auc"]
        out["forget_set_auc_low"] = summary["forget_set"]["intervals"]["auc"]["low"]
        out["forget_set_size"] = summary["forget_set"]["n_members"]
        out["forget_set_subjects"] = summary["forget_set"]["n_subjects"]
    return out
