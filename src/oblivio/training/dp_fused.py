"""Fused clipping for DP-SGD on chains of linear layers and ReLUs (the shard MLPs):
`dp.grad_sample_mode: fused`.

At these model sizes a DP step costs Python, hook and autograd overhead and a second backward
pass, not FLOPs. For a linear layer z = W a + b, write â = [a, 1] (the bias is the weight of a
constant input); the gradient of one record's loss is g â^T (g the loss gradient w.r.t. z). So
nothing per-sample has to be materialised:

- a record's squared gradient norm is the sum over layers of |g|^2 |â|^2 (ghost norms);
- a person's contribution, sum_{i in p} g_i â_i^T, has the squared norm
  sum_{i,j in p} (g_i.g_j)(â_i.â_j): Gram matrices of their own records (a person has a few, so
  a (people, k, k) batch of them is small);
- the clipped sum over the batch is sum_i c_i g_i â_i^T = (c * G)^T Â, one matmul per layer, the
  product plain backprop computes anyway, with c Opacus' factor min(1, C / (norm + 1e-6)).

The step is one forward and one backward written out (softmax - onehot at the logits, g W through
a linear layer, g where the output is positive through a ReLU; no autograd graph), the norms and
that matmul. What stays Opacus': the Poisson sampler, the noise (the same seeded generator, drawn
parameter by parameter as in its other modes), the scaling by the expected batch, the
accountant's step hook and the inner optimizer's step (`DPOptimizerFastGradientClipping`, whose
`accumulate` is where the clipped sum goes in), and the accountant. A model that is not such a
chain (the CNN, other activations) trains on Opacus' own path: `linear_chain` returns None.

This module imports Opacus; `dp.DpTrainer` imports it lazily.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from opacus.optimizers import DPOptimizerFastGradientClipping
from torch import nn

# what `capture` differentiates by hand besides nn.Linear (each acts on a row alone)
ELEMENTWISE = (nn.ReLU, nn.Identity)


def linear_chain(model: nn.Module) -> list[nn.Module] | None:
    """The model's layers in order when it is an `nn.Sequential` (or `nets.MLP`) of `nn.Linear`
    and ReLUs whose parameters are all trainable and are all the model's; else None."""
    from oblivio.training.nets import MLP

    root = model.net if isinstance(model, MLP) else model
    if not isinstance(root, nn.Sequential):
        return None
    layers: list[nn.Module] = []
    stack = list(root)
    while stack:
        m = stack.pop(0)
        if isinstance(m, nn.Sequential):
            stack = list(m) + stack
        elif type(m) is nn.Linear or type(m) in ELEMENTWISE:
            layers.append(m)
        else:
            return None
    chain = {id(p) for m in layers for p in m.parameters()}
    if not any(type(m) is nn.Linear for m in layers) or chain != {id(p) for p in model.parameters()}:
        return None
    if not all(p.requires_grad for p in model.parameters()):
        return None
    return layers


@dataclass
class Grouping:
    """Which person each row of a batch is: row i is record `slot[i] % k` of person `group[i]`."""

    group: torch.Tensor  # (B,) person 0..people-1 of each row
    slot: torch.Tensor  # (B,) the row's place in a (people, k) grid
    people: int
    k: int  # most records of one person in the stage
    input_gram: torch.Tensor | None = None  # (people, k, k): â_i.â_j of the input layer, grid order


