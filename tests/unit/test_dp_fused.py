"""Fused clipping (`dp.grad_sample_mode: fused`) against Opacus as the oracle: the per-record and
per-person norms and the clipped summed gradient equal what Opacus' hooks give after Opacus' own
clipping; whole stages match the hooks path's weights (same samples, same noise); other models
keep Opacus' path."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers.optimizer import DPOptimizer
from torch import nn

from oblivio.training import dp, dp_fused
from oblivio.training.nets import build_model

DELTA = 1e-5


def random_mlp(seed: int, dtype: torch.dtype) -> nn.Sequential:
    """Depth 1-3, random widths, a bias-free layer and an Identity now and then, 2-4 classes."""
    g = torch.Generator().manual_seed(seed)
    depth = int(torch.randint(1, 4, (), generator=g))
    widths = [int(w) for w in torch.randint(3, 20, (depth + 1,), generator=g)]
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(widths[i], widths[i + 1], bias=bool(seed % 3 or i)), nn.ReLU()]
        if seed % 2:
            layers.append(nn.Identity())
    layers.append(nn.Linear(widths[-1], int(torch.randint(2, 5, (), generator=g))))
    torch.manual_seed(seed)
    for m in layers:
        if isinstance(m, nn.Linear):
            m.reset_parameters()
    return nn.Sequential(*layers).to(dtype)


def batch_of_people(seed: int, n_in: int, n_classes: int, dtype: torch.dtype):
    """12 people of 1-6 records each, rows shuffled; 5 of them sampled."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 7, (12,), generator=g)
    person = torch.repeat_interleave(torch.arange(12), counts)
    person = person[torch.randperm(len(person), generator=g)]
    x = torch.randn(len(person), n_in, generator=g, dtype=dtype)
    y = torch.randint(0, n_classes, (len(person),), generator=g)
    sampled = torch.sort(torch.randperm(12, generator=g)[:5]).values
    return x, y, person, sampled


def opacus_clipped(model, x, y, weight, group, n_units, max_grad_norm):
    """Opacus' hooks per-record gradients, summed per unit (as DpTrainer's hooks path does), then
    Opacus' own DPOptimizer.clip_and_accumulate: (per-unit norms, {param: clipped sum})."""
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=0.0,
                      max_grad_norm=max_grad_norm, expected_batch_size=n_units)
    losses = nn.functional.cross_entropy(gsm(x), y, reduction="none")
    (losses * weight if weight is not None else losses).sum().backward()
    if group is not None:
        for p in model.parameters():
            p.grad_sample = torch.zeros((n_units, *p.shape), dtype=p.dtype).index_add_(0, group, p.grad_sample)
    norms = torch.stack([g.reshape(n_units, -1).norm(2, dim=-1) for g in opt.grad_samples], dim=1).norm(2, dim=1)
    opt.clip_and_accumulate()
    out = {p: p.summed_grad.clone() for p in model.parameters()}
    gsm._close()
    for p in model.parameters():
        p.grad, p.summed_grad = None, None
    return norms, out


@pytest.mark.filterwarnings("ignore:Full backward hook")
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("unit", ["record", "subject"])
@pytest.mark.parametrize("seed", range(6))
def test_fused_norms_and_clipped_sum_equal_opacus_hooks(seed, unit, dtype, tol):
    model = random_mlp(seed, dtype)
    chain = dp_fused.linear_chain(model)
    assert chain is not None
    linear = [m for m in model if isinstance(m, nn.Linear)]
    x, y, person, sampled = batch_of_people(seed, linear[0].in_features, linear[-1].out_features, dtype)
    if unit == "record":
        rows, grouping, weight, group, n_units = torch.arange(len(y)), None, None, None, len(y)
    else:
        people = dp_fused.People.of(person, dp_fused.input_rows(chain, x))  # as training builds it
        rows, grouping = people.batch(sampled)
        weight, group, n_units = people.weight[rows].to(dtype), grouping.group, len(sampled)
        assert set(person[rows].tolist()) == set(sampled.tolist())  # every record of the sampled, no other
        assert len(rows) == int(torch.isin(person, sampled).sum())
        assert torch.equal(person[rows], sampled[group])  # grouped person by person
    captured = dp_fused.capture(chain, x[rows], dp_fused.one_hot(chain, y[rows], dtype), weight, grouping)
    norms = dp_fused.unit_norms(captured)
    max_grad_norm = float(norms.median())  # some units clipped, some not
    sums = dp_fused.clipped_sums(captured, max_grad_norm)
    ref_norms, ref_sums = opacus_clipped(model, x[rows], y[rows], weight, group, n_units, max_grad_norm)
    torch.testing.assert_close(norms, ref_norms, rtol=tol, atol=tol)
    if grouping is not None:  # the same norms with the first layer's Gram computed per step
        per_step = dataclasses.replace(captured, grouping=dataclasses.replace(grouping, input_gram=None))
        torch.testing.assert_close(dp_fused.unit_norms(per_step), ref_norms, rtol=tol, atol=tol)
    assert set(sums) == set(model.parameters())
    for p in model.parameters():
        torch.testing.assert_close(sums[p], ref_sums[p], rtol=tol, atol=tol)
    assert (norms > max_grad_norm).any() and (norms < max_grad_norm).any()


