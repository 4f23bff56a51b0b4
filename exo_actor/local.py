"""The single-process runtime: a model split into K shards chained in one process."""

from __future__ import annotations

import logging

from .engines import get_engine
from .generation import LocalPipeline
from .partition import even_ranges
from .registry import resolve_model
from .weights import ModelFiles, open_model

log = logging.getLogger(__name__)


def load_local(model: str, engine: str = "numpy", shards: int = 1) -> tuple[ModelFiles, LocalPipeline]:
    """Open a model (registry name or path) and load it as `shards` chained shards."""
    files = open_model(resolve_model(model))
    eng = get_engine(engine)
    ranges = even_ranges(files.args.num_hidden_layers, shards)
    log.info("loading %s as %d shard(s) on %s: %s", files.path.name, shards, eng.name, ranges)
    return files, LocalPipeline([eng.load_shard(files, a, b) for a, b in ranges])
