"""Sampling: parameters, logits -> probabilities, token choice, stop strings."""

from .params import SamplingParams
from .sampler import Sampler, filtered_probs
from .stop import StopMatcher

__all__ = ["Sampler", "SamplingParams", "StopMatcher", "filtered_probs"]
