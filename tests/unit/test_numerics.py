"""Pinned numerics: the bits of a shard do not depend on which CPU path the machine would pick.

A second machine differs from this one by the code paths its libraries choose; the tests
force those choices through the libraries' own variables (oneMKL's MKL_CBWR, ATen's
ATEN_CPU_CAPABILITY, numpy's NPY_DISABLE_CPU_FEATURES) in fresh processes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest

from oblivio import numerics
from oblivio.errors import NumericsError

TRAIN_ONE_SHARD = textwrap.dedent("""
    import hashlib, pathlib, sys, tempfile
    import oblivio  # pins the numerics before numpy and torch load
    import numpy as np
    from oblivio import numerics
    from oblivio.training.nets import featurize
    from oblivio.training.sisa import CheckpointStore, Recipe, ShardData, train_shard
    rng = np.random.default_rng(0)
    n = 300
    keys = sorted(hashlib.sha256(f"r{i}".encode()).hexdigest() for i in range(n))
    slices = np.array([int(k[:8], 16) % 3 for k in keys])
    raw = rng.normal(scale=20, size=(n, 6))
    y = (raw[:, 0] + raw[:, 1] > 0).astype(np.int64)
    order = np.lexsort((np.array(keys), slices))
    data = ShardData(x=featurize(raw, "mlp")[order], y=y[order], slices=slices[order],
                     record_keys=tuple(np.array(keys)[order]))
    recipe = Recipe(model="mlp", hidden=(32, 32), n_inputs=12, n_classes=2, epochs_per_slice=2, batch_size=16,
                    lr=0.01, weight_decay=0.0, seed=7, numerics=numerics.current(numerics.requested_mode()))
    result = train_shard(data, recipe=recipe, shard="shard-0", n_slices=3, secret=b"k" * 32,
                         store=CheckpointStore(pathlib.Path(tempfile.mkdtemp())))
    print(result.weights_sha256)
""")

# what another machine's libraries would do by themselves: other oneMKL, ATen and numpy paths
OTHER_MACHINES = [
    {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default", "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL"},
    {"MKL_CBWR": "AVX512", "ATEN_CPU_CAPABILITY": "avx512"},
]


def train_in_process(mode: str, forced: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k not in numerics.PORTABLE_ENVIRONMENT}
    env.update({numerics.MODE_VARIABLE: mode, **forced})
    proc = subprocess.run([sys.executable, "-c", TRAIN_ONE_SHARD], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_portable_numerics_give_the_same_bits_whatever_path_the_machine_would_pick():
    portable = {train_in_process("portable", forced) for forced in OTHER_MACHINES}
    assert len(portable) == 1
    # the control: left to themselves the same libraries round differently, so the pin is what holds
    native = {train_in_process("native", forced) for forced in OTHER_MACHINES}
    assert len(native) == 2


def test_a_process_that_loaded_torch_before_the_pin_is_refused():
    script = textwrap.dedent("""
        import torch
        import oblivio
        from oblivio import numerics
        from oblivio.errors import NumericsError
        try:
            numerics.require(numerics.current("portable"), "train shard-0")
        except NumericsError as err:
            print(err)
    """)
    env = {k: v for k, v in os.environ.items() if k not in numerics.PORTABLE_ENVIRONMENT}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert "cannot train shard-0 here: torch or numpy was imported before oblivio" in proc.stdout


def test_other_library_versions_are_refused_with_what_differs():
    here = numerics.current("portable")
    recorded = dataclasses.replace(here, torch="2.12.0", mkl="2023.1")
    with pytest.raises(NumericsError) as err:
        numerics.require(recorded, "replay")
    message = str(err.value)
    assert message.startswith("cannot replay here: ")
    assert f"torch version 2.12.0 recorded, {here.torch} here" in message
    assert f"oneMKL version 2023.1 recorded, {here.mkl} here" in message
    numerics.require(here, "replay")  # this process honours its own numerics


def test_a_machine_without_avx2_or_of_another_architecture_cannot_honour_portable(monkeypatch):
    monkeypatch.setattr(numerics, "_cpu_flags", lambda: {"sse2", "avx"})
    assert numerics.machine_problems("portable") == ["portable numerics need AVX2 and FMA; this CPU lacks avx2, fma"]
    monkeypatch.setattr(numerics.platform, "machine", lambda: "aarch64")
    assert "need an x86_64 CPU; this machine is aarch64" in numerics.machine_problems("portable")[0]
    assert numerics.machine_problems("native") == []


def test_numerics_are_part_of_the_recipe_digest_and_survive_json():
    from oblivio.training.sisa import Recipe

    base = Recipe(model="mlp", hidden=(8,), n_inputs=4, n_classes=2, epochs_per_slice=1, batch_size=8, lr=0.01,
                  weight_decay=0.0, seed=1, numerics=numerics.current("portable"))
    other = dataclasses.replace(base, numerics=dataclasses.replace(base.numerics, torch="9.9.9"))
    assert base.digest() != other.digest()
    back = Recipe(**{**json.loads(json.dumps(dataclasses.asdict(base))), "hidden": (8,)})
    assert back == base and back.digest() == base.digest()


def test_a_replay_under_other_recorded_versions_reports_cannot_replay(tmp_path):
    from oblivio.verify import _replay
    from oblivio.workspace import WorkspaceDir

    here = numerics.current("portable")
    recipe = {"model": "mlp", "hidden": [8], "n_inputs": 4, "n_classes": 2, "epochs_per_slice": 1, "batch_size": 8,
              "lr": 0.01, "weight_decay": 0.0, "seed": 1, "dp": None,
              "numerics": {**dataclasses.asdict(here), "torch": "2.12.0"}}
    checks: list[dict] = []
    _replay(WorkspaceDir(tmp_path), {"recipe": recipe, "shards": [{"index": 0}], "n_slices": 2}, 2, checks)
    assert [c["check"] for c in checks] == ["replay"] and checks[0]["ok"] is None
    assert checks[0]["detail"].startswith("cannot replay here: torch version 2.12.0 recorded")
