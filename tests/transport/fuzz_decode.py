"""Coverage-guided fuzzing of the wire decoder with atheris (libFuzzer): every input either decodes
to a message that re-encodes to itself, or raises ProtocolError; anything else is a crash.

    python tests/transport/fuzz_decode.py CORPUS_DIR -runs=N

Input layout: the first byte picks the frame count (1-3), the rest is split on b"||" into frames.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from exo_actor.transport.messages import ProtocolError, decode

SEPARATOR = b"||"


def frames_of(data: bytes) -> list[bytes]:
    n = data[0] % 3 + 1 if data else 1
    return data[1:].split(SEPARATOR, n - 1)


def one_input(data: bytes) -> None:
    try:
        msg = decode(frames_of(data))
    except ProtocolError:
        return
    again = decode([bytes(f) for f in msg.encode()])
    if type(again) is not type(msg) or again.encode()[0] != msg.encode()[0]:
        raise AssertionError(f"{msg.KIND} does not survive a second round trip")


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
