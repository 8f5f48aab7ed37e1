"""DP-SGD for SISA shards (Opacus), with accounting that covers every stage.

Sampling and accounting
-----------------------
Stage r of a shard trains `epochs_per_slice` epochs on the n_r records of slices 0..r.
Each epoch is k_r = ceil(n_r / batch_size) steps of Poisson sampling: every record of
the stage joins each step's batch independently with probability q_r = 1 / k_r (so the
expected batch is n_r / k_r <= batch_size records; this is exactly what Opacus'
`DPDataLoader` does, and the sampler here is Opacus' own `UniformWithReplacementSampler`).
Stage r therefore contributes the entry (sigma, q_r, epochs_per_slice * k_r) to the
accountant's history, and the history of the final stage is the composition of all stages.

A record of slice s is only sampled in stages s..R-1, so its privacy loss is the
composition of a suffix of that history; a record of slice 0 takes part in every stage.
The epsilon we report for a shard is the composition of the *whole* history, i.e. the
worst-case record's, and it bounds every record of the shard. The model is carried from
stage to stage, which adaptive composition allows. As in Opacus, q_r is derived from the
stage size, which is treated as public.

The noise multiplier is part of the `Recipe` (`DpSpec.noise_multiplier`), not computed
inside training: everything stage r does must be a function of the recipe and of slices
0..r only (that is what its checkpoint key commits to), otherwise resuming after a
deletion would not equal training from scratch. `calibrate_shard_noise` finds the
smallest sigma whose composed epsilon over a planned list of stage sizes is <= the
target; the pipeline calls it once (e.g. on the smallest shard's stage sizes, with some
headroom for future deletions: fewer records means a higher q and a higher epsilon) and
pins the result in the recipe. The epsilon reported per shard is always recomputed from
the steps actually taken, so it stays honest if the data shrank since calibration.

Determinism: the sampling generator and the noise generator are reseeded at every
(shard, stage, epoch) from the workspace secret (`derive_seed`), so a resumed stage replays
the same bits. `secure_mode` is not used (it refuses seeded generators); the seeds are
secret, which is what keeps the noise unpredictable to anyone else.

Subject level (`unit="subject"`)
--------------------------------
The same machinery with the person as the unit: at stage r the m_r people who have a
record in slices 0..r are Poisson-sampled at rate q_r = 1 / ceil(m_r / batch_size) (so
`batch_size` is the expected number of *people* per step), every sampled person's
contribution is the gradient of their mean loss over all their records in the stage, and
Opacus' DP optimizer clips each person's contribution to `max_grad_norm` and adds the
noise. Opacus' grad sampler computes per-record gradients (hooks); they are summed per
person (`index_add_`) into the per-sample gradients the optimizer clips, so "one sample"
is one person. With `grad_sample_mode` "fused" (MLPs, `dp_fused`) each person's norm and
the clipped sum come from the layers' inputs and output gradients instead, with no
per-record gradients; sampling, noise and accounting are the same. The history is (sigma, q_r, steps) over people, and the accountant then
bounds a whole person's data: removing or adding a person, with all their records.

Heavy imports (opacus, dp_accounting) are lazy.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

ACCOUNTANTS = ("prv", "rdp")
GRAD_SAMPLE_MODES = ("ghost", "hooks", "fused")
UNITS = ("subject", "record")

History = list[tuple[float, float, int]]  # (noise multiplier, sample rate, steps), as Opacus keeps it


@dataclass(frozen=True)
class DpSpec:
    """The DP part of a training recipe. Every field is part of the recipe digest.

    `noise_multiplier` and `max_grad_norm` (and `grad_sample_mode`, which changes the
    floating-point path) determine the bits; `delta` and `accountant` determine the epsilon
    reported; `target_epsilon` is the budget `noise_multiplier` was calibrated for.
    """

    noise_multiplier: float
    max_grad_norm: float
    delta: float
    accountant: str = "prv"  # prv | rdp
    target_epsilon: float = 8.0
    # ghost (Opacus' ghost clipping) | hooks (Opacus' per-sample gradients) | fused (dp_fused: MLPs; other
    # models take Opacus' path of the unit); per person, ghost and hooks both mean Opacus' hooks
    grad_sample_mode: str = "ghost"
    unit: str = "record"  # record | subject: what one sample (and so the guarantee) is

    def __post_init__(self):
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(f"dp noise_multiplier must be a positive number, got {self.noise_multiplier}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"dp max_grad_norm must be positive, got {self.max_grad_norm}")
        if not 0 < self.delta < 1:
            raise ValueError(f"dp delta must be in (0, 1), got {self.delta}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"dp accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")
        if self.unit not in UNITS:
            raise ValueError(f"dp unit must be one of {UNITS}, got {self.unit!r}")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ValueError(f"dp grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, got {self.grad_sample_mode!r}")


# --- accounting -------------------------------------------------------------------------

def steps_per_epoch(n_records: int, batch_size: int) -> int:
    return math.ceil(n_records / batch_size)


def stage_sizes(slices: np.ndarray, n_slices: int) -> list[int]:
    """Records seen by each stage: stage r trains on slices 0..r."""
    counts = np.bincount(np.asarray(slices, dtype=np.int64), minlength=n_slices)[:n_slices]
    return [int(c) for c in np.cumsum(counts)]


def subject_stage_sizes(slices: np.ndarray, subjects: np.ndarray, n_slices: int) -> list[int]:
    """People seen by each stage: stage r trains on everyone with a record in slices 0..r."""
    slices, subjects = np.asarray(slices, dtype=np.int64), np.asarray(subjects)
    if slices.size == 0:
        return [0] * n_slices
    _, person = np.unique(subjects, return_inverse=True)
    first = np.full(person.max() + 1, n_slices, dtype=np.int64)
    np.minimum.at(first, person, slices)
    return [int(c) for c in np.cumsum(np.bincount(first, minlength=n_slices)[:n_slices])]


def _merge(history: Sequence[Sequence[float]]) -> History:
    """Canonical form: consecutive entries with the same (sigma, q) merged, as the accountants do."""
    out: History = []
    for sigma, q, steps in history:
        sigma, q, steps = float(sigma), float(q), int(steps)
        if steps <= 0:
            continue
        if out and out[-1][0] == sigma and out[-1][1] == q:
            out[-1] = (sigma, q, out[-1][2] + steps)
        else:
            out.append((sigma, q, steps))
    return out


def stage_plan(sizes: Sequence[int], *, batch_size: int, epochs_per_slice: int) -> list[tuple[float, int]]:
    """(sample rate, steps) of each non-empty stage, in the order training takes them."""
    plan = []
    for n in sizes:
        if n > 0:
            k = steps_per_epoch(n, batch_size)
            plan.append((1.0 / k, epochs_per_slice * k))
    return plan


def planned_history(sigma: float, plan: Sequence[tuple[float, int]]) -> History:
    return _merge([(sigma, q, steps) for q, steps in plan])


@functools.lru_cache(maxsize=256)
def _epsilon_cached(history: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    from opacus.accountants import create_accountant

    if not history:
        return 0.0
    acc = create_accountant(mechanism=accountant)
    acc.history = list(history)
    return float(acc.get_epsilon(delta=delta))


def epsilon_of(history: Sequence[Sequence[float]], *, delta: float, accountant: str = "prv") -> float:
    """Epsilon spent by a history of (sigma, q, steps), from Opacus' accountant ("prv" or "rdp")."""
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    return _epsilon_cached(tuple(_merge(history)), float(delta), accountant)


