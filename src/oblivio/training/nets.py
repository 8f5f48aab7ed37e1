"""Small networks and their seeded initialisation.

Initialisation draws from an explicit `torch.Generator`, never the global RNG: shards
train in parallel threads, and a shared global stream would make the bits depend on
scheduling.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def featurize(x: np.ndarray, model: str) -> np.ndarray:
    """Per-record feature transform: no statistic of the dataset enters it.

    A data-dependent scaler would change every shard's inputs when one person is erased.
    Tabular: signed log1p of each value, NaN -> 0, plus one missing-value indicator per
    feature. Images: values as given (already in [0, 1]), NaN -> 0.
    """
    x = np.asarray(x, dtype=np.float64)
    missing = np.isnan(x)
    filled = np.where(missing, 0.0, x)
    if model == "cnn":
        return filled.astype(np.float32)
    scaled = np.sign(filled) * np.log1p(np.abs(filled))
    return np.concatenate([scaled, missing.astype(np.float64)], axis=1).astype(np.float32)


class MLP(nn.Module):
    def __init__(self, n_inputs: int, hidden: tuple[int, ...], n_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_inputs
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head for 28x28 single-channel images."""

    def __init__(self, n_inputs: int, hidden: tuple[int, ...], n_classes: int):
        super().__init__()
        if n_inputs != 784:
            raise ValueError(f"train.model cnn expects 784 pixel features (28x28), got {n_inputs}")
        c1, c2 = (tuple(hidden) + (16, 32))[:2]
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(c2 * 7 * 7, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, 1, 28, 28)).flatten(1))


ARCHITECTURES = {"mlp": MLP, "cnn": SmallCNN}


def build_model(kind: str, *, n_inputs: int, hidden: tuple[int, ...], n_classes: int, seed: int) -> nn.Module:
    model = ARCHITECTURES[kind](n_inputs, tuple(hidden), n_classes)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                # the same distributions as torch's defaults, from our generator
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                fan_in = module.weight[0].numel()
                bound = 1 / math.sqrt(fan_in)
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
    return model
