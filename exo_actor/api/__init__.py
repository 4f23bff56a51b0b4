"""The OpenAI-compatible gateway (Starlette) and the web dashboard."""

from .app import GatewayConfig, create_app

__all__ = ["GatewayConfig", "create_app"]
