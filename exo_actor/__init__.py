"""exo-actor: run one LLM across the devices you own, as a pipeline ring of shard actors."""

__version__ = "0.1.0"
