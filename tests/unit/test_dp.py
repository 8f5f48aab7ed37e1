"""DP-SGD per shard: determinism, resume, honest and tight accounting, plain checkpoints."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings

import numpy as np
import pytest
import torch

from oblivio.training import dp
from oblivio.training.nets import build_model
from oblivio.training.sisa import (
    CheckpointStore, Recipe, ShardData, load_final_model, train_shard, weights_digest,
)

SECRET = bytes(range(32))
N_SLICES = 3
DELTA = 1e-5
# the recipe and data of tests/unit/test_sisa.py
RECIPE = Recipe(model="mlp", hidden=(16,), n_inputs=6, n_classes=2, epochs_per_slice=2, batch_size=16,
                lr=0.01, weight_decay=0.0, seed=7)
# the digest of that non-DP recipe *before* DP existed: adding DP must not change it (so no
# checkpoint key). A digest is JSON hashed, the same on every machine; weights are not
# pinned here (their bits depend on the CPU: see tests/unit/test_numerics.py).
NON_DP_DIGEST = "3cff4e0501c973c91d6df79092282e0a96bdf69added116da9584806dd55fc0f"


def make_data(n: int = 120, seed: int = 0) -> ShardData:
    rng = np.random.default_rng(seed)
    keys = sorted(hashlib.sha256(f"r{i}".encode()).hexdigest() for i in range(n))
    slices = np.array([int(k[:8], 16) % N_SLICES for k in keys])
    order = np.lexsort((np.array(keys), slices))
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return ShardData(x=x[order], y=y[order], slices=slices[order], record_keys=tuple(np.array(keys)[order]))


def drop(data: ShardData, index: int) -> ShardData:
    keep = np.arange(len(data.y)) != index
    return ShardData(x=data.x[keep], y=data.y[keep], slices=data.slices[keep],
                     record_keys=tuple(k for i, k in enumerate(data.record_keys) if keep[i]))


def plan_for(data: ShardData) -> list[tuple[float, int]]:
    return dp.stage_plan(dp.stage_sizes(data.slices, N_SLICES), batch_size=RECIPE.batch_size,
                         epochs_per_slice=RECIPE.epochs_per_slice)


@pytest.fixture(scope="module")
def sigmas() -> dict[float, float]:
    """Noise multipliers calibrated (PRV) for the test shard, composed over its 3 stages."""
    plan = plan_for(make_data())
    with warnings.catch_warnings():  # PRV sizes its domain with an RDP bound, which may warn about its orders
        warnings.filterwarnings("ignore", message="Optimal order is the")
        return {t: dp.calibrate_noise_for_plan(plan, target_epsilon=t, delta=DELTA, accountant="prv")
                for t in (8.0, 1.0)}


def dp_recipe(sigma: float, *, target: float = 8.0, mode: str = "ghost", accountant: str = "prv") -> Recipe:
    return dataclasses.replace(RECIPE, dp=dp.DpSpec(noise_multiplier=sigma, max_grad_norm=1.0, delta=DELTA,
                                                    accountant=accountant, target_epsilon=target,
                                                    grad_sample_mode=mode))


def train(data, store_dir, recipe, secret=SECRET, **kw):
    return train_shard(data, recipe=recipe, shard="shard-0", n_slices=N_SLICES, secret=secret,
                       store=CheckpointStore(store_dir), **kw)


@pytest.mark.parametrize("mode", dp.GRAD_SAMPLE_MODES)
def test_dp_training_is_deterministic_and_keyed_by_the_secret(tmp_path, sigmas, mode):
    recipe = dp_recipe(sigmas[8.0], mode=mode)
    a = train(make_data(), tmp_path / "a", recipe)
    b = train(make_data(), tmp_path / "b", recipe)
    other = train(make_data(), tmp_path / "c", recipe, secret=b"\x01" * 32)
    assert a.slices_trained == [0, 1, 2]
    assert a.weights_sha256 == b.weights_sha256 and a.epsilon == b.epsilon
    assert other.weights_sha256 != a.weights_sha256
    assert other.epsilon == a.epsilon  # the accounting depends on the plan, not on the noise drawn


@pytest.mark.parametrize("mode", dp.GRAD_SAMPLE_MODES)
def test_resume_at_a_middle_stage_gives_the_same_bits_and_epsilon(tmp_path, sigmas, mode):
    recipe = dp_recipe(sigmas[8.0], mode=mode)
    full = train(make_data(), tmp_path, recipe)
    store = CheckpointStore(tmp_path)
    for key in full.chain[1:]:  # a crash after stage 0
        store.path("shard-0", key).unlink()
    resumed = train(make_data(), tmp_path, recipe)
    assert resumed.slices_reused == [0] and resumed.slices_trained == [1, 2]
    assert resumed.weights_sha256 == full.weights_sha256
    assert resumed.dp_history == full.dp_history and resumed.epsilon == full.epsilon
    # a shard reused entirely still reports its epsilon, from the final checkpoint's history
    reused = train(make_data(), tmp_path, recipe)
    assert reused.slices_trained == [] and reused.epsilon == full.epsilon
    assert reused.weights_sha256 == full.weights_sha256


@pytest.mark.parametrize("mode", ["ghost", "fused"])
def test_erasure_resume_equals_scratch_under_dp(tmp_path, sigmas, mode):
    """Sigma lives in the recipe, so stage r depends on slices 0..r only: SISA's exactness holds."""
    recipe = dp_recipe(sigmas[8.0], mode=mode)
    data = make_data()
    train(data, tmp_path / "memo", recipe)
    reduced = drop(data, int(np.flatnonzero(data.slices == 1)[0]))
    resumed = train(reduced, tmp_path / "memo", recipe)
    scratch = train(reduced, tmp_path / "scratch", recipe)
    assert resumed.slices_trained == [1, 2]
    assert resumed.weights_sha256 == scratch.weights_sha256
    assert resumed.epsilon == scratch.epsilon


