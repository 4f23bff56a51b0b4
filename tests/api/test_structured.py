"""Structured output through the gateway: the official openai client gets JSON that validates through
`response_format` (json_schema and json_object, streamed or not), and a schema that cannot be used is one
400 naming `response_format`."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.conftest import require
from tests.test_structured_output import ASK, PERSON

pytestmark = pytest.mark.slow


@pytest.mark.ring
def test_the_openai_client_gets_json_that_validates(smollm2_server):
    openai = require("openai")
    client = openai.OpenAI(base_url=f"{smollm2_server.url}/v1", api_key="unused", max_retries=0)
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    r = client.chat.completions.create(
        model="smollm2-135m", messages=ASK, response_format=fmt, seed=1, temperature=1, max_tokens=160
    )
    jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
    assert r.choices[0].finish_reason == "stop"
    name_age = [{"role": "user", "content": "Give me a JSON object with your name and age."}]
    stream = client.chat.completions.create(
        model="smollm2-135m",
        messages=name_age,
        response_format={"type": "json_object"},
        stream=True,
        temperature=0,
        max_tokens=100,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(json.loads(text), dict), text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="smollm2-135m",
            messages=ASK,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
        )
    assert err.value.body["param"] == "response_format" and "cannot be used" in err.value.body["message"]
