"""Validation against OpenAI's published response schemas (the project's copy: data/openai-api-schemas.json)."""

from __future__ import annotations

import json
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import pytest

SCHEMAS = Path(__file__).resolve().parent / "data" / "openai-api-schemas.json"


@lru_cache(maxsize=1)
def _registry() -> Any:
    from referencing import Registry, Resource

    if not SCHEMAS.exists():
        pytest.fail(f"{SCHEMAS} is missing: restore it from git (see data/README.md)")
    schema = json.loads(SCHEMAS.read_text())
    return Registry().with_resource(schema["$id"], Resource.from_contents(schema))


@cache
def _validator(name: str) -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator({"$ref": f"urn:openai-api-subset#/$defs/{name}"}, registry=_registry())


def validate(obj: Any, name: str) -> None:
    """Raise if obj does not match the named definition (e.g. CreateChatCompletionResponse)."""
    errors = sorted(_validator(name).iter_errors(obj), key=lambda e: e.path)
    assert not errors, f"{name}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