@dataclass
class People:
    """A stage's rows by person, to turn sampled people into the batch of their rows."""

    table: torch.Tensor  # (m, k): the rows of each person in order (stable), then -1s
    weight: torch.Tensor  # (n,) 1 / (the row's person's rows): a person's loss is their mean
    input_gram: torch.Tensor | None = None  # (m, k, k) Gram matrices of each person's `inputs` rows

    @property
    def k(self) -> int:
        """Most rows of one person."""
        return self.table.shape[1]

    @classmethod
    def of(cls, person: torch.Tensor, inputs: torch.Tensor | None = None) -> People:
        """`person`: (n,) the person 0..m-1 of each row, every one of them present. `inputs`: the
        rows as the first linear layer sees them (`input_rows`); each person's Gram of them is data,
        the same at every step, so it is computed once here."""
        count = torch.bincount(person)
        m, k = len(count), int(count.max())
        order = torch.argsort(person, stable=True)
        by_person = person[order]
        slot = by_person * k + torch.arange(len(order)) - (torch.cumsum(count, 0) - count)[by_person]
        gram = None
        if inputs is not None:
            grid = inputs.new_zeros(m * k, inputs.shape[1]).index_copy_(0, slot, inputs[order]).view(m, k, -1)
            gram = torch.bmm(grid, grid.transpose(1, 2))
        return cls(table=torch.full((m * k,), -1).index_copy_(0, slot, order).view(m, k),
                   weight=1.0 / count.to(torch.float32)[person], input_gram=gram)

    def batch(self, people: torch.Tensor) -> tuple[torch.Tensor, Grouping]:
        """Rows of `people` (distinct person ids), person by person, and how they group."""
        table = self.table[people].view(-1)
        slot = torch.nonzero(table >= 0).squeeze(1)
        return table[slot], Grouping(group=slot // self.k, slot=slot, people=len(people), k=self.k,
                                     input_gram=self.input_gram[people] if self.input_gram is not None else None)