@pytest.mark.parametrize("target", [8.0, 1.0])
def test_reported_epsilon_meets_the_target_tightly(tmp_path, sigmas, target):
    data = make_data()
    result = train(data, tmp_path, dp_recipe(sigmas[target], target=target))
    # every planned step was taken and accounted, stage by stage
    assert result.dp_history == [list(h) for h in dp.planned_history(sigmas[target], plan_for(data))]
    assert [q for _, q, _ in result.dp_history] == [1 / math.ceil(n / 16) for n in dp.stage_sizes(data.slices, 3)]
    assert 0.5 * target < result.epsilon <= target
    assert result.epsilon >= 0.98 * target  # calibration stops within 1 % of the target


def test_epsilon_composes_every_stage_for_the_worst_case_record(sigmas):
    history = dp.planned_history(sigmas[8.0], plan_for(make_data()))
    assert len(history) == N_SLICES  # one phase per stage: slice-0 records take part in all of them
    whole = dp.epsilon_of(history, delta=DELTA)
    assert whole > dp.epsilon_of(history[1:], delta=DELTA) > dp.epsilon_of(history[2:], delta=DELTA) > 0


def test_opacus_prv_agrees_with_dp_accounting_pld(sigmas):
    history = dp.planned_history(sigmas[8.0], plan_for(make_data()))
    ours = dp.epsilon_of(history, delta=DELTA, accountant="prv")
    theirs = dp.cross_check_epsilon(history, delta=DELTA)
    assert abs(ours - theirs) / theirs < 0.05, (ours, theirs)
    # and the check has teeth: a different history is far off
    assert abs(dp.cross_check_epsilon(history[:1], delta=DELTA) - ours) / ours > 0.05


@pytest.mark.filterwarnings("ignore:Optimal order is the")
def test_rdp_accountant_is_the_more_conservative_one(tmp_path, sigmas):
    history = dp.planned_history(sigmas[8.0], plan_for(make_data()))
    assert dp.epsilon_of(history, delta=DELTA, accountant="rdp") > dp.epsilon_of(history, delta=DELTA, accountant="prv")


@pytest.mark.filterwarnings("ignore:Optimal order is the")
def test_plan_calibration_matches_opacus_for_one_phase():
    q, steps = 1 / 47, 4 * 47
    reference = dp.calibrate_noise(target_epsilon=2.0, delta=DELTA, sample_rate=q, steps=steps, accountant="rdp")
    ours = dp.calibrate_noise_for_plan([(q, steps)], target_epsilon=2.0, delta=DELTA, accountant="rdp")
    assert ours == pytest.approx(reference, rel=0.02)
    assert dp.epsilon_of([(ours, q, steps)], delta=DELTA, accountant="rdp") <= 2.0
    with pytest.raises(ValueError, match="too low"):
        dp.calibrate_noise_for_plan([(1.0, 10**6)], target_epsilon=1e-6, delta=1e-12, accountant="rdp")


