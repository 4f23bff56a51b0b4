"""Speculative decoding: draft sources, the exact acceptance rule and the adaptive draft length.

Drafters that load models live in `speculative.drafts` (imported on demand: it needs the engines).
"""

from ..sampling.params import MAX_DRAFT_TOKENS
from .acceptance import accept_drafts
from .speculation import Drafter, Proposal, RateEstimate, Speculation, expected_tokens

__all__ = [
    "MAX_DRAFT_TOKENS",
    "Drafter",
    "Proposal",
    "RateEstimate",
    "Speculation",
    "accept_drafts",
    "expected_tokens",
]
