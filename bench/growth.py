"""Section `growth`: a scheduled run on a table that grew, and where one person's records sit.

A workspace is trained on 96 % of the default data's people (`limit_subjects`, whose larger
samples are supersets), then run again on 98 % (2 % more people, as a nightly run on
yesterday's table plus today's newcomers would be) and once more `--from-scratch` on the
grown table, as cold commands; then the same with `oblivio serve` running (both runs handed
to its warm process), growing to everyone. Each pair's ratio is what growth-aware slicing
saves under those conditions, and the growth run's trained slice stages say why.

From the grown workspace's partitions it also computes what a one-person erasure
retrains, per person: the share of the shard's stage training from their first slice
on, under the layout it has (`sisa.placement: subject`, a person's records in one slice)
and under per-record placement (each record hashed alone), weighted by the real stage sizes.
"""
from __future__ import annotations

from contextlib import nullcontext

import numpy as np

from bench.common import (
    QUICK_PARAMS, Section, Settings, cli_json, figures, make_workspace, secs, served_flow_end, serving, set_params,
    times, verdict,
)

GROWTH_BAR = 4.0  # the bar: a growth run at least 4x faster than a full run of the grown table
DEFAULT_PEOPLE = 4711  # nlswork


def retrain_shares(ws) -> dict[str, float]:
    """Mean share of its shard's stage training a one-person erasure retrains, by placement rule."""
    from oblivio.data.columns import SLICE, SUBJECT_KEY
    from oblivio.data.sharding import Layout, read_layout, read_shard
    from oblivio.workspace import WorkspaceDir

    w = WorkspaceDir(ws)
    layout, cols = read_layout(w.shards_dir), w.params.data.columns
    by_record = Layout(shards=layout.shards, slices=layout.slices, placement="record")
    shares: dict[str, list[float]] = {"subject": [], "record": []}
    for k in range(layout.shards):
        part = read_shard(w.shards_dir, k)
        record_slices = np.array([by_record.first_slice(w.secret, None, r) for r in part[cols.record_id].astype(str)])
        for rule, slices in (("subject", part[SLICE].to_numpy()), ("record", record_slices)):
            stage_sizes = np.cumsum(np.bincount(slices, minlength=layout.slices))
            cost_from = np.cumsum(stage_sizes[::-1])[::-1] / stage_sizes.sum()  # share retrained from slice s on
            first = part.assign(_s=slices).groupby(SUBJECT_KEY)["_s"].min().to_numpy()
            shares[rule] += list(cost_from[first])
    return {rule: float(np.mean(v)) for rule, v in shares.items()}


def grow(ws, people: int, quick: bool, *, served: bool) -> dict:
    """The table grows to `people` (everyone: limit 0 in a full run); a run of it, then a full
    retrain of the grown table; with `served`, both handed to a running `oblivio serve`."""
    set_params(ws, {"data": {"limit_subjects": people if quick or people < DEFAULT_PEOPLE else 0}})
    with serving(ws) if served else nullcontext():
        grown, grown_wall = cli_json(ws, "run")
        after = served_flow_end(ws, grown["flow_run_id"]) if served else 0.0  # each run meets an idle serve
        scratch, scratch_wall = cli_json(ws, "run", "--from-scratch")
        if served:
            served_flow_end(ws, scratch["flow_run_id"])
    return {"grown": grown, "grown_wall": grown_wall, "scratch": scratch, "scratch_wall": scratch_wall,
            "ratio": scratch_wall / grown_wall, "after_return": after}


def run(settings: Settings) -> Section:
    people = QUICK_PARAMS["data"]["limit_subjects"] if settings.quick else DEFAULT_PEOPLE
    ws = make_workspace(settings, "growth", {"data": {"limit_subjects": int(people * 0.96)}})
    first, _ = cli_json(ws, "run")
    cold = grow(ws, int(people * 0.98), settings.quick, served=False)  # 2 % more people, cold commands
    served = grow(ws, people, settings.quick, served=True)  # 2 % more again, with `oblivio serve` running
    grown, scratch = served["grown"], served["scratch"]
    placement = grown["ingest"]["placement"]
    n_stages = scratch["slices_trained"]
    shares = retrain_shares(ws)
    nightly = cold["scratch_wall"] / served["grown_wall"]
    rows = [
        ("growth run vs `run --from-scratch` of the grown table, both served", times(served["ratio"]),
         f"{secs(served['grown_wall'])} vs {secs(served['scratch_wall'])}; "
         f"{grown['n_subjects'] - cold['grown']['n_subjects']} new people ({placement['records_arrived']} records); "
         f"bar {GROWTH_BAR:.0f}x: {verdict(served['ratio'] >= GROWTH_BAR)}"),
        ("same, both cold commands", times(cold["ratio"]),
         f"{secs(cold['grown_wall'])} vs {secs(cold['scratch_wall'])}; "
         f"{cold['grown']['n_subjects'] - first['n_subjects']} new people; "
         f"bar {GROWTH_BAR:.0f}x: {verdict(cold['ratio'] >= GROWTH_BAR)}"),
        ("served growth run vs a cold full retrain (a nightly run with `serve` up vs without Oblivio's reuse)",
         times(nightly), f"{secs(served['grown_wall'])} vs {secs(cold['scratch_wall'])}"),
        ("slice stages trained by the growth run", f"{grown['slices_trained']} of {n_stages}",
         f"shards that received records: {len(placement['shards_grown'])} (baseline included when configured)"),
        ("growth run's steps, served (s)", ", ".join(f"{k} {v:.1f}" for k, v in grown["steps"].items() if v >= 0.05),
         f"train: the last stage of each grown shard, and of the baseline; then, after the command returned, "
         f"the MIA intervals no gate reads ({secs(served['after_return'])})"),
        ("newest slice's share of its shard after growth, worst shard", f"{placement['newest_slice_share']:.2f}",
         f"1/R = {1 / scratch['n_slices']:.2f} before any growth"),
        ("one-person erasure retrains, mean share of the shard's stage training",
         f"{shares['subject']:.2f} by subject, {shares['record']:.2f} by record",
         f"{times(shares['record'] / shares['subject'])} less compute with subject placement"),
    ]
    return Section("Growth", [figures(rows)],
                   {"served": {k: v for k, v in served.items() if k.endswith(("wall", "ratio"))},
                    "cold": {k: v for k, v in cold.items() if k.endswith(("wall", "ratio"))},
                    "served_growth_vs_cold_scratch": nightly, "slices_trained": grown["slices_trained"],
                    "stages": n_stages, "placement": placement, "steps": grown["steps"], "retrain_share": shares})
