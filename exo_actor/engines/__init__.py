"""Engines behind one protocol: torch (the fast CPU engine on quantized weights), numpy (the exact float32
reference), MLX and tinygrad."""

from __future__ import annotations

import functools
import importlib.util
import logging
import platform
import shutil
import sys

from ..errors import InvalidRequestError
from ..models.config import FEATURE_NAMES, ModelArgs
from .base import ENGINE_FEATURES, HIDDEN_STATES, Engine, EngineUnavailableError, Pass, ShardRunner

log = logging.getLogger(__name__)

ENGINES = ("torch", "numpy", "mlx", "tinygrad")
DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_engine(name: str) -> str:
    """A concrete engine name; `auto` picks the fastest installed engine for this device: MLX on Apple
    Silicon, else the torch engine (quantized weights on native kernels) when torch is installed, else
    tinygrad where it has a GPU backend, and numpy last."""
    if name in ENGINES:
        return name
    if name != "auto":
        raise InvalidRequestError(f"unknown engine {name!r} (available: {', '.join(ENGINES)}, auto)")
    if platform.system() == "Darwin" and platform.machine() == "arm64" and importlib.util.find_spec("mlx"):
        return "mlx"
    if importlib.util.find_spec("torch"):
        return "torch"
    if importlib.util.find_spec("tinygrad") and _tinygrad_has_gpu():
        return "tinygrad"
    return "numpy"


def engine_for_model(engine: str, args: ModelArgs, chosen_by_auto: bool) -> str:
    """The engine that runs a model: `engine`, unless `--engine auto` picked one that does not run the
    model's family yet (ENGINE_FEATURES), then numpy (which runs every family), said in one log line.
    An engine the user named keeps refusing such a model in one line (engines.base.check_features)."""
    missing = sorted(args.features - ENGINE_FEATURES.get(engine, frozenset()))
    if not chosen_by_auto or not missing or engine == "numpy":
        return engine
    lacks = ", ".join(FEATURE_NAMES[m] for m in missing)
    log.warning("the %s engine does not run %s models yet (it lacks %s): using numpy", engine, args.architecture, lacks)
    return "numpy"


_thread_limit: list[int] = []  # the last limit_threads() value, for engines loaded after it


def limit_threads(threads: int) -> None:
    """Compute threads of this process: BLAS (numpy) and torch's intra-op pool (now if torch is loaded,
    else when the torch engine loads)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads, user_api="blas")
    _thread_limit[:] = [threads]
    # torch may be half-imported by the compute thread right now: then TorchEngine applies the limit
    set_threads = getattr(sys.modules.get("torch"), "set_num_threads", None)
    if set_threads is not None:
        set_threads(threads)


def thread_limit() -> int | None:
    return _thread_limit[0] if _thread_limit else None


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


def _torch_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import torch
    except ImportError:
        return "cpu"  # TorchEngine then names the missing extra
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def get_engine(name: str, quantize: str | None = None, device: str = "auto") -> Engine:
    """The engine called `name` (`auto`: see resolve_engine).

    quantize: None keeps weights as stored; "q4" / "q8" quantize float checkpoints at load; "none"
    dequantizes everything (see weights.base.load_shard_tensors). device: the torch engine's device
    (`auto`: a CUDA or MPS device when torch sees one, else the CPU).
    """
    name = resolve_engine(name)
    if device not in ("auto", "cpu") and name != "torch":
        raise InvalidRequestError(f"--device {device} needs the torch engine (--engine torch)")
    if device not in DEVICES:
        raise InvalidRequestError(f"unknown device {device!r} (available: {', '.join(DEVICES)})")
    if name == "torch":
        from .torch_engine import TorchEngine

        return TorchEngine(_torch_device(device), quantize)
    if name == "mlx":
        from .mlx_engine import MlxEngine

        return MlxEngine(quantize)
    if name == "tinygrad":
        from .tinygrad_engine import TinygradEngine

        return TinygradEngine(quantize)
    from .numpy_engine import NumpyEngine

    return NumpyEngine(quantize)


def check_tinygrad_compiler() -> None:
    """tinygrad's CPU backend compiles kernels with clang: say so before the first kernel fails."""
    if not _tinygrad_has_gpu() and shutil.which("clang") is None:
        raise EngineUnavailableError(
            "tinygrad runs on this machine's CPU, which needs the clang compiler: apt-get install clang "
            "(or use --engine numpy, the fastest engine on a CPU)"
        )


__all__ = [
    "DEVICES",
    "ENGINES",
    "HIDDEN_STATES",
    "Engine",
    "EngineUnavailableError",
    "Pass",
    "ShardRunner",
    "engine_for_model",
    "get_engine",
    "limit_threads",
    "resolve_engine",
]
