"""Subject-level DP-SGD: people are sampled, each person's whole contribution is clipped, and the
accountant's epsilon (at the people's sampling rate) matches dp-accounting; SISA exactness holds."""
from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
import pytest
import torch
from opacus.optimizers.optimizer import DPOptimizer

from oblivio.training import dp
from oblivio.training.dp_fused import FusedDPOptimizer
from oblivio.training.nets import build_model
from oblivio.training.sisa import CheckpointStore, Recipe, ShardData, train_shard

SECRET = bytes(range(32))
N_SLICES = 3
DELTA = 1e-5
C = 0.5  # max_grad_norm
RECIPE = Recipe(model="mlp", hidden=(16,), n_inputs=6, n_classes=2, epochs_per_slice=2, batch_size=8,
                lr=0.01, weight_decay=0.0, seed=7)


def people_data(n_people: int = 60, seed: int = 0, without: str | None = None, newcomers: int = 0) -> ShardData:
    """1-6 records per person, records spread over slices by their hash, rows in (slice, key) order;
    `newcomers` more people arrive later, so growth-aware slicing places their records in the
    newest slice."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_people + newcomers):
        subject = hashlib.sha256(f"person{p}".encode()).hexdigest()
        for j in range(int(rng.integers(1, 7))):
            key = hashlib.sha256(f"person{p}/r{j}".encode()).hexdigest()
            x = rng.normal(size=6).astype(np.float32)
            first = int(key[:8], 16) % N_SLICES if p < n_people else N_SLICES - 1
            rows.append((first, key, subject, x, int(x[0] + x[1] > 0)))
    rows = sorted(r for r in rows if r[2] != without)
    subjects = np.unique([r[2] for r in rows], return_inverse=True)[1].astype(np.int64)
    return ShardData(x=np.stack([r[3] for r in rows]), y=np.array([r[4] for r in rows], dtype=np.int64),
                     slices=np.array([r[0] for r in rows], dtype=np.int64), record_keys=tuple(r[1] for r in rows),
                     subjects=subjects)


def subject_recipe(sigma: float = 1.0, mode: str = "ghost") -> Recipe:
    """mode: "ghost" and "hooks" both mean Opacus' hooks per person (recipes made before "fused")."""
    return dataclasses.replace(RECIPE, dp=dp.DpSpec(noise_multiplier=sigma, max_grad_norm=C, delta=DELTA,
                                                    unit="subject", grad_sample_mode=mode))


def accounted_epsilon(data: ShardData, recipe: Recipe, unit: str) -> float:
    """dp-accounting's PLD epsilon for the schedule `data`'s slices give: stage r samples the people
    (or records) seen in slices 0..r, one step per expected batch, `epochs_per_slice` times."""
    import dp_accounting
    from dp_accounting.pld import PLDAccountant

    events = []
    for r in range(N_SLICES):
        seen = data.slices <= r
        m = len(np.unique(data.subjects[seen])) if unit == "subject" else int(seen.sum())
        k = math.ceil(m / recipe.batch_size)
        events.append(dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
            1 / k, dp_accounting.GaussianDpEvent(recipe.dp.noise_multiplier)), recipe.epochs_per_slice * k))
    acc = PLDAccountant()
    acc.compose(dp_accounting.ComposedDpEvent(events))
    return acc.get_epsilon(recipe.dp.delta)


def train(data, store_dir, recipe, **kw):
    return train_shard(data, recipe=recipe, shard="shard-0", n_slices=N_SLICES, secret=SECRET,
                       store=CheckpointStore(store_dir), **kw)


def by_hand(model, x, y, subjects, people):
    """Each sampled person's gradient of their mean loss over all their records, by plain autograd
    on a copy of the model: one list of per-parameter gradients per person."""
    plain = build_model("mlp", n_inputs=6, hidden=(16,), n_classes=2, seed=3)
    plain.load_state_dict({k: v.detach().clone() for k, v in model.state_dict().items()})
    out = []
    for person in people.tolist():
        mine = subjects == person
        loss = torch.nn.functional.cross_entropy(plain(x[mine]), y[mine])  # their mean loss
        out.append(torch.autograd.grad(loss, list(plain.parameters())))
    return out


