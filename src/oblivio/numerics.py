"""Pinned numerics: the same bits from every machine that trains, scores or replays a shard.

torch's BLAS (oneMKL), its vectorised kernels (ATen), oneDNN and numpy's ufuncs each pick
a code path by the CPU's instruction set, and those paths round differently: one recipe
trained on an AVX-512 machine and on an AVX2 machine gives two weight hashes. An erasure
retrain, a resumed chain and an auditor's replay are exact only if every process that
touches a checkpoint chain runs the same kernels. So every process pins them *before*
torch and numpy load (importing `oblivio` does it), and the recipe records the mode and
the library versions, so a process that cannot honour them is refused instead of
producing a chain nobody can reproduce.

Modes (`train.numerics`):
- `portable` (default): the AVX2 code paths (x86-64-v3), identical on every x86-64 CPU
  with AVX2 and FMA: oneMKL Conditional Numerical Reproducibility `MKL_CBWR=AVX2,STRICT`,
  `ATEN_CPU_CAPABILITY=avx2`, oneDNN capped at AVX2, numpy's AVX-512 dispatch disabled,
  NNPACK off, one thread.
- `native`: whatever this CPU does fastest. Exact only on machines of the same CPU kind
  and library versions; the recipe records which.

This module imports nothing heavy: it must run before torch and numpy are imported.
"""
from __future__ import annotations

import os
import platform
import sys
from dataclasses import asdict, dataclass

from oblivio.errors import NumericsError

MODES = ("portable", "native")
MODE_VARIABLE = "OBLIVIO_NUMERICS"  # how a process learns its mode before it can read params.yaml

# Set before torch/numpy load; they are read once, when the libraries initialise.
PORTABLE_ENVIRONMENT = {
    "MKL_CBWR": "AVX2,STRICT",             # oneMKL CNR: the AVX2 branch, independent of alignment
    "ATEN_CPU_CAPABILITY": "avx2",          # ATen's vectorised kernels (Adam, activations, log1p, ...)
    "ONEDNN_MAX_CPU_ISA": "AVX2",           # oneDNN (convolutions of the CNN)
    "DNNL_MAX_CPU_ISA": "AVX2",             # the same, for older oneDNN builds
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # numpy's AVX-512 ufunc loops round differently
    "OMP_NUM_THREADS": "1",                 # one thread: reductions in one order
    "MKL_NUM_THREADS": "1",
}
PORTABLE_ARCH = "x86_64"
PORTABLE_CPU_FLAGS = ("avx2", "fma")

# Filled by the first pin_process: the user's own values, restored for `native`; and whether the
# pin came before torch/numpy loaded (a pin after them is not honoured unless the values were there).
_state: dict = {"original": None, "honoured": True}


def requested_mode() -> str:
    mode = os.environ.get(MODE_VARIABLE, "portable")
    return mode if mode in MODES else "portable"


def environment(mode: str) -> dict[str, str]:
    """The variables a process of `mode` must start with (child processes, workers)."""
    return {MODE_VARIABLE: mode, **(PORTABLE_ENVIRONMENT if mode == "portable" else {})}


def pin_process(mode: str | None = None) -> None:
    """Pin this process's numerics before torch and numpy load (`import oblivio` calls it; the
    CLI again with the workspace's mode).

    `portable` overrides whatever the environment held for these variables (a second machine
    differs exactly that way); `native` restores the user's own. If torch or numpy was
    imported first, a pin is honoured only when the variables already held its values;
    otherwise training and replay are refused (`require`).
    """
    mode = mode or requested_mode()
    if _state["original"] is None:
        _state["original"] = {k: os.environ.get(k) for k in PORTABLE_ENVIRONMENT}
    loaded = any(m in sys.modules for m in ("torch", "numpy"))
    if mode == "portable":
        if loaded and any(os.environ.get(k) != v for k, v in PORTABLE_ENVIRONMENT.items()):
            _state["honoured"] = False
        os.environ.update(PORTABLE_ENVIRONMENT)
    elif not loaded:
        for k, v in _state["original"].items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    os.environ[MODE_VARIABLE] = mode


