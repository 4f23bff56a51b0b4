"""The single-process runtime: a model split into K shards chained in one process."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..engines import engine_for_model, get_engine
from ..partition import even_ranges
from ..storage.model_store import ensure_model
from ..weights import ModelFiles, open_model
from .generation import LocalPipeline

if TYPE_CHECKING:
    from ..storage.downloads import Progress

log = logging.getLogger(__name__)


def load_local(
    model: str,
    engine: str = "numpy",
    shards: int = 1,
    progress: Progress | None = None,
    quantize: str | None = None,
    device: str = "auto",
) -> tuple[ModelFiles, LocalPipeline]:
    """Open a model (registry name, path or Hub repo id; downloaded if missing) and load it as
    `shards` chained shards."""
    eng = get_engine(engine, quantize, device)  # first: a missing engine package fails before any download
    files = open_model(ensure_model(model, progress=progress))
    if engine_for_model(eng.name, files.args, engine == "auto") != eng.name:
        eng = get_engine("numpy", quantize)
    ranges = even_ranges(files.args.num_hidden_layers, shards)
    log.info("loading %s as %d shard(s) on %s: %s", files.path.name, shards, eng.name, ranges)
    return files, LocalPipeline([eng.load_shard(files, a, b) for a, b in ranges])