def test_checkpoint_holds_a_plain_model_and_the_accountant(tmp_path, sigmas):
    recipe = dp_recipe(sigmas[8.0])
    result = train(make_data(), tmp_path, recipe)
    store = CheckpointStore(tmp_path)
    state = store.load("shard-0", result.chain[-1])
    plain = build_model("mlp", n_inputs=6, hidden=(16,), n_classes=2, seed=0)
    assert set(state["model"]) == set(plain.state_dict())  # no "_module." prefix
    plain.load_state_dict(state["model"])  # strict
    assert weights_digest(plain.state_dict()) == result.weights_sha256
    assert state["accountant"] == result.dp_history
    assert all(len(h) == 3 and isinstance(h[2], int) for h in state["accountant"])
    model = load_final_model(recipe, SECRET, "shard-0", store, result.chain[-1])
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert weights_digest(model.state_dict()) == result.weights_sha256


def test_dp_changes_the_weights_and_a_non_dp_recipe_is_unchanged(tmp_path, sigmas):
    assert RECIPE.digest() == NON_DP_DIGEST
    plain = train(make_data(), tmp_path / "plain", RECIPE)
    assert plain.epsilon is None and plain.dp_history is None
    state = CheckpointStore(tmp_path / "plain").load("shard-0", plain.chain[-1])
    assert set(state) == {"model", "optimizer", "stage"}
    private = train(make_data(), tmp_path / "dp", dp_recipe(sigmas[8.0]))
    assert private.weights_sha256 != plain.weights_sha256
    assert private.chain[0] != plain.chain[0]  # DP checkpoints never collide with non-DP ones


def test_recipe_digest_covers_dp_and_survives_a_json_round_trip(sigmas):
    recipe = dp_recipe(sigmas[8.0])
    assert len({recipe.digest(), RECIPE.digest(), dp_recipe(sigmas[1.0]).digest(),
                dp_recipe(sigmas[8.0], mode="hooks").digest(), dp_recipe(sigmas[8.0], accountant="rdp").digest(),
                dp_recipe(sigmas[8.0], mode="fused").digest()}) == 6
    # as the ensemble reads a recipe back from its manifest
    blob = json.loads(json.dumps(dataclasses.asdict(recipe)))
    back = Recipe(**{**blob, "hidden": tuple(blob["hidden"])})
    assert back == recipe and back.digest() == recipe.digest() and isinstance(back.dp, dp.DpSpec)


# digests of DP recipes made before the fused mode existed: adding it changed no checkpoint key
OLD_DP_DIGESTS = {
    "ghost": "92968c080d930bf5e07968d875d7619cc67da910561fd5e271e21d0e8912bcc7",
    "hooks": "21fc3df6e9fa27c9a2c1ec38168978f4559fdb7adf0a26a8b18907bb49324bbf",
    "subject": "48a44c4633cda4cb38b1ac2cb194b19a5644558d11cd7c80cf4c5e4219ee5071",
}


def test_dp_recipes_made_before_the_fused_mode_keep_their_digests():
    assert {mode: dp_recipe(1.3, mode=mode).digest() for mode in ("ghost", "hooks")} == {
        k: OLD_DP_DIGESTS[k] for k in ("ghost", "hooks")}
    subject = dataclasses.replace(RECIPE, batch_size=8, dp=dp.DpSpec(noise_multiplier=1.0, max_grad_norm=0.5,
                                                                      delta=DELTA, unit="subject"))
    assert subject.digest() == OLD_DP_DIGESTS["subject"]
    assert dp_recipe(1.3, mode="fused").digest() not in OLD_DP_DIGESTS.values()


