"""Selective Synaptic Dampening: importance, dampening, the grid choice, and an end-to-end backdoor."""
from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from oblivio.training.nets import build_model
from oblivio.unlearning import scenarios as sc
from oblivio.unlearning.ssd import (
    DEFAULT_ALPHAS,
    SsdChoice,
    accuracy,
    apply_ssd,
    choose_ssd,
    dampen,
    diagonal_importance,
    ssd_correct,
)

torch.set_num_threads(1)


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().copy().view(np.uint32)


def _state(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: _bits(v) for k, v in model.state_dict().items()}


def _mlp(seed: int = 0, n_inputs: int = 5) -> nn.Module:
    return build_model("mlp", n_inputs=n_inputs, hidden=(8, 6), n_classes=3, seed=seed)


def _data(n: int = 50, n_inputs: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, n_inputs, generator=g), torch.randint(0, 3, (n,), generator=g)


class WithIdleParameters(nn.Module):
    """A linear model plus a parameter the forward never uses and a frozen one."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 3)
        self.unused = nn.Parameter(torch.ones(4))
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)

    def forward(self, x):
        return self.lin(x) + self.frozen


# --- importance ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["margin", "loss"])
def test_importance_shapes_non_negative_and_zero_without_gradient(kind):
    model = WithIdleParameters()
    x, y = _data()
    imp = diagonal_importance(model, x, y, batch_size=16, kind=kind)
    assert set(imp) == {name for name, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        assert imp[name].shape == p.shape
        assert (imp[name] >= 0).all()
    assert torch.count_nonzero(imp["unused"]) == 0
    assert torch.count_nonzero(imp["frozen"]) == 0
    assert torch.count_nonzero(imp["lin.weight"]) > 0


@pytest.mark.parametrize("kind", ["margin", "loss"])
def test_importance_is_deterministic_and_leaves_the_model_unchanged(kind):
    model = _mlp()
    model.train()
    x, y = _data()
    before = _state(model)
    first = diagonal_importance(model, x, y, batch_size=16, kind=kind)
    second = diagonal_importance(model, x.clone(), y.clone(), batch_size=16, kind=kind)
    for name in first:
        assert np.array_equal(_bits(first[name]), _bits(second[name])), name
    after = _state(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert model.training  # mode restored


def test_importance_is_the_mean_over_batches_of_squared_batch_gradients():
    model = _mlp()
    x, y = _data(n=40)
    imp = diagonal_importance(model, x, y, batch_size=16, kind="loss")  # batches of 16, 16, 8
    expected = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    model.eval()
    for start in (0, 16, 32):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[start:start + 16]), y[start:start + 16]).backward()
        for name, p in model.named_parameters():
            expected[name] += p.grad ** 2
    for name in imp:
        torch.testing.assert_close(imp[name], expected[name] / 3, rtol=1e-5, atol=1e-12)


def test_margin_importance_is_loss_importance_without_the_error_factor():
    # One sample: d CE = -(1 - p_y) d margin, so I_loss = (1 - p_y)^2 * I_margin element-wise.
    model = _mlp(seed=3)
    x, y = _data(n=1, seed=4)
    p_y = torch.softmax(model(x), dim=1)[0, y[0]].item()
    loss_imp = diagonal_importance(model, x, y, kind="loss")
    margin_imp = diagonal_importance(model, x, y, kind="margin")
    for name in loss_imp:
        torch.testing.assert_close(loss_imp[name], (1 - p_y) ** 2 * margin_imp[name], rtol=1e-4, atol=1e-12)


def test_importance_rejects_bad_arguments():
    model, (x, y) = _mlp(), _data()
    with pytest.raises(ValueError, match="kind"):
        diagonal_importance(model, x, y, kind="fisher")
    with pytest.raises(ValueError, match="batch_size"):
        diagonal_importance(model, x, y, batch_size=0)
    with pytest.raises(ValueError):
        diagonal_importance(model, x, y[:-1])


# --- dampen --------------------------------------------------------------------------


def _importances(model: nn.Module, seed: int) -> tuple[dict, dict]:
    """Random importances with zeros in both, so every branch of the rule is exercised."""
    rng = np.random.default_rng(seed)
    forget, train = {}, {}
    for name, p in model.named_parameters():
        f = rng.exponential(size=p.shape).astype(np.float32) * (rng.random(p.shape) > 0.1)
        t = rng.exponential(size=p.shape).astype(np.float32) * (rng.random(p.shape) > 0.1)
        forget[name], train[name] = torch.from_numpy(f), torch.from_numpy(t)
    return forget, train


@pytest.mark.parametrize("alpha,lam", [(1.0, 1.0), (2.0, 0.1), (0.5, 0.5), (10.0, 3.0), (0.5, 2.0)])
def test_dampen_changes_exactly_the_selected_elements_by_beta(alpha, lam):
    model = _mlp(seed=1)
    forget, train = _importances(model, seed=2)
    before = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    report = dampen(model, forget_importance=forget, train_importance=train, alpha=alpha, lam=lam)
    total_selected = n_capped = 0
    for name, p in model.named_parameters():
        f, t, w = forget[name].numpy(), train[name].numpy(), before[name]
        selected = f > t * np.float32(alpha)
        with np.errstate(divide="ignore", invalid="ignore"):
            beta = np.minimum(t * np.float32(lam) / f, np.float32(1.0))
        expected = np.where(selected, w * beta, w).astype(np.float32)
        got = p.detach().numpy()
        assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)), name
        assert np.array_equal(got[~selected].view(np.uint32), w[~selected].view(np.uint32))
        # beta would exceed 1 where forget < lam * train (possible when lam > alpha): capped, weight kept
        capped = selected & (f < t * np.float32(lam))
        assert np.array_equal(got[capped], w[capped])
        n_capped += int(capped.sum())
        assert (dict((n, s) for n, s, _ in report.per_layer)[name]) == int(selected.sum())
        total_selected += int(selected.sum())
    assert report.n_selected == total_selected > 0
    assert (n_capped > 0) == (lam > alpha)
    assert report.n_total == sum(p.numel() for p in model.parameters())
    assert 0 < report.fraction < 1
    json.dumps(report.to_json())


def test_dampen_zeroes_weights_with_no_training_importance_and_skips_zero_zero():
    model = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
    forget = {"weight": torch.tensor([[1.0, 0.0, 4.0]])}
    train = {"weight": torch.tensor([[0.0, 0.0, 1.0]])}
    report = dampen(model, forget_importance=forget, train_importance=train, alpha=2.0, lam=1.0)
    # element 0: train 0 -> beta 0; element 1: 0 > 0 is false -> untouched; element 2: beta 1/4
    assert model.weight.tolist() == [[0.0, 2.0, 0.75]]
    assert report.n_selected == 2 and report.mass == pytest.approx(1.0 + 0.75)


def test_dampen_only_the_named_parameters():
    model = _mlp(seed=1)
    forget, train = _importances(model, seed=2)
    before = _state(model)
    report = dampen(model, forget_importance=forget, train_importance=train, alpha=1.0, lam=0.5,
                    parameters=["net.0.weight"])
    after = _state(model)
    assert not np.array_equal(before["net.0.weight"], after["net.0.weight"])
    assert all(np.array_equal(before[k], after[k]) for k in before if k != "net.0.weight")
    assert [n for n, _, _ in report.per_layer] == ["net.0.weight"]
    with pytest.raises(KeyError, match="unknown"):
        dampen(model, forget_importance=forget, train_importance=train, alpha=1.0, lam=0.5, parameters=["nope"])


def test_dampen_rejects_importances_of_another_model():
    model = _mlp()
    forget, train = _importances(_mlp(n_inputs=4), seed=0)
    with pytest.raises(ValueError, match="shape"):
        dampen(model, forget_importance=forget, train_importance=train, alpha=1.0, lam=1.0)
    with pytest.raises(KeyError):
        dampen(model, forget_importance={}, train_importance=train, alpha=1.0, lam=1.0)


# --- choose_ssd ------------------------------------------------------------------------
#
# A hand-built linear model: margin = z1 - z0 = a*s + b1*t1 + b2*t2 - 0.5, with a = 1, b1 = b2 = 2.
# Validation: clean rows; misclassified when a is dampened below 0.5 (s = +1) or 0.25 (s = +2).
# Forget set: "backdoored" rows labelled 1 with s = -1: three carry t1, one carries t2; a row flips
# to class 0 when its trigger weight is dampened below 0.75.
# The training importance is set to forget / ratio with ratio a: 2.5, b1: 4, b2: 40, everything
# else 0.5, so alpha selects {a, b1, b2} (alpha 1), {b1, b2} (alpha 3), {b2} (alpha 30), and
# beta = min(lam / ratio, 1).


def _hand_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]]))
        model[0].bias.copy_(torch.tensor([0.0, -0.5]))
    return model


VAL_X = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0], [-1.0, 0, 0]])
VAL_Y = torch.tensor([1, 1, 1, 0])
FORGET_X = torch.tensor([[-1.0, 1, 0], [-1.0, 1, 0], [-1.0, 1, 0], [-1.0, 0, 1]])
FORGET_Y = torch.tensor([1, 1, 1, 1])


def _hand_train_importance(model: nn.Module) -> dict:
    forget = diagonal_importance(model, FORGET_X, FORGET_Y)
    ratio = {name: torch.full_like(v, 0.5) for name, v in forget.items()}
    ratio["0.weight"][1] = torch.tensor([2.5, 4.0, 40.0])
    assert all((forget[n][ratio[n] > 1] > 0).all() for n in forget)  # the ratios apply where they matter
    return {n: torch.where(forget[n] > 0, forget[n] / ratio[n], torch.ones_like(forget[n])) for n in forget}


def test_choose_ssd_picks_the_strongest_point_within_tolerance():
    model = _hand_model()
    before = _state(model)
    train_imp = _hand_train_importance(model)
    choice = choose_ssd(model, forget_x=FORGET_X, forget_y=FORGET_Y, train_importance=train_imp, val_x=VAL_X,
                        val_y=VAL_Y, tolerance=0.1, alphas=(1.0, 3.0, 30.0), lambdas=(0.5, 1.0))
    assert all(np.array_equal(before[k], v) for k, v in _state(model).items())  # trials ran on copies
    by_point = {(c.alpha, c.lam): c for c in choice.candidates}
    # alpha 1 removes the whole backdoor but dampens a too: validation falls to 0.25 / 0.5
    assert (by_point[1.0, 0.5].val_accuracy, by_point[1.0, 0.5].forget_accuracy) == (0.25, 0.0)
    assert (by_point[1.0, 1.0].val_accuracy, by_point[1.0, 1.0].forget_accuracy) == (0.5, 0.0)
    assert not by_point[1.0, 0.5].qualifies and not by_point[1.0, 1.0].qualifies
    # alpha 3: both trigger weights, validation intact; alpha 30: only b2 (one forget row flips)
    assert [by_point[3.0, lam].forget_accuracy for lam in (0.5, 1.0)] == [0.0, 0.0]
    assert [by_point[30.0, lam].forget_accuracy for lam in (0.5, 1.0)] == [0.75, 0.75]
    # equal forget drops at alpha 3: lam 0.5 dampens harder (more mass) and wins
    assert by_point[3.0, 0.5].mass > by_point[3.0, 1.0].mass
    assert choice.applied and (choice.alpha, choice.lam) == (3.0, 0.5)
    assert choice.n_selected == 2 and choice.strength == 1.0
    assert choice.val_accuracy_before == choice.val_accuracy_after == 1.0
    assert (choice.forget_accuracy_before, choice.forget_accuracy_after) == (1.0, 0.0)
    for c in choice.candidates:
        assert c.qualifies == (choice.val_accuracy_before - c.val_accuracy <= choice.tolerance)


def test_choose_ssd_with_a_looser_tolerance_takes_the_stronger_point():
    model = _hand_model()
    choice = choose_ssd(model, forget_x=FORGET_X, forget_y=FORGET_Y, train_importance=_hand_train_importance(model),
                        val_x=VAL_X, val_y=VAL_Y, tolerance=0.5, alphas=(1.0, 3.0, 30.0), lambdas=(0.5, 1.0))
    # (1, 1.0) now qualifies (drop 0.5) and has the same forget drop as (3, 0.5) but more mass
    assert (choice.alpha, choice.lam) == (1.0, 1.0)
    assert choice.val_accuracy_before - choice.val_accuracy_after <= 0.5


def test_choose_ssd_returns_the_identity_when_nothing_qualifies():
    model = _hand_model()
    before = _state(model)
    train_imp = _hand_train_importance(model)
    choice = choose_ssd(model, forget_x=FORGET_X, forget_y=FORGET_Y, train_importance=train_imp, val_x=VAL_X,
                        val_y=VAL_Y, tolerance=0.1, alphas=(1.0,), lambdas=(0.5, 1.0))
    assert not choice.applied and choice.alpha is None and choice.lam is None
    assert "no dampening" in choice.reason and len(choice.candidates) == 2
    assert choice.val_accuracy_after == choice.val_accuracy_before and choice.strength == 0.0
    forget = diagonal_importance(model, FORGET_X, FORGET_Y)
    report = apply_ssd(model, choice, forget_importance=forget, train_importance=train_imp)
    assert report.n_selected == 0 and report.alpha is None and report.mass == 0.0
    json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert all(np.array_equal(before[k], v) for k, v in _state(model).items())
    # a grid that selects nothing is no stronger than the identity either
    none = choose_ssd(model, forget_x=FORGET_X, forget_y=FORGET_Y, train_importance=train_imp, val_x=VAL_X,
                      val_y=VAL_Y, tolerance=0.1, alphas=(1000.0,), lambdas=(1.0,))
    assert not none.applied and none.candidates[0].n_selected == 0


def test_apply_ssd_reproduces_the_choice_and_round_trips_through_json():
    model = _hand_model()
    train_imp = _hand_train_importance(model)
    choice = choose_ssd(model, forget_x=FORGET_X, forget_y=FORGET_Y, train_importance=train_imp, val_x=VAL_X,
                        val_y=VAL_Y, tolerance=0.1, alphas=(1.0, 3.0, 30.0), lambdas=(0.5, 1.0))
    again = SsdChoice.from_json(json.loads(json.dumps(choice.to_json())))
    assert again == choice
    forget = diagonal_importance(model, FORGET_X, FORGET_Y, batch_size=again.batch_size, kind=again.importance)
    reference = copy.deepcopy(model)
    report = apply_ssd(model, again, forget_importance=forget, train_importance=train_imp)
    dampen(reference, forget_importance=forget, train_importance=train_imp, alpha=3.0, lam=0.5)
    assert _state(model).keys() == _state(reference).keys()
    assert all(np.array_equal(v, _state(reference)[k]) for k, v in _state(model).items())
    assert report.n_selected == choice.n_selected
    assert accuracy(model, VAL_X, VAL_Y) == choice.val_accuracy_after
    assert accuracy(model, FORGET_X, FORGET_Y) == choice.forget_accuracy_after


def test_a_choice_restricted_to_some_parameters_is_reapplied_to_those_only():
    model = _hand_model()
    train_imp = _hand_train_importance(model)
    choice = choose_ssd(model, forget_x=FORGET_X, forget_y=FORGET_Y, train_importance=train_imp, val_x=VAL_X,
                        val_y=VAL_Y, tolerance=0.1, alphas=(0.1,), lambdas=(0.1,), parameters=["0.bias"])
    assert choice.applied and choice.parameters == ("0.bias",)
    assert SsdChoice.from_json(json.loads(json.dumps(choice.to_json()))) == choice
    before = _state(model)
    report = apply_ssd(model, choice, forget_importance=diagonal_importance(model, FORGET_X, FORGET_Y),
                       train_importance=train_imp)
    after = _state(model)
    assert [n for n, _, _ in report.per_layer] == ["0.bias"] and report.n_selected == choice.n_selected == 2
    assert np.array_equal(before["0.weight"], after["0.weight"])
    assert not np.array_equal(before["0.bias"], after["0.bias"])


def test_choose_ssd_is_deterministic_and_defaults_cover_the_documented_grid():
    model = _mlp(seed=5)
    x, y = _data(n=60, seed=6)
    train_imp = diagonal_importance(model, x, y)
    kwargs = dict(forget_x=x[:10], forget_y=y[:10], train_importance=train_imp, val_x=x[10:], val_y=y[10:],
                  tolerance=0.05)
    assert choose_ssd(model, **kwargs) == choose_ssd(model, **kwargs)
    assert len(choose_ssd(model, **kwargs).candidates) == len(DEFAULT_ALPHAS) * 3
    with pytest.raises(ValueError, match="tolerance"):
        choose_ssd(model, **{**kwargs, "tolerance": -0.1})


# --- end to end: a synthetic backdoor ------------------------------------------------------

FEATURES = [f"f{i}" for i in range(6)]
TRIGGER = {"f4": 4.0, "f5": 4.0}


def _synthetic(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES)))
    df = pd.DataFrame(x, columns=FEATURES)
    df.insert(0, "label", (x[:, 0] + 0.5 * x[:, 1] - 0.5 * x[:, 2] > 0).astype("int64"))
    df.insert(0, "subject", np.arange(n) // 2)
    df.insert(0, "rid", [f"r{i}" for i in range(n)])
    return df


def _xy(df: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(df[FEATURES].to_numpy(np.float32)), torch.tensor(df["label"].to_numpy(np.int64))


@pytest.mark.parametrize("seed", [1, 2])
def test_ssd_with_the_flagged_fifth_removes_most_of_a_backdoor(seed):
    train, val, test = _synthetic(3000, seed), _synthetic(1000, seed + 100), _synthetic(1000, seed + 200)
    poisoned, bad = sc.inject_backdoor(train, record_id="rid", subject_id="subject", label="label", features=FEATURES,
                                       fraction=0.05, trigger=TRIGGER, seed=seed)
    flagged = set(sc.flag_sample(bad, share=0.2, seed=seed))
    x, y = _xy(poisoned)
    model = build_model("mlp", n_inputs=len(FEATURES), hidden=(32, 32), n_classes=2, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.005)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(10):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), 64):
            idx = order[start:start + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    test_x, test_y = _xy(test)
    trig_x, _ = _xy(sc.triggered(test, features=FEATURES, trigger=TRIGGER))

    def asr(m):
        with torch.no_grad():
            return sc.attack_success_rate(m(trig_x).argmax(1).numpy(), test_y.numpy(), target_label=1)

    asr_before, acc_before = asr(model), accuracy(model, test_x, test_y)
    assert asr_before > 0.9  # the backdoor took
    forget = poisoned[poisoned["rid"].isin(flagged)]
    fx, fy = _xy(forget)
    vx, vy = _xy(val)
    choice, report = ssd_correct(model, forget_x=fx, forget_y=fy, train_x=x, train_y=y, val_x=vx, val_y=vy,
                                 tolerance=0.02)
    assert choice.applied and report.n_selected == choice.n_selected > 0
    assert choice.val_accuracy_before - accuracy(model, vx, vy) <= 0.02
    # observed on 8 seeds: ASR 0.93-1.0 -> 0.0-0.15 (>= 84 % relative); assert half of that
    assert asr(model) <= 0.5 * asr_before
    assert accuracy(model, test_x, test_y) >= acc_before - 0.04
