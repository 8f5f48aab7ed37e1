"""Oblivio: data governance for ML (SISA training, deletion requests, unlearning, gated promotion).

    from oblivio import Workspace
    ws = Workspace.open("path/to/ws")
    ws.forget(subjects=["17"], reason="ticket 881")

`Workspace` is the Python API (oblivio.api), loaded on first use; importing this package
loads nothing heavy. Importing it pins the numerical mode of the process before torch and
numpy load (see `oblivio.numerics`): every process that trains, scores or replays a shard
must run the same kernels, or an erasure retrain would not equal a from-scratch one.
"""
from oblivio import numerics as _numerics

_numerics.pin_process()

__all__ = ["Workspace", "OblivioError"]


def __getattr__(name: str):
    if name == "Workspace":
        from oblivio.api import Workspace

        return Workspace
    if name == "OblivioError":
        from oblivio.errors import OblivioError

        return OblivioError
    raise AttributeError(f"module 'oblivio' has no attribute {name!r}")
