"""The membership-inference audit of a published ensemble, with no extra training.

Each training record is a member of exactly one shard model; the other S-1 shard models
are its free "out" references (offline LiRA). The deployed ensemble is attacked with a
population (loss) attack: members are all training records, non-members the held-out
people. Figures, curves and caveats go to `reports/`; the summary feeds the gates.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from oblivio.audit.mia import evaluate_attack, logit_margin, probability_margin, shard_lira
from oblivio.audit.roc_plot import plot_roc
from oblivio.data.sharding import SHARD, SUBJECT_KEY, read_holdout, read_shard
from oblivio.ensemble import Ensemble, aggregate

REPORT = "mia.json"
ROC_PLOT = "mia_roc.svg"


def _margins(ensemble: Ensemble, raw: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per-shard logit margins (n, S), ensemble probability margins (n,)), in float64."""
    logits = ensemble.shard_logits(ensemble.featurize(raw))
    per_shard = np.stack([logit_margin(lg, y) for lg in logits], axis=1)
    return per_shard, probability_margin(aggregate(logits, ensemble.aggregation), y)


def membership_audit(*, models_dir: Path, shards_dir: Path, holdout_path: Path, n_shards: int,
                     features: list[str], label: str, labels: list, reports_dir: Path,
                     forget: pd.DataFrame | None = None, seed: int = 0) -> dict:
    """Attack the ensemble and every shard model; returns the summary the gates read.

    `forget`: rows just erased (still quarantined); they must now score like non-members.
    """
    ensemble = Ensemble.load(models_dir)
    index = {v: i for i, v in enumerate(labels)}
    train = pd.concat([read_shard(shards_dir, k) for k in range(n_shards)], ignore_index=True)
    holdout = read_holdout(holdout_path)

    def arrays(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return frame[features].to_numpy(np.float64), frame[label].map(index).to_numpy(np.int64)

    train_shard_m, train_ens_m = _margins(ensemble, *arrays(train))
    hold_shard_m, hold_ens_m = _margins(ensemble, *arrays(holdout))
    shards = shard_lira(margins=train_shard_m, member_of=train[SHARD].to_numpy(), holdout_margins=hold_shard_m,
                        seed=seed)
    population = evaluate_attack(attack="population/ensemble", member_scores=train_ens_m,
                                 nonmember_scores=hold_ens_m, seed=seed)
    results = [population, *shards]
    summary = {
        "ensemble": population.to_json(),
        "shards": [r.to_json() for r in shards],
        "max_auc": max(r.auc for r in results),
        "max_tpr_at_1pct_fpr": max(r.tpr_at_1pct_fpr for r in results),
        "max_tpr_at_0_1pct_fpr": max(r.tpr_at_0_1pct_fpr for r in results),
        "notes": sorted({n for r in results for n in r.notes}),
    }
    if forget is not None and len(forget):
        _, forget_m = _margins(ensemble, *arrays(forget))
        erased = evaluate_attack(attack="population/forget-set", member_scores=forget_m,
                                 nonmember_scores=hold_ens_m, seed=seed, member_groups=forget[SUBJECT_KEY].to_numpy())
        summary["forget_set"] = {**erased.to_json(), "n_subjects": int(forget[SUBJECT_KEY].nunique())}
        results.append(erased)
    reports_dir.mkdir(parents=True, exist_ok=True)
    plot_roc([(r.attack, r.fpr, r.tpr) for r in results], reports_dir / ROC_PLOT)
    (reports_dir / REPORT).write_text(json.dumps(summary, indent=1, sort_keys=True))
    return summary


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
    if "forget_set" in summary:
        out["forget_set_auc"] = summary["forget_set"]["auc"]
        out["forget_set_auc_low"] = summary["forget_set"]["intervals"]["auc"]["low"]
        out["forget_set_size"] = summary["forget_set"]["n_members"]
        out["forget_set_subjects"] = summary["forget_set"]["n_subjects"]
    return out