def test_the_optimizer_puts_the_clipped_sum_in_and_an_empty_batch_is_zeros():
    model = random_mlp(1, torch.float32)
    chain = dp_fused.linear_chain(model)
    x, y, _, _ = batch_of_people(1, model[0].in_features, model[-1].out_features, torch.float32)
    opt = dp_fused.FusedDPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=1.0,
                                    max_grad_norm=0.3, expected_batch_size=4.0)
    opt.captured = dp_fused.capture(chain, x, dp_fused.one_hot(chain, y))
    expected = dp_fused.clipped_sums(opt.captured, 0.3)
    opt.accumulate()  # what Opacus' pre_step calls first
    assert all(torch.equal(p.summed_grad, expected[p]) for p in model.parameters())
    assert opt.captured is None  # one batch, one step
    opt.zero_grad(set_to_none=True)
    opt.accumulate()  # nobody sampled
    assert all(torch.equal(p.summed_grad, torch.zeros_like(p)) for p in model.parameters())


def people_data(n_people: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 7, n_people)
    subjects = torch.from_numpy(np.repeat(np.arange(n_people), counts)[rng.permutation(counts.sum())])
    x = torch.from_numpy(rng.normal(size=(len(subjects), 6)).astype(np.float32))
    y = (x[:, 0] + x[:, 1] > 0).long()
    return x, y, subjects


@pytest.mark.filterwarnings("ignore:Full backward hook")
@pytest.mark.parametrize("unit", ["record", "subject"])
def test_a_stage_matches_the_hooks_path_up_to_rounding(unit):
    """Same Poisson samples, same noise, same scaling and accounting: plain SGD ends where Opacus'
    hooks path ends, to rounding (Adam would magnify the rounding of near-zero coordinates)."""
    x, y, subjects = people_data(40)
    weights, histories = {}, {}
    for mode in ("hooks", "fused"):
        model = build_model("mlp", n_inputs=6, hidden=(16, 8), n_classes=2, seed=3)
        spec = dp.DpSpec(noise_multiplier=0.8, max_grad_norm=0.5, delta=DELTA, grad_sample_mode=mode, unit=unit)
        trainer = dp.DpTrainer(model, torch.optim.SGD(model.parameters(), lr=0.05), spec)
        assert (trainer.chain is not None) == (mode == "fused")
        trainer.train_stage(x, y, batch_size=8, epochs=2, seed_for=lambda stream, epoch: 5 + epoch, subjects=subjects)
        trainer.close()
        weights[mode], histories[mode] = model.state_dict(), trainer.history()
    assert histories["hooks"] == histories["fused"]
    for name, w in weights["hooks"].items():
        torch.testing.assert_close(weights["fused"][name], w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("unit", ["record", "subject"])
def test_empty_poisson_batches_are_noised_and_accounted(unit):
    model = build_model("mlp", n_inputs=6, hidden=(4,), n_classes=2, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = dp.DpTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1),
                           dp.DpSpec(noise_multiplier=1.0, max_grad_norm=1.0, delta=DELTA, grad_sample_mode="fused",
                                     unit=unit))
    x, y, subjects = people_data(50)
    n = 50 if unit == "subject" else len(y)
    trainer.train_stage(x, y, batch_size=1, epochs=1, seed_for=lambda stream, epoch: 1, subjects=subjects)
    trainer.close()
    assert trainer.history() == [[1.0, 1 / n, n]]  # q = 1/n: most steps sample nobody
    assert all(torch.isfinite(p).all() and not torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_only_chains_of_linear_layers_and_relus_are_fused():
    mlp = build_model("mlp", n_inputs=6, hidden=(8, 8), n_classes=2, seed=0)
    assert [type(m) for m in dp_fused.linear_chain(mlp)] == [nn.Linear, nn.ReLU] * 2 + [nn.Linear]
    nested = nn.Sequential(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), nn.Linear(4, 2))
    assert len(dp_fused.linear_chain(nested)) == 3
    assert dp_fused.linear_chain(build_model("cnn", n_inputs=784, hidden=(4, 4), n_classes=2, seed=0)) is None
    assert dp_fused.linear_chain(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))) is None
    assert dp_fused.linear_chain(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))) is None
    frozen = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    frozen[0].weight.requires_grad_(False)
    assert dp_fused.linear_chain(frozen) is None


@pytest.mark.filterwarnings("ignore:Full backward hook")
@pytest.mark.parametrize("unit", ["record", "subject"])
def test_the_cnn_keeps_opacus_path(unit):
    """`fused` on a model it cannot fuse trains exactly as Opacus' path of the unit does (ghost
    clipping per record, hooks per person): the same bits."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((24, 784)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 2, 24))
    subjects = torch.arange(24) // 3
    weights = {}
    for mode in ("fused", "ghost"):
        model = build_model("cnn", n_inputs=784, hidden=(2, 2), n_classes=2, seed=1)
        spec = dp.DpSpec(noise_multiplier=1.0, max_grad_norm=1.0, delta=DELTA, grad_sample_mode=mode, unit=unit)
        trainer = dp.DpTrainer(model, torch.optim.Adam(model.parameters(), lr=0.01), spec)
        assert trainer.chain is None
        trainer.train_stage(x, y, batch_size=4, epochs=1, seed_for=lambda stream, epoch: 2, subjects=subjects)
        trainer.close()
        weights[mode] = model.state_dict()
    assert all(torch.equal(weights["fused"][k], v) for k, v in weights["ghost"].items())


def test_fused_is_a_choice_of_params_and_a_recipe_of_its_own():
    from oblivio.config import CHOICES

    assert set(CHOICES["dp.grad_sample_mode"]) == set(dp.GRAD_SAMPLE_MODES) >= {"fused"}
    base = dp.DpSpec(noise_multiplier=1.0, max_grad_norm=1.0, delta=DELTA)
    assert dataclasses.replace(base, grad_sample_mode="fused") != base