@dataclass(frozen=True)
class Numerics:
    """What a recipe records about the arithmetic its weights came from (part of every checkpoint key)."""

    mode: str
    arch: str
    torch: str
    mkl: str
    cpu: str = ""  # native mode only: the CPU model; portable mode is the same on every AVX2 CPU

    def describe(self) -> str:
        where = f"any {self.arch} CPU with AVX2" if self.mode == "portable" else f"{self.cpu or 'this CPU'} ({self.arch})"
        return f"{self.mode} numerics, torch {self.torch}, oneMKL {self.mkl}, {where}"

    def to_json(self) -> dict:
        return asdict(self)


def _mkl_version() -> str:
    import torch

    lib = getattr(torch.backends.mkl, "is_available", lambda: False)()
    if not lib:
        return "none"
    config = torch.__config__.show()
    marker = "Math Kernel Library Version "
    return config.split(marker, 1)[1].split("-", 1)[0].split()[0] if marker in config else "unknown"


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> set[str]:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def current(mode: str) -> Numerics:
    """This process's numerics under `mode`, as a recipe records them."""
    import torch

    return Numerics(mode=mode, arch=platform.machine(), torch=torch.__version__.split("+")[0], mkl=_mkl_version(),
                    cpu=_cpu_model() if mode == "native" else "")


def machine_problems(mode: str) -> list[str]:
    """Why this process cannot honour `mode` (empty when it can)."""
    if mode == "native":
        return []
    problems = []
    if platform.machine() != PORTABLE_ARCH:
        problems.append(f"portable numerics need an {PORTABLE_ARCH} CPU; this machine is {platform.machine()}")
    else:
        missing = [f for f in PORTABLE_CPU_FLAGS if f not in _cpu_flags()]
        if missing:
            problems.append(f"portable numerics need AVX2 and FMA; this CPU lacks {', '.join(missing)}")
    if not _state["honoured"]:
        problems.append("torch or numpy was imported before oblivio could pin its numerics "
                        "(import oblivio first, or start the process with "
                        + " ".join(f"{k}={v!r}" for k, v in PORTABLE_ENVIRONMENT.items()) + ")")
    elif "torch" in sys.modules:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
        if capability != "AVX2":
            problems.append(f"torch runs its {capability} kernels, not the pinned AVX2 ones "
                            "(ATEN_CPU_CAPABILITY was changed after torch loaded)")
    if "numpy" in sys.modules:
        from numpy._core._multiarray_umath import __cpu_features__ as features

        if features.get("X86_V4") or features.get("AVX512_ICL"):
            problems.append("numpy runs its AVX-512 loops (NPY_DISABLE_CPU_FEATURES was set after numpy loaded)")
    return problems


def differences(recorded: Numerics, here: Numerics) -> list[str]:
    """What differs between a recipe's numerics and this process's, in words."""
    out = []
    for field, name in (("mode", "numerics mode"), ("arch", "architecture"), ("torch", "torch version"),
                        ("mkl", "oneMKL version"), ("cpu", "CPU")):
        a, b = getattr(recorded, field), getattr(here, field)
        if a != b:
            out.append(f"{name} {a or '-'} recorded, {b or '-'} here")
    return out


def problems_with(recorded: Numerics, here: Numerics | None = None) -> list[str]:
    """Everything that keeps this process (running under `here`) from reproducing weights made under `recorded`."""
    return machine_problems(recorded.mode) + differences(recorded, here or current(recorded.mode))


def require(recorded: Numerics, action: str, *, here: Numerics | None = None) -> None:
    """Refuse `action` (train, extend a checkpoint chain, replay) where the bits could differ."""
    problems = problems_with(recorded, here)
    if problems:
        raise NumericsError(f"cannot {action} here: {'; '.join(problems)}. The weights were made under "
                            f"{recorded.describe()}; run on such a machine, or retrain everything under this "
                            "one's numerics with `oblivio run --from-scratch`.")


def enter_torch() -> None:
    """Per-call torch settings of the pinned modes: one intra-op thread, no NNPACK (it has ISA paths of its own)."""
    import torch

    torch.set_num_threads(1)
    torch.backends.nnpack.set_flags(False)