def test_dp_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="accountant"):
        dp.DpSpec(noise_multiplier=1.0, max_grad_norm=1.0, delta=DELTA, accountant="gdp")
    with pytest.raises(ValueError, match="grad_sample_mode"):
        dp.DpSpec(noise_multiplier=1.0, max_grad_norm=1.0, delta=DELTA, grad_sample_mode="functorch")
    with pytest.raises(ValueError, match="noise_multiplier"):
        dp.DpSpec(noise_multiplier=0.0, max_grad_norm=1.0, delta=DELTA)
    with pytest.raises(ValueError, match="delta"):
        dp.DpSpec(noise_multiplier=1.0, max_grad_norm=1.0, delta=1.0)


@pytest.mark.parametrize("mode", dp.GRAD_SAMPLE_MODES)
def test_empty_poisson_batches_are_noised_and_accounted(mode):
    torch.manual_seed(0)
    model = build_model("mlp", n_inputs=6, hidden=(4,), n_classes=2, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = dp.DpTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1),
                           dp.DpSpec(noise_multiplier=1.0, max_grad_norm=1.0, delta=DELTA, grad_sample_mode=mode))
    x, y = torch.randn(50, 6), torch.zeros(50, dtype=torch.long)
    trainer.train_stage(x, y, batch_size=1, epochs=1, seed_for=lambda stream, epoch: 1)  # q = 1/50: mostly empty
    trainer.close()
    assert trainer.history() == [[1.0, 1 / 50, 50]]
    assert all(torch.isfinite(p).all() and not torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_ensemble_privacy_parallel_and_group_composition():
    shard_eps = [2.0, 3.5, 1.0]
    one = dp.ensemble_privacy(shard_eps, delta=DELTA, max_records_per_subject=1)
    assert one["record_epsilon"] == 3.5 and one["delta"] == DELTA
    assert one["subject_epsilon"] == one["record_epsilon"] and one["subject_delta"] == pytest.approx(DELTA)
    bounds = [dp.ensemble_privacy(shard_eps, delta=DELTA, max_records_per_subject=k) for k in (1, 2, 5)]
    assert [b["subject_epsilon"] for b in bounds] == [3.5, 7.0, 17.5]
    assert bounds[1]["subject_delta"] == pytest.approx(2 * math.exp(3.5) * DELTA)
    assert bounds[0]["subject_delta"] < bounds[1]["subject_delta"] < bounds[2]["subject_delta"]
    assert "loose" in bounds[2]["note"] and "vacuous" in bounds[2]["note"]  # 5 e^14 1e-5 > 1
    with pytest.raises(ValueError):
        dp.ensemble_privacy([], delta=DELTA, max_records_per_subject=1)


def grow(data: ShardData, n_new: int) -> ShardData:
    """`data` plus `n_new` records that arrived later: in the newest slice, as growth-aware ingest puts them."""
    rng = np.random.default_rng(99)
    keys = tuple(hashlib.sha256(f"new{i}".encode()).hexdigest() for i in range(n_new))
    x = rng.normal(size=(n_new, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    slices = np.concatenate([data.slices, np.full(n_new, N_SLICES - 1)])
    order = np.lexsort((np.array(data.record_keys + keys), slices))
    return ShardData(x=np.concatenate([data.x, x])[order], y=np.concatenate([data.y, y])[order],
                     slices=slices[order], record_keys=tuple(np.array(data.record_keys + keys)[order]))


def test_after_growth_epsilon_is_the_accountants_for_the_schedule_actually_trained(tmp_path, sigmas):
    recipe = dp_recipe(sigmas[8.0])
    store_dir = tmp_path / "ckpt"
    train(make_data(), store_dir, recipe)
    grown = grow(make_data(), 40)
    resumed = train(grown, store_dir, recipe)
    assert resumed.slices_reused == list(range(N_SLICES - 1)) and resumed.slices_trained == [N_SLICES - 1]
    # the schedule: the first stages as they ran before the growth, the last one on the grown data
    before, after = plan_for(make_data()), plan_for(grown)
    schedule = dp.planned_history(sigmas[8.0], before[:-1] + after[-1:])
    assert resumed.dp_history == [list(h) for h in dp._merge(schedule)]
    assert resumed.epsilon == pytest.approx(dp.cross_check_epsilon(schedule, delta=DELTA), rel=0.01)
    assert resumed.epsilon != pytest.approx(dp.epsilon_of(dp.planned_history(sigmas[8.0], before), delta=DELTA),
                                            rel=1e-6)
