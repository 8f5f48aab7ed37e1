"""Oblivio's benchmarks, side by side in one run: `.venv/bin/python bench/run.py [--quick] [--only NAME,...]`.

Sections: pipeline (accuracy and overhead of a run), erasure (one deletion vs a full
retrain, at two data sizes; DVC bytes; batch vs one by one), privacy (MIA and DP), load
(concurrent submissions during a batch, then all processed), scale (peak RSS of
a run on a 1M-row table beside the default data; the partitions one erasure rewrites),
numerics (pinned portable kernels vs the machine's native ones, shard training time),
growth (a run after 2 % more people vs a full retrain; what a one-person erasure retrains), tables
(string categoricals and missing values: the ensemble beside scikit-learn, the encoding's cost),
intake (the HTTP intake under 8 concurrent clients; API vs CLI overhead for `forget`), production
(a served erasure on the loopback production stack vs the embedded one, step by step).
Prints a markdown report and writes it, with the raw numbers, to bench/results/latest.{md,json}.
The machine is shared and noisy: ratios measured in one run mean more than seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import oblivio  # noqa: E402,F401  pins the numerics before numpy and torch load
from bench import bench_erasure as erasure, bench_intake as intake, bench_numerics as numerics  # noqa: E402
from bench import growth, load, pipeline, privacy, production_backends as production, scale, tables  # noqa: E402
from bench.common import Section, Settings, log  # noqa: E402

SECTIONS = {"pipeline": pipeline.run, "erasure": erasure.run, "privacy": privacy.run, "load": load.run,
            "scale": scale.run, "numerics": numerics.run, "growth": growth.run, "tables": tables.run,
            "intake": intake.run, "production": production.run}
RESULTS = Path(__file__).resolve().parent / "results"
ONE_BY_ONE = 10
QUICK_ONE_BY_ONE = 2  # each erasure is a full command (~40 s of fixed cost): 10 would not be quick


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="1,000 people and 2 epochs per slice: a smoke run of every section")
    ap.add_argument("--only", help=f"comma-separated sections to run ({', '.join(SECTIONS)})")
    ap.add_argument("--one-by-one", type=int, metavar="N",
                    help=f"erasures done one at a time for the batch comparison (default {ONE_BY_ONE}, "
                         f"{QUICK_ONE_BY_ONE} with --quick)")
    args = ap.parse_args(argv)
    args.sections = args.only.split(",") if args.only else list(SECTIONS)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.one_by_one is None:
        args.one_by_one = QUICK_ONE_BY_ONE if args.quick else ONE_BY_ONE
    return args


def run_sections(names: list[str], settings: Settings) -> tuple[dict[str, Section], dict[str, str]]:
    """Every section in turn; one that fails is reported and the others still run."""
    done, failed = {}, {}
    for name in names:
        log(f"section {name}")
        began = time.perf_counter()
        try:
            done[name] = SECTIONS[name](settings)
            done[name].raw["section_seconds"] = time.perf_counter() - began
        except Exception as err:  # a broken command must not cost the other sections' numbers
            traceback.print_exc()
            failed[name] = f"{type(err).__name__}: {err}"
    return done, failed


def render(done: dict[str, Section], failed: dict[str, str], header: dict) -> str:
    lines = ["# Oblivio benchmarks", "",
             f"{header['date']}, {'--quick' if header['quick'] else 'full'} run, {header['cpus']} CPUs, "
             f"load average {header['load_before']} before / {header['load_after']} after, "
             f"{header['seconds']:.0f} s in all. Shared, noisy machine: compare ratios within this run."]
    for name, section in done.items():
        lines += ["", f"## {section.title}", f"_{section.raw['section_seconds']:.0f} s_"]
        for table in section.tables:
            lines += ["", table.markdown()]
    for name, error in failed.items():
        lines += ["", f"## {name}: FAILED", "", "```", error, "```"]
    return "\n".join(lines) + "\n"


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="oblivio-bench-", dir="/tmp"))
    header = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "quick": args.quick, "cpus": os.cpu_count(),
              "python": platform.python_version(), "load_before": load_average(), "sections": args.sections,
              "one_by_one": args.one_by_one}
    began = time.perf_counter()
    try:
        done, failed = run_sections(args.sections, Settings(scratch=scratch, quick=args.quick,
                                                            one_by_one=args.one_by_one))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    header.update(seconds=time.perf_counter() - began, load_after=load_average())
    report = render(done, failed, header)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.md").write_text(report)
    (RESULTS / "latest.json").write_text(json.dumps(
        {**header, "results": {n: {"title": s.title, "raw": s.raw,
                                   "tables": [{"columns": t.columns, "rows": t.rows} for t in s.tables]}
                               for n, s in done.items()},
         "failed": failed}, indent=1, default=str))
    print(report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