@pytest.mark.parametrize("mode", ["hooks", "fused"])
def test_each_persons_clipped_contribution_is_bounded(monkeypatch, mode):
    """Instrumented step: one unit per sampled *person*, whose gradient is their mean loss's over
    all their records in the stage (recomputed here by plain autograd), clipped to norm <=
    max_grad_norm; the clipped sum the optimizer noises is exactly the sum of those.

    hooks: Opacus clips per-person rows of `grad_sample` (DPOptimizer.clip_and_accumulate).
    fused: the fused optimizer's clip_and_accumulate computes the clipped sum from the layers'
    inputs and output gradients; it is checked against the people's own gradients."""
    data = people_data()
    torch.manual_seed(0)
    model = build_model("mlp", n_inputs=6, hidden=(16,), n_classes=2, seed=3)
    trainer = dp.DpTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), subject_recipe(mode=mode).dp)
    x, y, subjects = torch.from_numpy(data.x), torch.from_numpy(data.y), torch.from_numpy(data.subjects)
    seen = {"steps": 0, "people": 0, "checked_by_hand": 0, "clipped": 0}

    def check(self, rows, original, n_people):
        """`rows`: per-person gradients (one list per parameter) or None to recompute them all by hand."""
        people = trainer.last_people
        assert n_people == len(people)  # one unit per person, not per record
        if rows is None:
            grads = by_hand(model, x, y, subjects, people)
            rows = [torch.stack([g[j] for g in grads]) if grads else torch.zeros((0, *p.shape))
                    for j, p in enumerate(self.params)]
        norms = torch.stack([r.reshape(len(r), -1).norm(dim=1) for r in rows], dim=1).norm(dim=1)
        factor = (C / (norms + 1e-6)).clamp(max=1.0)
        clipped = torch.stack([(factor.view(-1, *[1] * (r.dim() - 1)) * r).reshape(len(r), -1).norm(dim=1)
                               for r in rows], dim=1).norm(dim=1) if len(people) else torch.zeros(0)
        assert (clipped <= C * (1 + 1e-5)).all(), clipped.max()
        if len(people) and seen["checked_by_hand"] < 3:  # the rows are the people's own gradients
            for i, grads in enumerate(by_hand(model, x, y, subjects, people)):
                for g, r in zip(grads, rows):
                    torch.testing.assert_close(r[i], g, rtol=1e-5, atol=1e-6)
            seen["checked_by_hand"] += 1
        original(self)
        for p, r in zip(self.params, rows):  # the optimizer summed exactly the clipped per-person rows
            expected = torch.einsum("i,i...", factor, r) if len(people) else torch.zeros_like(p)
            torch.testing.assert_close(p.summed_grad, expected, rtol=1e-5, atol=1e-6)
        seen["steps"] += 1
        seen["people"] += len(people)
        seen["clipped"] += int((norms > C).sum())

    if mode == "hooks":
        original = DPOptimizer.clip_and_accumulate

        def instrumented(self):
            rows = [g.clone() for g in self.grad_samples]
            check(self, rows, original, rows[0].shape[0])
        monkeypatch.setattr(DPOptimizer, "clip_and_accumulate", instrumented)
    else:
        original = FusedDPOptimizer.clip_and_accumulate

        def instrumented(self):
            n = 0 if self.captured is None else self.captured.grouping.people
            check(self, None, original, n)
        monkeypatch.setattr(FusedDPOptimizer, "clip_and_accumulate", instrumented)
    trainer.train_stage(x, y, subjects=subjects, batch_size=8, epochs=2, seed_for=lambda stream, epoch: 11 + epoch)
    trainer.close()
    m = len(np.unique(data.subjects))
    assert seen["steps"] == 2 * math.ceil(m / 8) and seen["checked_by_hand"] == 3
    assert seen["clipped"] > 0  # the bound was exercised, not only met by small gradients
    assert 0.5 * seen["steps"] * m / math.ceil(m / 8) < seen["people"] * 2 < 2 * seen["steps"] * m / math.ceil(m / 8)


@pytest.mark.parametrize("mode", ["ghost", "fused"])
def test_epsilon_matches_dp_accounting_for_the_subject_schedule(tmp_path, mode):
    """The schedule built here from the people, not the records, accounted by dp-accounting's PLD."""
    data = people_data()
    recipe = subject_recipe(sigma=1.1, mode=mode)
    result = train(data, tmp_path, recipe)
    assert result.epsilon == pytest.approx(accounted_epsilon(data, recipe, "subject"), rel=0.01)
    records = dp.stage_sizes(data.slices, N_SLICES)
    assert [q for _, q, _ in result.dp_history] != [1 / math.ceil(n / 8) for n in records]  # people, not records
    assert dp.subject_stage_sizes(data.slices, data.subjects, N_SLICES) == [
        len(np.unique(data.subjects[data.slices <= r])) for r in range(N_SLICES)]


