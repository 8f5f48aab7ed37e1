"""The human reports: a model version's review (markdown) and the run summary (terminal)."""
from __future__ import annotations


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def render_version_report(summary: dict) -> str:
    """Markdown for the MLflow model-version description: what a reviewer reads first."""
    m = summary["metrics"]
    lines = [
        f"### Oblivio ensemble v{summary['model_version']}",
        f"- data version (DVC): `{summary['dataset_version']}`",
        f"- training records: {summary['n_records']} of {summary['n_subjects']} subjects; "
        f"{summary['n_shards']} shards x {summary['n_slices']} slices",
        f"- held-out accuracy: **{_fmt(m['accuracy'])}**"
        + (f" (single non-sharded model: {_fmt(m['baseline_accuracy'])})" if "baseline_accuracy" in m else ""),
    ]
    per_class = m.get("per_class_accuracy") or {}
    if per_class:
        lines.append("- accuracy per class: " + ", ".join(f"{name} {_fmt(acc)}" for name, acc in per_class.items()))
    if summary.get("champion_before"):
        lines.append(f"- champion before this run: v{summary['champion_before']} "
                     f"(accuracy {_fmt((summary.get('champion_metrics') or {}).get('accuracy'))})")
    lines += ["", "| gate | value | threshold | verdict |", "| --- | --- | --- | --- |"]
    for name, g in summary["gates"].items():
        lines.append(f"| {name} | {_fmt(g['value'])} | {_fmt(g['threshold'])} | {'pass' if g['passed'] else '**FAIL**'} |")
    mia = m.get("mia")
    if mia:
        lines += ["", "**Membership inference** (higher = leakier; 0.5 AUC is chance):",
                  f"- ensemble, population attack: AUC {_fmt(mia['ensemble_auc'])}, "
                  f"TPR@1%FPR {_fmt(mia['ensemble_tpr_at_1pct_fpr'])}",
                  f"- shard models, offline LiRA (the other shards as references): mean AUC "
                  f"{_fmt(mia['shard_auc_mean'])}",
                  f"- worst over every attack: AUC {_fmt(mia['max_auc'])}, "
                  f"worst TPR@1%FPR {_fmt(mia['max_tpr_at_1pct_fpr'])}, TPR@0.1%FPR {_fmt(mia['max_tpr_at_0_1pct_fpr'])}"]
        if "rmia_max_auc" in mia:
            lines.append(f"- shard models, offline RMIA (same references): mean AUC {_fmt(mia['rmia_shard_auc_mean'])}, "
                         f"worst AUC {_fmt(mia['rmia_max_auc'])}, worst TPR@1%FPR "
                         f"{_fmt(mia['rmia_max_tpr_at_1pct_fpr'])}; LiRA's worst AUC {_fmt(mia['lira_max_auc'])}")
        if "worst_attack" in mia:
            lines.append(f"- the gates read the worst of all attacks (highest AUC: {mia['worst_attack']})")
        if "forget_set_auc" in mia:
            lines.append(f"- erased rows ({mia.get('forget_set_subjects', '?')} people) vs held-out people: AUC "
                         f"{_fmt(mia['forget_set_auc'])} (near 0.5 expected; "
                         "gated only from gates.min_forget_set_subjects people on)")
        lines.append("- few reference models make the 0.1% FPR figure noisy; see mia.json for intervals")
    dp = m.get("dp")
    if dp:
        if dp.get("unit") == "subject":
            lines += ["", f"**Differential privacy** (subject-level DP-SGD, {dp.get('accountant', '')} accountant): "
                      f"epsilon {_fmt(dp['subject_epsilon'])} at delta {dp['subject_delta']:g} **per person**, for "
                      f"all of their records (max over disjoint shards). {dp.get('note', '')}"]
        else:
            lines += ["", f"**Differential privacy** (DP-SGD, {dp.get('accountant', '')} accountant): record-level "
                      f"epsilon {_fmt(dp['record_epsilon'])} at delta {dp['delta']:g} (max over disjoint shards); "
                      f"subject-level bound epsilon {_fmt(dp['subject_epsilon'])} for up to "
                      f"{dp['max_records_per_subject']} records per subject. {dp.get('note', '')}"]
        if "audit_epsilon_lower" in dp:
            lines.append(f"- empirical audit (`oblivio audit-dp`, one run, {dp.get('audit_canaries')} canaries): "
                         f"epsilon lower bound {_fmt(dp['audit_epsilon_lower'])} beside epsilon "
                         f"{_fmt(dp.get(dp.get('unit', 'record') + '_epsilon'))}")
    elif "mia" in m:
        lines += ["", "**Differential privacy**: off (no formal guarantee; the MIA audit is the evidence)."]
    if summary.get("requests"):
        lines += ["", f"Deletion requests applied in this version: {', '.join(summary['requests'])}"]
    return "\n".join(lines)