def calibrate_noise(*, target_epsilon: float, delta: float, sample_rate: float, steps: int,
                    accountant: str = "prv") -> float:
    """Noise multiplier for one homogeneous phase of `steps` steps at `sample_rate` (Opacus' search)."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=steps, accountant=accountant))


def calibrate_noise_for_plan(plan: Sequence[tuple[float, int]], *, target_epsilon: float, delta: float,
                             accountant: str = "prv", rel_tolerance: float = 0.01, max_evaluations: int = 40) -> float:
    """Smallest sigma (within `rel_tolerance` of the target epsilon) whose composed epsilon <= target.

    The planned history [(sigma, q_r, steps_r) for each stage] is fed to a fresh accountant
    for each candidate sigma. log(epsilon) is nearly linear in log(sigma), so secant steps on
    that scale (kept inside the [infeasible, feasible] bracket, bisecting otherwise) need
    about 3-5 accountant evaluations where bisection needs 10-15. The returned sigma was
    evaluated and is always feasible: epsilon(returned sigma) <= target_epsilon.
    """
    if target_epsilon <= 0:
        raise ValueError(f"target_epsilon must be positive, got {target_epsilon}")
    if not plan:
        raise ValueError("nothing to calibrate: the plan has no steps")

    def f(sigma: float) -> float:  # log(eps / target); <= 0 means feasible
        eps = epsilon_of(planned_history(sigma, plan), delta=delta, accountant=accountant)
        return math.log(eps / target_epsilon) if eps > 0 else -math.inf

    good = math.log1p(-rel_tolerance)  # f(x) in [good, 0]: feasible and close enough
    aim = good / 2
    max_step = math.log(8.0)
    lo = hi = None  # (log sigma, f): largest infeasible, smallest feasible
    prev = None
    x = 0.0  # log sigma: start at sigma = 1
    for _ in range(max_evaluations):
        if x > math.log(1e6):
            raise ValueError(f"target epsilon {target_epsilon} at delta {delta} needs a noise multiplier "
                             "above 1e6: the budget is too low")
        fx = f(math.exp(x))
        if good <= fx <= 0:
            return math.exp(x)
        if fx <= 0:
            hi = (x, fx) if hi is None or x < hi[0] else hi
        else:
            lo = (x, fx) if lo is None or x > lo[0] else lo
        if lo is not None and hi is not None and hi[0] - lo[0] < 1e-9:
            break
        slope = -1.0  # epsilon ~ 1/sigma to first order
        if prev is not None and math.isfinite(fx) and math.isfinite(prev[1]) and x != prev[0]:
            secant = (fx - prev[1]) / (x - prev[0])
            if secant < 0:
                slope = secant
        step = (aim - fx) / slope if math.isfinite(fx) else max_step
        x_next = x + max(-max_step, min(max_step, step))
        if lo is not None and hi is not None and not lo[0] < x_next < hi[0]:
            x_next = (lo[0] + hi[0]) / 2
        prev, x = (x, fx), x_next
    if hi is None:
        raise ValueError("calibration did not find a feasible noise multiplier")
    return math.exp(hi[0])


def calibrate_shard_noise(sizes: Sequence[int], *, batch_size: int, epochs_per_slice: int, target_epsilon: float,
                          delta: float, accountant: str = "prv") -> float:
    """Sigma for a shard whose stages see `sizes` records (see `stage_sizes`), composed over all stages."""
    return calibrate_noise_for_plan(stage_plan(sizes, batch_size=batch_size, epochs_per_slice=epochs_per_slice),
                                    target_epsilon=target_epsilon, delta=delta, accountant=accountant)


def cross_check_epsilon(history: Sequence[Sequence[float]], *, delta: float) -> float:
    """The same history's epsilon from an independent implementation (dp_accounting's PLD accountant)."""
    import dp_accounting
    from dp_accounting.pld import PLDAccountant

    events = [dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
        for sigma, q, steps in _merge(history)]
    acc = PLDAccountant()  # add-or-remove-one neighbours, as Opacus
    acc.compose(dp_accounting.ComposedDpEvent(events))
    return float(acc.get_epsilon(delta))


def ensemble_privacy(shard_epsilons: Sequence[float], *, delta: float, max_records_per_subject: int,
                     unit: str = "record") -> dict:
    """Record- and subject-level guarantees of the SISA ensemble.

    Shards are disjoint (a record, and a person, trains exactly one shard model), so by
    parallel composition the ensemble's epsilon is the maximum over shards, at the unit the
    shards were accounted at.

    unit="record": the shard epsilons are per record. All records of a subject sit in one
    shard; group privacy for k records turns (eps, delta) into (k*eps, k*exp((k-1)*eps)*delta),
    the honest (and loose) subject-level figure.
    unit="subject": the shard epsilons are per person (subject-level DP-SGD), the real
    subject-level guarantee. A record's removal changes one person's data, i.e. removes
    that person and adds them back changed: group privacy for 2 gives the record-level
    (2*eps, (1+exp(eps))*delta).
    """
    if not shard_epsilons:
        raise ValueError("no shard epsilons: was DP training on?")
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    k = int(max_records_per_subject)
    if k < 1:
        raise ValueError(f"max_records_per_subject must be >= 1, got {max_records_per_subject}")
    eps = float(max(shard_epsilons))
    if unit == "subject":
        record_eps, record_delta = 2 * eps, (1 + math.exp(min(eps, 700.0))) * delta
        note = (f"Subject level: ({eps:.3g}, {delta:g})-DP for each person's whole data (people were sampled and "
                f"each person's summed contribution clipped; shards hold disjoint people). Record level, as a "
                f"change of one person's data: ({record_eps:.3g}, {record_delta:.3g}).")
        return {"unit": unit, "subject_epsilon": eps, "subject_delta": float(delta), "record_epsilon": record_eps,
                "record_delta": record_delta, "delta": float(delta), "max_records_per_subject": k, "note": note}
    subject_eps = k * eps
    try:
        subject_delta = k * math.exp((k - 1) * eps) * delta
    except OverflowError:
        subject_delta = math.inf
    note = (f"Record level: ({eps:.3g}, {delta:g})-DP, the largest shard epsilon, since shards are disjoint. "
            f"Subject level (up to {k} records per subject, all in one shard): the generic group-privacy "
            f"bound ({subject_eps:.3g}, {subject_delta:.3g}), which is loose: it multiplies epsilon by k and "
            "delta by k*exp((k-1)*eps) whatever the mechanism; set dp.unit: subject for a per-person guarantee")
    note += "; here the subject-level delta exceeds 1, so that bound is vacuous." if subject_delta >= 1 else "."
    return {"unit": unit, "record_epsilon": eps, "record_delta": float(delta), "delta": float(delta),
            "subject_epsilon": subject_eps, "subject_delta": subject_delta, "max_records_per_subject": k,
            "note": note}


# --- training ---------------------------------------------------------------------------

SeedFor = Callable[[str, int], int]  # (stream name, epoch) -> seed

_HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect to module outputs"


def _quiet_opacus_hooks() -> None:
    """Opacus' backward hooks on the first layer make torch warn at every step that the input
    needs no gradient (it never does here). One narrow filter; re-adding it is idempotent."""
    import warnings

    warnings.filterwarnings("ignore", message=_HOOK_WARNING, category=UserWarning)


class DpTrainer:
    """Wraps one shard's model for DP-SGD across stages; the model itself stays a plain module.

    Parameters are shared with `model`, so `model.state_dict()` (no `_module.` prefix) and
    the plain optimizer's `state_dict()` are what a checkpoint stores.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, spec: DpSpec,
                 history: Sequence[Sequence[float]] = ()):
        from opacus.accountants import create_accountant
        from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping

        _quiet_opacus_hooks()
        self.model, self.optimizer, self.spec = model, optimizer, spec
        self.last_people: torch.Tensor | None = None  # people sampled in the last subject-level step (for tests)
        self.chain = None  # the model's layers when fused clipping trains it: no grad sampler, no hooks
        if spec.grad_sample_mode == "fused":
            from oblivio.training import dp_fused

            self.chain = dp_fused.linear_chain(model)  # None (not an MLP, e.g. the CNN): Opacus' path below
        self.gsm = None
        if self.chain is None:
            if spec.unit == "subject":  # per-record gradients, summed per person before Opacus clips them
                self.gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
            elif spec.grad_sample_mode == "hooks":
                self.gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
            else:  # ghost, or fused on a model that is not a chain of linear layers
                self.gsm = GradSampleModuleFastGradientClipping(model, batch_first=True, loss_reduction="mean",
                                                                max_grad_norm=spec.max_grad_norm,
                                                                use_ghost_clipping=True)
            self.gsm.forbid_grad_accumulation()  # Poisson sampling: one batch per step
        self.accountant = create_accountant(mechanism=spec.accountant)
        self.accountant.history = list(_merge(history))

    def history(self) -> list[list[float]]:
        """The accountant's history as plain lists (what a checkpoint stores)."""
        return [[float(s), float(q), int(n)] for s, q, n in _merge(self.accountant.history)]

    def epsilon(self) -> float:
        return epsilon_of(self.accountant.history, delta=self.spec.delta, accountant=self.spec.accountant)

    def train_stage(self, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, epochs: int, seed_for: SeedFor,
                    subjects: torch.Tensor | None = None) -> None:
        """One stage: `epochs` epochs of Poisson-sampled steps over records, or (unit subject) over
        the people `subjects` names (one integer per row)."""
        if self.spec.unit == "subject" and subjects is None:
            raise ValueError("subject-level DP needs the subject of every row")
        if self.chain is not None:
            return self._train_stage_fused(x, y, subjects if self.spec.unit == "subject" else None,
                                           batch_size=batch_size, epochs=epochs, seed_for=seed_for)
        if self.spec.unit == "subject":
            return self._train_stage_by_subject(x, y, subjects, batch_size=batch_size, epochs=epochs,
                                                seed_for=seed_for)
        from opacus.optimizers import get_optimizer_class
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        n = len(y)
        if n == 0:
            return
        k = steps_per_epoch(n, batch_size)
        q = 1.0 / k
        gen_sample, gen_noise = torch.Generator(), torch.Generator()
        mode = "ghost" if self.spec.grad_sample_mode == "fused" else self.spec.grad_sample_mode  # fused, not an MLP
        optim_cls = get_optimizer_class(clipping="flat", distributed=False, grad_sample_mode=mode)
        # expected batch n*q (Opacus truncates it to an int; the exact value is the unbiased mean)
        dp_opt = optim_cls(self.optimizer, noise_multiplier=self.spec.noise_multiplier,
                           max_grad_norm=self.spec.max_grad_norm, expected_batch_size=n / k, loss_reduction="mean",
                           generator=gen_noise, secure_mode=False)
        # the accountant counts the steps that were actually noised, at this stage's rate
        dp_opt.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=q))
        criterion: Callable = nn.CrossEntropyLoss()
        if mode == "ghost":
            criterion = DPLossFastGradientClipping(self.gsm, dp_opt, criterion, loss_reduction="mean")
        sampler = UniformWithReplacementSampler(num_samples=n, sample_rate=q, generator=gen_sample, steps=k)
        self.gsm.train()
        for epoch in range(epochs):
            gen_sample.manual_seed(seed_for("dp-sample", epoch))
            gen_noise.manual_seed(seed_for("dp-noise", epoch))
            for batch in sampler:
                idx = torch.as_tensor(batch, dtype=torch.long)
                dp_opt.zero_grad(set_to_none=True)
                criterion(self.gsm(x[idx]), y[idx]).backward()
                dp_opt.step()
        dp_opt.zero_grad(set_to_none=True)

    def _train_stage_by_subject(self, x: torch.Tensor, y: torch.Tensor, subjects: torch.Tensor, *, batch_size: int,
                                epochs: int, seed_for: SeedFor) -> None:
        from opacus.optimizers import get_optimizer_class
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        if len(y) == 0:
            return
        _, person = torch.unique(subjects, sorted=True, return_inverse=True)  # people in subject-key order
        m = int(person.max()) + 1
        weight = 1.0 / torch.bincount(person, minlength=m).to(torch.float32)[person]  # a person's loss is their mean
        k = steps_per_epoch(m, batch_size)
        q = 1.0 / k
        gen_sample, gen_noise = torch.Generator(), torch.Generator()
        optim_cls = get_optimizer_class(clipping="flat", distributed=False, grad_sample_mode="hooks")
        dp_opt = optim_cls(self.optimizer, noise_multiplier=self.spec.noise_multiplier,
                           max_grad_norm=self.spec.max_grad_norm, expected_batch_size=m / k, loss_reduction="mean",
                           generator=gen_noise, secure_mode=False)
        dp_opt.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=q))
        sampler = UniformWithReplacementSampler(num_samples=m, sample_rate=q, generator=gen_sample, steps=k)
        params = [p for p in self.model.parameters() if p.requires_grad]
        slot = torch.full((m,), -1, dtype=torch.long)
        self.gsm.train()
        for epoch in range(epochs):
            gen_sample.manual_seed(seed_for("dp-sample", epoch))
            gen_noise.manual_seed(seed_for("dp-noise", epoch))
            for batch in sampler:
                people = torch.as_tensor(batch, dtype=torch.long)
                self.last_people = people
                dp_opt.zero_grad(set_to_none=True)
                if len(people) == 0:  # nobody sampled: the step is noise alone, as the accountant assumes
                    for p in params:
                        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
                else:
                    slot.fill_(-1)
                    slot[people] = torch.arange(len(people))
                    rows = torch.nonzero(slot[person] >= 0).squeeze(1)
                    losses = nn.functional.cross_entropy(self.gsm(x[rows]), y[rows], reduction="none")
                    (losses * weight[rows]).sum().backward()
                    group = slot[person[rows]]
                    for p in params:  # per-record gradients -> one per person: what Opacus clips
                        p.grad_sample = torch.zeros((len(people), *p.shape), dtype=p.dtype).index_add_(
                            0, group, p.grad_sample)
                dp_opt.step()
        dp_opt.zero_grad(set_to_none=True)

    def _train_stage_fused(self, x: torch.Tensor, y: torch.Tensor, subjects: torch.Tensor | None, *,
                           batch_size: int, epochs: int, seed_for: SeedFor) -> None:
        """Records or (with `subjects`) people, sampled as on Opacus' path, clipped by dp_fused."""
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        from oblivio.training import dp_fused

        if len(y) == 0:
            return
        people = None
        if subjects is not None:
            _, person = torch.unique(subjects, sorted=True, return_inverse=True)  # people in subject-key order
            people = dp_fused.People.of(person, dp_fused.input_rows(self.chain, x))
        m = len(people.table) if people is not None else len(y)
        targets = dp_fused.one_hot(self.chain, y, x.dtype)
        k = steps_per_epoch(m, batch_size)
        q = 1.0 / k
        gen_sample, gen_noise = torch.Generator(), torch.Generator()
        dp_opt = dp_fused.FusedDPOptimizer(self.optimizer, noise_multiplier=self.spec.noise_multiplier,
                                           max_grad_norm=self.spec.max_grad_norm, expected_batch_size=m / k,
                                           loss_reduction="mean", generator=gen_noise, secure_mode=False)
        dp_opt.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=q))
        sampler = UniformWithReplacementSampler(num_samples=m, sample_rate=q, generator=gen_sample, steps=k)
        self.model.train()
        for epoch in range(epochs):
            gen_sample.manual_seed(seed_for("dp-sample", epoch))
            gen_noise.manual_seed(seed_for("dp-noise", epoch))
            for batch in sampler:
                idx = torch.as_tensor(batch, dtype=torch.long)
                dp_opt.zero_grad(set_to_none=True)
                if people is not None:
                    self.last_people = idx
                if len(idx) == 0:  # nobody sampled: the step is noise alone, as the accountant assumes
                    dp_opt.captured = None
                elif people is None:
                    dp_opt.captured = dp_fused.capture(self.chain, x[idx], targets[idx])
                else:
                    rows, grouping = people.batch(idx)
                    dp_opt.captured = dp_fused.capture(self.chain, x[rows], targets[rows], people.weight[rows],
                                                        grouping)
                dp_opt.step()
        dp_opt.zero_grad(set_to_none=True)

    def close(self) -> None:
        """Remove Opacus' hooks and per-parameter attributes from the model."""
        if self.gsm is not None:
            self.gsm._close()