@pytest.mark.parametrize("unit", ["subject", "record"])
def test_epsilon_after_growth_is_the_accountants_for_the_grown_schedule(tmp_path, unit):
    """A growth run (newcomers in the newest slice) retrains the last stage only; the shard's
    epsilon is then dp-accounting's for the schedule it actually has (the earlier stages as they
    were, the last one grown), and equals a from-scratch run's on the grown table."""
    recipe = dataclasses.replace(RECIPE, dp=dp.DpSpec(noise_multiplier=1.1, max_grad_norm=C, delta=DELTA,
                                                      unit=unit, grad_sample_mode="fused"))
    before = train(people_data(), tmp_path / "store", recipe)
    grown_data = people_data(newcomers=15)
    grown = train(grown_data, tmp_path / "store", recipe)
    assert grown.slices_reused == list(range(N_SLICES - 1)) and grown.slices_trained == [N_SLICES - 1]
    assert grown.dp_history[:-1] == before.dp_history[:-1] != grown.dp_history  # only the last phase changed
    assert grown.epsilon == pytest.approx(accounted_epsilon(grown_data, recipe, unit), rel=0.01)
    assert grown.epsilon != pytest.approx(before.epsilon, rel=1e-3)
    scratch = train(grown_data, tmp_path / "scratch", recipe)
    assert (grown.weights_sha256, grown.epsilon) == (scratch.weights_sha256, scratch.epsilon)


@pytest.mark.parametrize("mode", ["ghost", "fused"])
def test_resume_equals_uninterrupted(tmp_path, mode):
    recipe = subject_recipe(mode=mode)
    full = train(people_data(), tmp_path, recipe)
    store = CheckpointStore(tmp_path)
    for key in full.chain[1:]:  # a crash after stage 0
        store.path("shard-0", key).unlink()
    resumed = train(people_data(), tmp_path, recipe)
    assert resumed.slices_reused == [0] and resumed.slices_trained == [1, 2]
    assert resumed.weights_sha256 == full.weights_sha256
    assert resumed.dp_history == full.dp_history and resumed.epsilon == full.epsilon
    again = train(people_data(), tmp_path / "other", recipe)
    assert again.weights_sha256 == full.weights_sha256  # deterministic: same data, recipe and secret


@pytest.mark.parametrize("mode", ["ghost", "fused"])
def test_erasure_retrain_equals_training_from_scratch(tmp_path, mode):
    """Erase a person first seen in slice 1: the shard resumes at stage 1 and ends bit-identical
    to a from-scratch run on the data without them."""
    data = people_data()
    recipe = subject_recipe(mode=mode)
    before = train(data, tmp_path / "memo", recipe)
    first_slice = {}
    for key, s, subject in zip(data.record_keys, data.slices, data.subjects):
        first_slice[subject] = min(first_slice.get(subject, N_SLICES), s)
    code = next(c for c, s in sorted(first_slice.items()) if s == 1)
    subject = sorted({hashlib.sha256(f"person{p}".encode()).hexdigest() for p in range(60)})[code]
    reduced = people_data(without=subject)
    assert len(reduced.y) < len(data.y)
    resumed = train(reduced, tmp_path / "memo", recipe)
    scratch = train(reduced, tmp_path / "scratch", recipe)
    assert resumed.slices_reused == [0] and resumed.slices_trained == [1, 2]
    assert resumed.weights_sha256 == scratch.weights_sha256 != before.weights_sha256
    assert resumed.epsilon == scratch.epsilon


def test_subject_unit_changes_the_recipe_and_needs_subjects(tmp_path):
    record = dataclasses.replace(RECIPE, dp=dp.DpSpec(noise_multiplier=1.0, max_grad_norm=C, delta=DELTA))
    assert subject_recipe().digest() != record.digest()
    data = people_data()
    with pytest.raises(ValueError, match="subjects"):
        train(dataclasses.replace(data, subjects=None), tmp_path, subject_recipe())
    with pytest.raises(ValueError, match="unit"):
        dp.DpSpec(noise_multiplier=1.0, max_grad_norm=C, delta=DELTA, unit="household")


def test_subject_level_report_and_gate_read_the_person_figure():
    subject = dp.ensemble_privacy([2.0, 3.0], delta=DELTA, max_records_per_subject=15, unit="subject")
    assert subject["unit"] == "subject" and subject["subject_epsilon"] == 3.0 and subject["subject_delta"] == DELTA
    assert subject["record_epsilon"] == 6.0 and subject["record_delta"] == pytest.approx((1 + math.exp(3)) * DELTA)
    record = dp.ensemble_privacy([2.0, 3.0], delta=DELTA, max_records_per_subject=15, unit="record")
    assert record["unit"] == "record" and record["record_epsilon"] == 3.0 and record["subject_epsilon"] == 45.0
