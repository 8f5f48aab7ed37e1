"""DP recipe on the default data: ensemble accuracy at epsilon 1, 4, 8 per person and per record vs DP off.

    .venv/bin/python bench/dp_recipe.py [--fraction 1.0] [RUN ...]

    RUN = unit,epsilon,batch,epochs_per_slice,lr,max_grad_norm[,grad_sample_mode] (epsilon 0 =
    DP off; mode default dp.grad_sample_mode), e.g. record,8,256,4,0.01,1 or
    subject,8,64,4,0.01,1,fused. Without RUNs: DP off at the train.* defaults, then the six DP
    runs at the dp.* defaults.

nlswork, 8 shards x 4 slices, people placed by a fixed hash, 20 % of people held out,
the real `train_shard` (Opacus, Poisson sampling, calibrated noise) and a mean-proba
ensemble: what chose `dp.batch_size` and `dp.lr` (docs/design.md), without the pipeline's
Prefect/MLflow/DVC costs. `--fraction` keeps a sample of the people, for a quick sweep.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from oblivio.config import load_params  # noqa: E402
from oblivio.data import encoding  # noqa: E402
from oblivio.data.sources import load_nlswork  # noqa: E402
from oblivio.numerics import enter_torch  # noqa: E402
from oblivio.training import dp as D  # noqa: E402
from oblivio.training.sisa import CheckpointStore, Recipe, ShardData, load_final_model, train_shard  # noqa: E402

SECRET = bytes(32)
SHARDS, SLICES, DELTA = 8, 4, 1e-5
P = load_params(Path(__file__).resolve().parents[1] / "src" / "oblivio" / "templates" / "params.yaml")


def _h(value, salt: str) -> int:
    return int(hashlib.sha256(f"{salt}{value}".encode()).hexdigest()[:12], 16)


def load(fraction: float):
    df = load_nlswork()
    if fraction < 1:
        people = np.random.default_rng(0).choice(df.idcode.unique(), int(df.idcode.nunique() * fraction),
                                                 replace=False)
        df = df[df.idcode.isin(people)]
    enc = encoding.resolve(P.data.columns.specs(), {c: df[c].dtype for c in P.data.columns.features}, model="mlp")
    x, y, pid = enc.transform(df).astype(np.float32), df.label.to_numpy(), df.idcode.to_numpy()
    hold = np.array([_h(p, "hold") % 5 == 0 for p in pid])
    shard = np.array([_h(p, "shard") % SHARDS for p in pid])
    slices = np.array([_h(p, "slice") % SLICES for p in pid])
    rank = {p: i for i, p in enumerate(sorted(set(pid)))}
    subj = np.array([rank[p] for p in pid])
    shards = []
    for s in range(SHARDS):
        m = (~hold) & (shard == s)
        o = np.lexsort((np.arange(m.sum()), slices[m]))
        shards.append(ShardData(x=x[m][o], y=y[m][o], slices=slices[m][o],
                                record_keys=tuple(f"{s}-{i}" for i in range(m.sum())), subjects=subj[m][o]))
    return shards, torch.from_numpy(x[hold]), y[hold], enc.width, len(df)


def run(data, unit: str, eps: float, bs: int, epochs: int, lr: float, clip: float, mode: str) -> dict:
    shards, xh, yh, width, _ = data
    enter_torch()
    t = time.perf_counter()
    spec = None
    if eps:
        sigma = max(D.calibrate_shard_noise(
            D.subject_stage_sizes(d.slices, d.subjects, SLICES) if unit == "subject" else D.stage_sizes(d.slices, SLICES),
            batch_size=bs, epochs_per_slice=epochs, target_epsilon=eps, delta=DELTA) for d in shards)
        spec = D.DpSpec(noise_multiplier=sigma, max_grad_norm=clip, delta=DELTA, unit=unit, target_epsilon=eps,
                        grad_sample_mode=mode)
    recipe = Recipe(model="mlp", hidden=tuple(P.train.hidden), n_inputs=width, n_classes=2, epochs_per_slice=epochs,
                    batch_size=bs, lr=lr, weight_decay=0.0, seed=1, dp=spec)
    probs, spent = 0.0, []
    with tempfile.TemporaryDirectory() as tmp:
        store = CheckpointStore(Path(tmp))
        for s, d in enumerate(shards):
            res = train_shard(d, recipe=recipe, shard=f"s{s}", n_slices=SLICES, secret=SECRET, store=store)
            spent.append(res.epsilon or 0.0)
            with torch.no_grad():
                probs = probs + torch.softmax(load_final_model(recipe, SECRET, f"s{s}", store, res.chain[-1])(xh), 1).numpy()
    pred = np.asarray(probs).argmax(1)
    return {"unit": unit, "eps": eps, "bs": bs, "epochs": epochs, "lr": lr, "clip": clip, "mode": mode,
            "accuracy": float((pred == yh).mean()), "positive_share": float(pred.mean()),
            "sigma": spec.noise_multiplier if spec else None, "spent": max(spent), "seconds": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fraction", type=float, default=1.0, help="share of people kept (a quick sweep)")
    ap.add_argument("runs", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(1)
    runs = args.runs or [f"record,0,{P.train.batch_size},{P.train.epochs_per_slice},{P.train.lr},1"] + [
        f"{u},{e},{P.dp.batch_size},{P.train.epochs_per_slice},{P.dp.lr},{P.dp.max_grad_norm}"
        for u in ("record", "subject") for e in (8, 4, 1)]
    data = load(args.fraction)
    print(f"nlswork, {data[4]} records, {len(data[2])} held out, {SHARDS} shards x {SLICES} slices, MLP "
          f"{tuple(P.train.hidden)}, 1 thread\n")
    print("| run | batch | epochs/slice | lr | clip | sigma | epsilon spent | accuracy | vs first run | "
          "share predicted 1 | seconds |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = None
    for spec in runs:
        u, e, b, ep, lr, c, *mode = spec.split(",")
        r = run(data, u, float(e), int(b), int(ep), float(lr), float(c), mode[0] if mode else P.dp.grad_sample_mode)
        base = r["accuracy"] if base is None else base
        sigma = "–" if r["sigma"] is None else f"{r['sigma']:.3f}"
        name = "DP off" if not r["eps"] else (f"per {'person' if u == 'subject' else 'record'}, epsilon {r['eps']:g}, "
                                              f"{r['mode']}")
        print(f"| {name} | {b} | {ep} | {lr} | {c} | {sigma} | "
              f"{r['spent']:.3f} | {r['accuracy']:.4f} | {100 * (r['accuracy'] - base):+.1f} points | "
              f"{r['positive_share']:.3f} | {r['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
