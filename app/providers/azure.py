"""Azure OpenAI: OpenAI's wire format behind per-deployment URLs, an `api-key` and `api-version`."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import requests

from app.config import ModelConfig
from app.errors import UpstreamError
from app.model_ids import IdForm
from app.providers.base import CallContext, ChatStream, Provider
from app.providers.wire import OpenAIStream
from app.upstream import read_json

DEFAULT_API_VERSION = "2024-10-21"  # the latest GA data-plane inference version
CHAT_PATH = "/chat/completions"
DEPLOYMENTS_PATH = "/openai/deployments/"


class AzureProvider(Provider):
    name = "azure"
    model_id_form = IdForm.SEGMENT  # /openai/deployments/<deployment>/...

    @classmethod
    def check(cls, model: ModelConfig, default_base_url: str | None) -> list[str]:
        if model.base_url or model.url:
            return []
        return [
            "base_url: required for provider 'azure' "
            "(https://<resource>.openai.azure.com, or the Go-style deployment url)"
        ]

    @property
    def api_version(self) -> str:
        return getattr(self.model, "api_version", None) or DEFAULT_API_VERSION

    def endpoint(self, deployment: str) -> tuple[str, dict[str, str]]:
        """The chat URL and its query for a deployment.

        A Go-style `url` that already names a deployment is used as it is, keeping its own
        api-version if it has one; any other `url` is the resource root, like `base_url`.
        """
        params = {"api-version": self.api_version}
        if self.model.url and not self.model.base_url:
            parts = urlsplit(self.model.url)
            root = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
            if DEPLOYMENTS_PATH in root:
                version = parse_qs(parts.query).get("api-version")
                if version:
                    params["api-version"] = version[0]
                return (root if root.endswith(CHAT_PATH) else root + CHAT_PATH), params
        else:
            root = (self.model.base_url or "").rstrip("/")
        root = root.removesuffix("/openai")
        return f"{root}{DEPLOYMENTS_PATH}{self.model_path(deployment)}{CHAT_PATH}", params

    def headers(self, ctx: CallContext, stream: bool = False) -> dict[str, str]:
        headers = self.json_headers(ctx, stream)
        if self.model.token:
            headers["api-key"] = self.model.token
        return headers

    def _send(self, body: dict, ctx: CallContext, stream: bool) -> requests.Response:
        url, params = self.endpoint(body.get("model") or self.model.upstream_model())
        return self.pool.send(
            "POST",
            url,
            label=self.label,
            headers=self.headers(ctx, stream),
            body=json.dumps(body).encode(),
            timeout=self.timeout(ctx),
            params=params,
        )

    def chat(self, body: dict, ctx: CallContext) -> dict:
        answer = read_json(self._send(body, ctx, stream=False), self.label)
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
            raise UpstreamError(f"{self.label}: the upstream answer is not a chat completion")
        return answer

    def open_chat_stream(self, body: dict, ctx: CallContext) -> ChatStream:
        # Ask for usage whatever the client asked, so quotas and metrics see real numbers.
        options = body.get("stream_options")
        options = dict(options) if isinstance(options, dict) else {}
        options["include_usage"] = True
        body = {**body, "stream": True, "stream_options": options}
        return OpenAIStream(self._send(body, ctx, stream=True), self.label)