def input_rows(layers: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """â of the chain's first linear layer for inputs `x`: x, and a column of ones if it has a bias."""
    first = next(m for m in layers if isinstance(m, nn.Linear))
    return torch.cat([x, x.new_ones(len(x), 1)], 1) if first.bias is not None else x


@dataclass
class Captured:
    """One step's output gradients G and inputs Â of each linear layer, side by side in one
    (B, D) tensor (row i: record i), so the norms and sums below are a few ops for all layers."""

    linear: list[nn.Linear]
    rows: torch.Tensor  # (B, D): [G_1 .. G_L, Â_1 .. Â_L], G with each row's loss weight
    widths: tuple[int, ...]  # of those 2L blocks; Â_l has a last column of ones when layer l has a bias
    grouping: Grouping | None = None  # None: every row is its own unit (record-level DP)

    def blocks(self, t: torch.Tensor, dim: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """`t`, laid out like `rows` along `dim`, split into its G blocks and its Â blocks."""
        parts = t.split(self.widths, dim)
        return parts[:len(self.linear)], parts[len(self.linear):]


def one_hot(layers: list[nn.Module], y: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Class ids as the one-hot rows `capture` takes (made once per stage, not per step)."""
    last = [m for m in layers if isinstance(m, nn.Linear)][-1]
    return nn.functional.one_hot(y, last.out_features).to(dtype)


def capture(layers: list[nn.Module], x: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
            grouping: Grouping | None = None) -> Captured:
    """Forward through the chain and back to each linear layer's output, by hand: cross-entropy's
    gradient w.r.t. the logits is softmax - onehot (`targets`: `one_hot` rows), a linear layer
    passes g W down, a ReLU passes g where its output is positive. No autograd graph (its engine
    costs more than the arithmetic here) and no weight gradients (`clipped_sums` computes the
    clipped ones)."""
    with torch.no_grad():
        hs = [x]
        for m in layers:
            hs.append(m(hs[-1]))
        g = torch.softmax(hs[-1], 1).sub_(targets)
        if weight is not None:
            g.mul_(weight.unsqueeze(1))
        first = next(i for i, m in enumerate(layers) if isinstance(m, nn.Linear))
        grads, acts = [], []
        ones = x.new_ones(len(x), 1)
        for i in range(len(layers) - 1, first - 1, -1):
            m = layers[i]
            if isinstance(m, nn.Linear):
                grads.append(g)
                acts += [ones, hs[i]] if m.bias is not None else [hs[i]]
                if i > first:
                    g = g @ m.weight
            elif isinstance(m, nn.ReLU):
                g = torch.ops.aten.threshold_backward(g, hs[i + 1], 0.0)  # ReLU's own backward: g where out > 0
        linear = [m for m in layers if isinstance(m, nn.Linear)]
        widths = [g.shape[1] for g in reversed(grads)] + [m.in_features + (m.bias is not None) for m in linear]
        return Captured(linear=linear, rows=torch.cat(grads[::-1] + acts[::-1], 1), widths=tuple(widths),
                        grouping=grouping)


HEAD_WIDTH = 8  # a linear layer with at most this many outputs: a person's gradient is summed outright


def unit_norms(c: Captured) -> torch.Tensor:
    """L2 norm of each unit's whole gradient (every parameter): per record, or per person."""
    if c.grouping is None:  # sum over layers of |g|^2 |â|^2
        sq = [b.sum(1) for b in (c.rows * c.rows).split(c.widths, 1)]
        n_layers = len(c.linear)
        return torch.stack(sq[:n_layers], 1).mul_(torch.stack(sq[n_layers:], 1)).sum(1).sqrt_()
    # per person: a wide layer's |sum_i g_i â_i^T|^2 = sum over the person's pairs of records of
    # (g_i.g_j)(â_i.â_j), from (people, k, k) Gram matrices; a narrow one's (the head) summed outright
    n, k = c.grouping.people, c.grouping.k
    grid = c.rows.new_zeros(n * k, c.rows.shape[1]).index_copy_(0, c.grouping.slot, c.rows).view(n, k, -1)
    pairs, outright = None, None  # (people, k, k) summed over the Gram layers; (people,) over the narrow ones
    for i, (g, a, g_rows, a_rows) in enumerate(zip(*c.blocks(grid, 2), *c.blocks(c.rows, 1))):
        if g.shape[2] <= HEAD_WIDTH:
            per_person = c.rows.new_zeros(n, g.shape[2], a.shape[2]).index_add_(
                0, c.grouping.group, g_rows.unsqueeze(2) * a_rows.unsqueeze(1))
            term = per_person.mul_(per_person).sum((1, 2))
            outright = term if outright is None else outright.add_(term)
            continue
        gg = torch.bmm(g, g.transpose(1, 2))
        # the input layer's â_i.â_j is data: computed once per stage (People.of)
        aa = c.grouping.input_gram if i == 0 and c.grouping.input_gram is not None else \
            torch.bmm(a, a.transpose(1, 2))
        pairs = gg.mul_(aa) if pairs is None else pairs.addcmul_(gg, aa)
    total = pairs.sum((1, 2)) if pairs is not None else None
    if outright is not None:
        total = outright if total is None else total.add_(outright)
    return total.clamp_(min=0).sqrt_()  # rounding can leave a Gram's sum a tiny negative


def clip_factors(norms: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """Opacus' per-sample clip factor (`DPOptimizer.clip_and_accumulate`)."""
    return (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)


def clipped_sums(c: Captured, max_grad_norm: float) -> dict[nn.Parameter, torch.Tensor]:
    """Sum over units of each unit's gradient scaled by its clip factor, per parameter:
    (c * G)^T Â, split into the weight and the bias."""
    factor = clip_factors(unit_norms(c), max_grad_norm)
    if c.grouping is not None:
        factor = factor[c.grouping.group]
    g_widths = c.widths[:len(c.linear)]
    scaled = c.rows[:, :sum(g_widths)] * factor.unsqueeze(1)
    out = {}
    for m, g, a in zip(c.linear, scaled.split(g_widths, 1), c.blocks(c.rows, 1)[1]):
        grad = g.T @ a
        if m.bias is None:
            out[m.weight] = grad
        else:
            out[m.weight], out[m.bias] = grad[:, :-1], grad[:, -1]
    return out


class FusedDPOptimizer(DPOptimizerFastGradientClipping):
    """Opacus' ghost-clipping optimizer (noise, scaling, step hook, inner step) fed the fused
    clipped sum: set `captured` (None for an empty Poisson batch) before each `step()`."""

    def __init__(self, optimizer: torch.optim.Optimizer, **kwargs):
        super().__init__(optimizer, **kwargs)
        self.captured: Captured | None = None

    def accumulate(self):  # the first thing Opacus' pre_step does; with fused clipping, the clipping
        self.clip_and_accumulate()

    def clip_and_accumulate(self):
        """Each parameter's `summed_grad` := the clipped sum of this step's batch (zero if empty)."""
        sums = clipped_sums(self.captured, self.max_grad_norm) if self.captured is not None else None
        for p in self.params:
            p.summed_grad = sums[p] if sums is not None else torch.zeros_like(p)
        self.captured = None
