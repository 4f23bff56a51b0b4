"""Typed errors raised at the package's boundaries; each message says what the user can do."""

from __future__ import annotations


class ExoError(Exception):
    """Base class: an error with a message meant for the user, shown without a traceback."""


class ModelNotFoundError(ExoError):
    """A model name or path that resolves to nothing usable."""


class WeightsError(ExoError):
    """A weights file that is missing, truncated, corrupt or inconsistent with its config."""


class UnsupportedModelError(ExoError):
    """An architecture, tokenizer or quantization type this version cannot run."""


class ContextLengthError(ExoError):
    """A prompt (plus requested tokens) that does not fit the model's context window."""


class InvalidRequestError(ExoError):
    """Invalid generation parameters (sampling values, token counts, ...)."""


class ConfigError(ExoError):
    """A NodeConfig / ClusterConfig / RayConfig setting that cannot work: "ClusterConfig.rings must be >= 1, got 0".

    `setting` and `problem` are kept apart so that the CLI can name the flag instead ("--rings must be >= 1, got 0").
    """

    def __init__(self, config: str, setting: str, problem: str) -> None:
        super().__init__(f"{config}.{setting} {problem}")
        self.config = config
        self.setting = setting
        self.problem = problem

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str, str]]:
        return type(self), (self.config, self.setting, self.problem)  # picklable despite the three arguments
