"""Section `privacy`: how much the models leak, what DP buys, and what the audits cost.

Seven runs of one workspace on the default data (DP off; DP-SGD at epsilon 1, 4 and 8,
per person (`dp.unit: subject`) and per record) give utility, the membership-inference
audit (offline LiRA and RMIA) and the accounted epsilon side by side, with the accuracy
cost against the DP-off run as a difference. `oblivio audit-dp` then bounds epsilon
empirically at the default settings, with and without DP, and is timed. The MIA audit's
cost is timed in-process against the training it audits, and bench_dp.py gives the
per-epoch price of DP-SGD itself (record and subject level).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (
    REPO, BenchError, Section, Settings, Table, cli_json, figures, log, make_workspace, median, read_params, secs,
    set_params,
)

CONFIGS = {"DP off": {"enabled": False}}
for _unit in ("subject", "record"):
    for _eps in (1.0, 4.0, 8.0):
        CONFIGS[f"DP-SGD per {'person' if _unit == 'subject' else 'record'}, epsilon {_eps:g}"] = {
            "enabled": True, "unit": _unit, "target_epsilon": _eps}
AUDIT_CANARIES = 1000


def one_config(ws: Path, dp: dict) -> dict:
    """One `run` with these DP settings; the worst single shard model's AUC comes from reports/mia.json."""
    set_params(ws, {"dp": dp})
    result, wall = cli_json(ws, "run", "--no-baseline")
    report = json.loads((ws / "reports" / "mia.json").read_text())
    m = result["metrics"]
    return {"wall": wall, "accuracy": m["accuracy"], "per_class": m["per_class_accuracy"], "mia": m["mia"],
            "noise_multiplier": result["ingest"]["dp_noise_multiplier"],
            "worst_shard_auc": max(s["auc"] for s in report["shards"]),
            "worst_rmia_auc": max((s["auc"] for s in report.get("rmia_shards", [])), default=None),
            "unit": (m.get("dp") or {}).get("unit"),
            "epsilon": (m.get("dp") or {}).get(f"{(m.get('dp') or {}).get('unit')}_epsilon"),
            "record_epsilon": (m.get("dp") or {}).get("record_epsilon"),
            "train_seconds": sum(s["seconds"] for s in result["shards"]), "decision": result["decision"]}


def config_table(results: dict[str, dict]) -> Table:
    """One row per DP setting; per-class accuracy shows a model that predicts one class only."""
    table = Table(["run", "held-out accuracy", "vs DP off", "per class", "ensemble MIA AUC", "worst LiRA shard AUC",
                   "worst RMIA shard AUC", "epsilon (unit)", "noise multiplier", "run wall", "promotion"])
    base = results["DP off"]["accuracy"]
    for name, r in results.items():
        eps, sigma = r["epsilon"], r["noise_multiplier"]
        per_class = " / ".join(f"{label}: {'–' if acc is None else f'{acc:.2f}'}"
                               for label, acc in r["per_class"].items())
        table.rows.append([name, f"{r['accuracy']:.4f}", f"{100 * (r['accuracy'] - base):+.1f} points", per_class,
                           f"{r['mia']['ensemble_auc']:.4f}", f"{r['worst_shard_auc']:.4f}",
                           "–" if r["worst_rmia_auc"] is None else f"{r['worst_rmia_auc']:.4f}",
                           "none (no DP)" if eps is None else f"{eps:.3f} per {r['unit']}",
                           "–" if sigma is None else f"{sigma:.3f}", secs(r["wall"]), r["decision"]])
    return table


def dp_audit(ws: Path, quick: bool) -> tuple[dict, float]:
    """`oblivio audit-dp` at the workspace's current (DP) settings: its JSON and wall seconds."""
    return cli_json(ws, "audit-dp", "--canaries", str(200 if quick else AUDIT_CANARIES))