def render_review(review: dict) -> str:
    """Candidate and champion side by side, then the candidate's full report."""
    cand, champ = review["candidate"], review.get("champion")
    rows = [("version", "v{version}"), ("aliases", "{aliases}"), ("data version", "{data}"),
            ("accuracy", "{accuracy}"), ("MIA worst AUC", "{mia_auc}"), ("MIA worst TPR@1%", "{mia_tpr}"),
            ("DP epsilon", "{epsilon}"), ("gates", "{gates}"), ("promotion", "{promotion}")]

    def cells(v: dict | None) -> dict:
        if not v:
            return {k: "–" for k in ("version", "aliases", "data", "accuracy", "mia_auc", "mia_tpr", "epsilon",
                                     "gates", "promotion")}
        m = v["metrics"]
        return {"version": v["version"], "aliases": ",".join(v["aliases"]) or "–", "data": v["data_version"][:12],
                "accuracy": _fmt(m.get("accuracy")), "mia_auc": _fmt(m.get("mia", {}).get("max_auc")),
                "mia_tpr": _fmt(m.get("mia", {}).get("max_tpr_at_1pct_fpr")),
                "epsilon": (f"{_fmt(m['dp'].get(m['dp'].get('unit', 'record') + '_epsilon'))} per "
                            f"{'person' if m['dp'].get('unit') == 'subject' else 'record'}") if m.get("dp") else "off",
                "gates": "all passed" if v["gates_passed"] else "FAILED: " + ", ".join(v["failed_gates"]),
                "promotion": v["promotion"]}

    left, right = cells(cand), cells(champ)
    width = max(len(r[0]) for r in rows)
    out = [f"{'':<{width}}  {'this version':<28}  champion"]
    for label, template in rows:
        out.append(f"{label:<{width}}  {template.format(**left):<28}  {template.format(**right)}")
    return "\n".join(out) + "\n\n" + cand["description"]


# A newest slice holding more than this share of its shard has taken most of the growth: each
# growth run then retrains nearly the whole shard anyway, so a rebalance costs little more.
LOPSIDED_SHARE = 0.5


def render_run_summary(result: dict) -> str:
    """A few lines for the terminal at the end of `oblivio run`."""
    m = result["metrics"]
    base = f" vs {m['baseline_accuracy']:.4f} for one non-sharded model" if "baseline_accuracy" in m else ""
    gates = ", ".join(f"{n} {'ok' if g['passed'] else 'FAILED'}" for n, g in result["gates"].items())
    placement = result.get("ingest", {}).get("placement", {})
    grown = (f"; {placement['records_arrived']} new record(s) placed in the newest slice of shard(s) "
             f"{placement['shards_grown']}" if placement.get("records_arrived") else "")
    lopsided = placement.get("newest_slice_share", 0) > LOPSIDED_SHARE
    warnings = [f"warning: {w}" for w in result.get("ingest", {}).get("warnings", [])]
    return "\n".join([
        *warnings,
        f"data version {result['dataset_version'][:12]}: {result['n_records']} records of {result['n_subjects']} "
        f"subjects in {result['n_shards']} shards x {result['n_slices']} slices{grown}",
        *([f"the newest slice holds {placement['newest_slice_share']:.0%} of a shard after growth: "
           "`oblivio run --reslice` rebalances (that shard retrains in full)"] if lopsided else []),
        f"trained {result['slices_trained']} slice stage(s), reused {result['slices_reused']} from checkpoints",
        f"held-out accuracy {m['accuracy']:.4f}{base}",
        f"gates: {gates}",
        f"model {result['model_name']} v{result['model_version']}: aliases {', '.join(result['aliases']) or 'none'} "
        f"({result['decision']}) in {result['seconds']:.1f} s",
    ])
