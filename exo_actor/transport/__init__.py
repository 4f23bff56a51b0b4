"""Transport: wire messages (frozen dataclasses + a validating codec), sockets, discovery."""

from .messages import (
    PROTOCOL_VERSION,
    Draft,
    Drafted,
    Failure,
    Forward,
    ForwardBatch,
    Free,
    Hello,
    Logits,
    LogitsBatch,
    Message,
    Ping,
    Pong,
    ProtocolError,
    Truncate,
    decode,
)

__all__ = [
    "PROTOCOL_VERSION",
    "Draft",
    "Drafted",
    "Failure",
    "Forward",
    "ForwardBatch",
    "Free",
    "Hello",
    "Logits",
    "LogitsBatch",
    "Message",
    "Ping",
    "Pong",
    "ProtocolError",
    "Truncate",
    "decode",
]