def audit_seconds(ws: Path, reports_dir: Path, repeats: int = 3) -> tuple[float, float]:
    """(first call, median of the next `repeats`) of the MIA audit on the published ensemble.

    The first call pays one-time costs (imports, caches); later calls show the audit's own cost.
    Reports go to `reports_dir`, so the workspace's own stay as the run wrote them.
    """
    from oblivio.audit.membership import membership_audit
    from oblivio.ensemble import Ensemble
    from oblivio.evaluation import holdout_arrays
    from oblivio.workspace import WorkspaceDir

    p = read_params(ws)
    cols = p["data"]["columns"]
    ensemble = Ensemble.load(ws / "models")
    raw, y = holdout_arrays(WorkspaceDir(ws))
    kwargs = dict(ensemble=ensemble, holdout=(ensemble.shard_logits(ensemble.featurize(raw)), y),
                  shards_dir=ws / "data" / "shards", n_shards=p["sisa"]["shards"],
                  features=list(WorkspaceDir(ws).params.data.columns.features),  # names: entries may be mappings
                  label=cols["label"], labels=p["data"]["label_domain"], reports_dir=reports_dir, seed=p["seed"])
    calls = []
    for _ in range(1 + repeats):
        began = time.perf_counter()
        membership_audit(**kwargs)
        calls.append(time.perf_counter() - began)
    return calls[0], median(calls[1:])


def dp_step_overhead(quick: bool) -> tuple[dict[str, dict], str]:
    """bench_dp.py's table, parsed: {training: {"ms": per epoch, "ratio": vs non-DP}} and its header line.

    bench_dp.py has no function to import (its measurement lives in main()), so it runs
    as its own process, as `python bench/bench_dp.py` would.
    """
    args = ["--repeats", "2", "--epochs", "1"] if quick else []
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_dp.py"), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"bench_dp.py exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    rows = {}
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[3].endswith("x"):
            rows[cells[0]] = {"ms": float(cells[1]), "ratio": float(cells[3].rstrip("x"))}
    return rows, proc.stdout.splitlines()[0]


def run(settings: Settings) -> Section:
    ws = make_workspace(settings, "privacy")
    results = {"DP off": one_config(ws, CONFIGS["DP off"])}
    log("timing the MIA audit in-process")  # on the non-private ensemble, before DP replaces it
    audit = audit_seconds(ws, settings.scratch / "audit-reports")
    for name in list(CONFIGS)[1:]:
        results[name] = one_config(ws, CONFIGS[name])
    set_params(ws, {"dp": {"enabled": True, "unit": "subject", "target_epsilon": 8.0}})
    one_config(ws, {"enabled": True, "unit": "subject", "target_epsilon": 8.0})  # the default DP unit, audited
    audited, audit_wall = dp_audit(ws, settings.quick)
    log("bench_dp.py")
    dp_rows, dp_header = dp_step_overhead(settings.quick)
    train = results["DP off"]["train_seconds"]
    rows = [
        ("MIA audit, first call (in-process)", secs(audit[0]), "includes one-time imports"),
        ("MIA audit, warm (median of 3)", secs(audit[1]), "ensemble + every shard model (offline LiRA and RMIA)"),
        ("audit / training time", f"{100 * audit[1] / train:.1f} %",
         f"warm audit vs the DP-off run's sum of shard training seconds ({train:.1f} s)"),
        ("audit-dp, per person, epsilon 8: lower bound / epsilon",
         f"{audited['epsilon_lower']:.3f} / {audited['epsilon']:.3f}",
         f"{audited['canaries']} canaries, one run, {audited['confidence']:.0%} confidence; "
         f"{'consistent' if audited['ok'] else 'VIOLATED'}"),
        ("audit-dp, same canaries without DP: lower bound", f"{audited['non_private_epsilon_lower']:.3f}",
         "shows the audit has power"),
        ("audit-dp wall (two trainings)", secs(audit_wall), ""),
        *[(f"bench_dp.py: {name}", f"{r['ms']:.1f} ms/epoch", f"{r['ratio']:.2f}x non-DP")
          for name, r in dp_rows.items()],
    ]
    return Section("privacy: membership inference and DP", [config_table(results), figures(rows)],
                   {"runs": results, "audit_first_seconds": audit[0], "audit_warm_seconds": audit[1],
                    "audit_dp": audited, "audit_dp_seconds": audit_wall,
                    "dp_step": dp_rows, "bench_dp_header": dp_header})
