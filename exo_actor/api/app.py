"""The gateway's Starlette app: routes, API-key and body-size middleware, OpenAI-shaped errors."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..actors.ring import RingError
from ..actors.router import OverloadedError
from ..errors import ConfigError, ContextLengthError, ExoError, InvalidRequestError
from ..node import ModelLoadingError, Node
from .anthropic_routes import AnthropicRoutes
from .embeddings_routes import EmbeddingsRoutes
from .errors import ApiError
from .metrics import GatewayMetrics
from .ollama_routes import OllamaRoutes
from .openai_routes import OpenAIRoutes
from .plan_routes import PlanRoutes
from .requests import check_model
from .responses_routes import ResponsesRoutes
from .tls import check_tls_files
from .tokenizer_routes import TokenizerRoutes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayConfig:
    api_key: str | None = None
    max_body_bytes: int = 4 * 1024 * 1024
    request_timeout: float = 600.0  # a request (streamed or not) ends with a 504 / error event after this
    max_tokens: int | None = None  # cap on a request's completion tokens (None: the context length)
    max_context: int | None = None  # cap on prompt + completion tokens (None: the model's context)
    tls_cert: str | None = None  # PEM certificate (chain) file: serve HTTPS (with tls_key)
    tls_key: str | None = None  # PEM private key file of tls_cert, unencrypted

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = ("tls_cert", "tls_key") if self.tls_key is None else ("tls_key", "tls_cert")
            raise ConfigError(type(self).__name__, missing, f"is needed with {given} (HTTPS takes both)")
        if self.tls_cert is not None and self.tls_key is not None:
            check_tls_files(self.tls_cert, self.tls_key)

    @property
    def scheme(self) -> str:
        """https with a TLS certificate, else http."""
        return "https" if self.tls_cert else "http"


_KEYED_PATHS = ("/metrics", "/tokenize", "/detokenize", "/tokenizer_info")  # beside /v1/ and /api/


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than {limit} bytes", code="request_too_large")


class LimitsMiddleware:
    """Rejects bodies over max_body_bytes (413) and, with an API key, requests without it (401)."""

    def __init__(self, app: ASGIApp, config: GatewayConfig) -> None:
        self.app, self.config = app, config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        if self.config.api_key and (path.startswith(("/v1/", "/api/")) or path in _KEYED_PATHS):
            given = headers.get("authorization", "")
            if "x-api-key" in headers:  # Anthropic's SDKs send the key this way
                given = f"Bearer {headers['x-api-key']}"
            if not hmac.compare_digest(given.encode(), f"Bearer {self.config.api_key}".encode()):
                msg = "missing or wrong API key: send 'Authorization: Bearer <key>' (the key given to --api-key)"
                await ApiError(401, msg, "authentication_error", code="invalid_api_key").response()(
                    scope, receive, send
                )
                return
        limit = self.config.max_body_bytes
        try:
            declared = int(headers.get("content-length", "0"))
        except ValueError:
            declared = 0
        if declared > limit:
            await _too_large(limit).response()(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _too_large(limit)  # becomes the 413 answer of the route reading the body
            return message

        await self.app(scope, counting_receive, send)


class Gateway:
    """Holds what the routes share: the node, config, metrics; maps errors to OpenAI's shape."""

    def __init__(self, node: Node, config: GatewayConfig) -> None:
        self.node, self.config = node, config
        self.metrics = GatewayMetrics(
            lambda: node.in_flight, lambda: node.messages_dropped, lambda: node.beacons_rejected, node.messages_received
        )

    def check_model(self, requested: str) -> None:
        check_model(requested, self.node.model_aliases(), self.node.model_id)

    def to_api_error(self, exc: Exception) -> ApiError:
        if isinstance(exc, ApiError):
            return exc
        if isinstance(exc, OverloadedError):
            return ApiError(429, str(exc), "rate_limit_error", code="too_many_requests")
        if isinstance(exc, RingError):
            return ApiError(503, str(exc), "service_unavailable", code="ring_unavailable")
        if isinstance(exc, ModelLoadingError):
            return ApiError(503, str(exc), "service_unavailable", code="model_loading")
        if isinstance(exc, ContextLengthError):
            return ApiError(400, str(exc), code="context_length_exceeded")
        if isinstance(exc, InvalidRequestError | ExoError):
            return ApiError(400, str(exc))
        log.exception("internal error", exc_info=exc)
        return ApiError(500, "internal server error (logged on the server)", "server_error")

    async def models(self, request: Request) -> Response:
        data = [
            {"id": self.node.model_id, "object": "model", "created": int(self.node.started_at), "owned_by": "exo-actor"}
        ]
        return JSONResponse({"object": "list", "data": data})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "state": self.node.state})

    async def cluster(self, request: Request) -> Response:
        return JSONResponse(self.node.cluster_info())

    async def metrics_page(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def dashboard(self, request: Request) -> Response:
        page = resources.files("exo_actor.api").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(page)


def create_app(node: Node, config: GatewayConfig | None = None) -> Starlette:
    """The gateway app for a node (started or not)."""
    gw = Gateway(node, config or GatewayConfig())
    oa = OpenAIRoutes(gw)
    plan = PlanRoutes(node)
    ollama = OllamaRoutes(gw, oa)
    anthropic = AnthropicRoutes(gw, oa)
    tokenizer = TokenizerRoutes(gw)
    responses = ResponsesRoutes(gw, oa)

    def counted(endpoint: Any, name: str) -> Any:
        async def handler(request: Request) -> Response:
            try:
                response = await endpoint(request)
            except Exception as exc:  # noqa: BLE001 - every failure becomes an OpenAI-shaped answer
                err = gw.to_api_error(exc)
                gw.metrics.errors.labels(err.type).inc()
                response = err.response()
            gw.metrics.requests.labels(name, str(response.status_code)).inc()
            return response

        return handler

    routes = [
        Route("/", gw.dashboard),
        Route("/healthz", gw.health),
        Route("/metrics", gw.metrics_page),
        Route("/v1/models", counted(gw.models, "models")),
        Route("/v1/cluster", counted(gw.cluster, "cluster")),
        Route("/v1/plan", counted(plan.get, "plan"), methods=["GET"]),
        Route("/v1/messages", counted(anthropic.messages, "anthropic_messages"), methods=["POST"]),
        Route("/api/version", counted(ollama.version, "ollama_version")),
        Route("/api/tags", counted(ollama.tags, "ollama_tags")),
        Route("/api/ps", counted(ollama.ps, "ollama_ps")),
        Route("/api/show", counted(ollama.show, "ollama_show"), methods=["POST"]),
        Route("/api/chat", counted(ollama.chat, "ollama_chat"), methods=["POST"]),
        Route("/api/generate", counted(ollama.generate, "ollama_generate"), methods=["POST"]),
        Route("/v1/plan", counted(plan.post, "plan"), methods=["POST"]),
        Route("/v1/chat/completions", counted(oa.chat, "chat"), methods=["POST"]),
        Route("/v1/completions", counted(oa.completions, "completions"), methods=["POST"]),
        Route("/v1/embeddings", counted(EmbeddingsRoutes(gw).embeddings, "embeddings"), methods=["POST"]),
        Route("/tokenize", counted(tokenizer.tokenize, "tokenize"), methods=["POST"]),
        Route("/detokenize", counted(tokenizer.detokenize, "detokenize"), methods=["POST"]),
        Route("/tokenizer_info", counted(tokenizer.info, "tokenizer_info")),
        Route("/v1/responses", counted(responses.create, "responses"), methods=["POST"]),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", kind).response()

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.add_middleware(LimitsMiddleware, config=gw.config)
    app.state.gateway = gw
    return app
