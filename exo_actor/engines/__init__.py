"""Engines behind one protocol: numpy (the reference, default everywhere), MLX and tinygrad."""

from __future__ import annotations

import functools
import importlib.util
import platform
import shutil

from ..errors import InvalidRequestError
from .base import Engine, EngineUnavailableError, Pass, ShardRunner

ENGINES = ("numpy", "mlx", "tinygrad")


def resolve_engine(name: str) -> str:
    """A concrete engine name; `auto` picks MLX on Apple Silicon, tinygrad where it has a GPU
    backend, and numpy otherwise (on a CPU numpy with OpenBLAS is the fastest of the three)."""
    if name in ENGINES:
        return name
    if name != "auto":
        raise InvalidRequestError(f"unknown engine {name!r} (available: {', '.join(ENGINES)}, auto)")
    if platform.system() == "Darwin" and platform.machine() == "arm64" and importlib.util.find_spec("mlx"):
        return "mlx"
    if importlib.util.find_spec("tinygrad") and _tinygrad_has_gpu():
        return "tinygrad"
    return "numpy"


@functools.cache
def _tinygrad_has_gpu() -> bool:
    from .tinygrad_thread import on_tinygrad_thread

    def probe() -> bool:
        from tinygrad import Device

        return Device.DEFAULT not in ("CPU", "CLANG", "LLVM", "PYTHON")

    try:
        return on_tinygrad_thread(probe)
    except Exception:  # noqa: BLE001 - a broken GPU runtime means: no GPU
        return False


def get_engine(name: str) -> Engine:
    """The engine called `name` (`auto`: see resolve_engine)."""
    name = resolve_engine(name)
    if name == "mlx":
        from .mlx_engine import MlxEngine

        return MlxEngine()
    if name == "tinygrad":
        from .tinygrad_engine import TinygradEngine

        return TinygradEngine()
    from .numpy_engine import NumpyEngine

    return NumpyEngine()


def check_tinygrad_compiler() -> None:
    """tinygrad's CPU backend compiles kernels with clang: say so before the first kernel fails."""
    if not _tinygrad_has_gpu() and shutil.which("clang") is None:
        raise EngineUnavailableError(
            "tinygrad runs on this machine's CPU, which needs the clang compiler: apt-get install clang "
            "(or use --engine numpy, the fastest engine on a CPU)"
        )


__all__ = ["ENGINES", "Engine", "EngineUnavailableError", "Pass", "ShardRunner", "get_engine", "resolve_engine"]
