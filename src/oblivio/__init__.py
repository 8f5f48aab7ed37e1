"""Oblivio: data governance for ML (SISA training, deletion requests, unlearning, gated promotion).

Importing the package pins the numerical mode of the process before torch and numpy load
(see `oblivio.numerics`): every process that trains, scores or replays a shard must run
the same kernels, or an erasure retrain would not equal a from-scratch one.
"""
from oblivio import numerics as _numerics

_numerics.pin_process()
