"""Time per epoch of DP-SGD vs plain training on one synthetic SISA shard.

    .venv/bin/python bench/bench_dp.py [--records 3000] [--repeats 5] [--epochs 3] [--batch 64]

One shard like the default nlswork one (~3,000 records; 42 model inputs, `--inputs 63` as the
current encoding gives), MLP (64, 64), batch 64 (`--batch`), Adam, one torch thread. Interleaved in one process: each repeat
times plain training (sisa's non-DP stage loop), DP with ghost clipping, with
per-sample-gradient hooks and with fused clipping (`dp_fused`), and subject-level DP (people
of 1 to 15 records, 8 on average, batch / 8 people per step: the same expected records per
step as the others) with hooks and fused, in turn; the table reports the median time per
epoch. `--batch 384` is about the records per step of the shipped per-person recipe (64 people).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from oblivio.training.dp import DpSpec, DpTrainer  # noqa: E402
from oblivio.training.sisa import Recipe, _optimizer, _train_stage, new_model  # noqa: E402

SECRET = bytes(32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=3000)
    ap.add_argument("--inputs", type=int, default=42)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per timed run")
    ap.add_argument("--batch", type=int, default=64, help="expected records per step, plain and DP alike")
    args = ap.parse_args()
    if args.batch % 8 or args.records % 120:
        ap.error("--batch must be a multiple of 8 and --records of 120 (whole cycles of people of 1..15 records)")
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(args.records, args.inputs)).astype(np.float32))
    y = torch.from_numpy((x[:, 0] + 0.5 * x[:, 1] > 0).numpy().astype(np.int64))
    recipe = Recipe(model="mlp", hidden=(64, 64), n_inputs=args.inputs, n_classes=2, epochs_per_slice=args.epochs,
                    batch_size=args.batch, lr=0.002, weight_decay=0.0, seed=0)

    def plain() -> None:
        model = new_model(recipe, SECRET, "bench")
        _train_stage(model, _optimizer(model, recipe), x, y, recipe=recipe, secret=SECRET, shard="bench", stage=0)

    def private(mode: str):
        spec = DpSpec(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, grad_sample_mode=mode)

        def run() -> None:
            model = new_model(recipe, SECRET, "bench")
            trainer = DpTrainer(model, _optimizer(model, recipe), spec)
            trainer.train_stage(x, y, batch_size=recipe.batch_size, epochs=args.epochs, seed_for=lambda s, e: e)
            trainer.close()
        return run

    # people of 1, 2, ..., 15, 1, 2, ... records (mean 8; nlswork's people have 1 to 15 as well), so
    # batch / 8 people per step is the same expected number of records and steps per epoch as plain
    per_person = 8
    sizes = torch.arange(args.records) % 15 + 1
    people = torch.repeat_interleave(torch.arange(args.records), sizes)[:args.records]

    def subject_level(mode: str):
        spec = DpSpec(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, unit="subject", grad_sample_mode=mode)

        def run() -> None:
            model = new_model(recipe, SECRET, "bench")
            trainer = DpTrainer(model, _optimizer(model, recipe), spec)
            trainer.train_stage(x, y, batch_size=recipe.batch_size // per_person, epochs=args.epochs,
                                seed_for=lambda s, e: e, subjects=people)
            trainer.close()
        return run

    runs = {"plain (non-DP)": plain, "DP ghost clipping": private("ghost"), "DP hooks": private("hooks"),
            "DP fused": private("fused"), "DP per person (hooks, grouped)": subject_level("hooks"),
            "DP per person (fused)": subject_level("fused")}
    for fn in runs.values():  # warm-up: imports, allocator, first-call overheads
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    began = time.perf_counter()
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) / args.epochs)
    base = statistics.median(times["plain (non-DP)"])
    print(f"{args.records} records x {args.inputs} inputs, MLP (64, 64), batch {args.batch}, Adam, 1 thread; "
          f"median of {args.repeats} interleaved repeats of {args.epochs} epochs ({time.perf_counter() - began:.1f} s)\n")
    print("| training | ms / epoch (median) | min-max | vs non-DP |")
    print("| --- | ---: | ---: | ---: |")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {1000 * med:.1f} | {1000 * min(ts):.1f}-{1000 * max(ts):.1f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
