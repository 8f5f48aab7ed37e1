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
    if summary.get("champion_before"):
        lines.append(f"- champion before this run: v{summary['champion_before']} "
                     f"(accuracy {_fmt((summary.get('champion_metrics') or {}).get('accuracy'))})")
    lines += ["", "| gate | value | threshold | verdict |", "| --- | --- | --- | --- |"]
    for name, g in summary["gates"].items():
        lines.append(f"| {name} | {_fmt(g['value'])} | {_fmt(g['threshold'])} | {'pass' if g['passed'] else '**FAIL**'} |")
    if summary.get("requests"):
        lines += ["", f"Deletion requests applied since the previous version: {', '.join(summary['requests'])}"]
    return "\n".join(lines)


def render_run_summary(result: dict) -> str:
    """A few lines for the terminal at the end of `oblivio run`."""
    m = result["metrics"]
    base = f" vs {m['baseline_accuracy']:.4f} for one non-sharded model" if "baseline_accuracy" in m else ""
    gates = ", ".join(f"{n} {'ok' if g['passed'] else 'FAILED'}" for n, g in result["gates"].items())
    return "\n".join([
        f"data version {result['dataset_version'][:12]}: {result['n_records']} records of {result['n_subjects']} "
        f"subjects in {result['n_shards']} shards x {result['n_slices']} slices",
        f"trained {result['slices_trained']} slice stage(s), reused {result['slices_reused']} from checkpoints",
        f"held-out accuracy {m['accuracy']:.4f}{base}",
        f"gates: {gates}",
        f"model {result['model_name']} v{result['model_version']}: aliases {', '.join(result['aliases']) or 'none'} "
        f"({result['decision']}) in {result['seconds']:.1f} s",
    ])
