"""Rebuild openai-api-schemas.json from OpenAI's published OpenAPI description (see README.md here).

    python tests/api/data/refresh_schemas.py path/to/openapi.json COMMIT DATE

Keeps the ROOTS below and every schema they reference, under `$defs`, converted from OpenAPI 3.0 to
JSON Schema 2020-12: `#/components/schemas/X` references become `#/$defs/X`, a `nullable: true` schema
also admits null (its enum too), and OpenAPI's own keywords (`discriminator`, `example`, `x-...`
extensions) and null defaults are dropped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOTS = [
    "CreateChatCompletionRequest",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionRequest",
    "CreateCompletionResponse",
    "CreateEmbeddingResponse",
    "ListModelsResponse",
    "ErrorResponse",
    "Response",  # the Responses API's response object
    "ResponseStreamEvent",  # ... and its streamed events
]
OUT = Path(__file__).with_name("openai-api-schemas.json")


def _closure(schemas: dict[str, Any], roots: list[str]) -> list[str]:
    seen: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                name = ref.rsplit("/", 1)[1]
                if name not in seen:
                    seen.append(name)
                    walk(schemas[name])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for root in roots:
        if root not in seen:
            seen.append(root)
            walk(schemas[root])
    return sorted(seen)


def _convert(node: Any) -> Any:
    if isinstance(node, list):
        return [_convert(v) for v in node]
    if not isinstance(node, dict):
        return node
    dropped = ("nullable", "discriminator", "example")
    out = {k: _convert(v) for k, v in node.items() if k not in dropped and not k.startswith("x-")}
    if "default" in out and out["default"] is None:
        del out["default"]
    if isinstance(out.get("$ref"), str):
        out["$ref"] = out["$ref"].replace("#/components/schemas/", "#/$defs/")
    if node.get("nullable") is True:
        if isinstance(out.get("enum"), list) and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
        elif isinstance(kind, list) and "null" not in kind:
            out["type"] = [*kind, "null"]
        elif kind is None:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def main(openapi: str, commit: str, date: str) -> None:
    schemas = json.loads(Path(openapi).read_text())["components"]["schemas"]
    names = _closure(schemas, ROOTS)
    doc = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:openai-api-subset",
        "description": (
            f"Subset of the OpenAI API OpenAPI spec (openai/openai-openapi, openapi.json, commit {commit}, {date}): "
            "schemas for chat completions, completions, embeddings, the Responses API (response and stream "
            "events), models and errors; converted from OpenAPI 3.0 (nullable -> null type) to plain JSON "
            "Schema 2020-12 by tests/api/data/refresh_schemas.py."
        ),
        "$defs": {name: _convert(schemas[name]) for name in names},
    }
    OUT.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    print(f"{len(names)} schemas -> {OUT}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
