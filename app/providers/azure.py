"""Azure OpenAI: OpenAI's wire format behind per-deployment URLs, an `api-key` and `api-version`."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit, urlunsplit

import requests

from ..config import ModelConfig
from ..model_ids import IdForm
from ..providers.base import CallContext, ChatStream, Provider
from ..providers.responses_wire import ResponsesStream, response_answer
from ..providers.wire import OpenAIStream, chat_answer, with_usage
from ..upstream import read_json

DEFAULT_API_VERSION = "2024-10-21"  # the latest GA data-plane inference version
CHAT_PATH = "/chat/completions"
DEPLOYMENTS_PATH = "/openai/deployments/"  # in a Go-style `url` naming its deployment
# The Responses API is on Azure's v1 API: the deployment goes in the body's `model`.
RESPONSES_PATH = "/openai/v1/responses"


class AzureProvider(Provider):
    name = "azure"
    model_id_form = IdForm.SEGMENT  # /openai/deployments/<deployment>/...
    # The resource root, as the SDK's `azure_endpoint` takes it, or with `/openai`.
    api_path = "/openai"

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
        deployment_path = self.model_path(deployment)
        return f"{self.base_url}/deployments/{deployment_path}{CHAT_PATH}", params

    def auth_headers(self, ctx: CallContext) -> dict[str, str]:
        return {"api-key": self.model.token} if self.model.token else {}

    def _send(self, body: dict, ctx: CallContext, stream: bool) -> requests.Response:
        url, params = self.endpoint(body.get("model") or self.model.upstream_model())
        return self.post(url, body, ctx, stream=stream, params=params)

    def chat(self, body: dict, ctx: CallContext) -> dict:
        return chat_answer(read_json(self._send(body, ctx, stream=False), self.label), self.label)

    def open_chat_stream(self, body: dict, ctx: CallContext) -> ChatStream:
        return OpenAIStream(self._send(with_usage(body), ctx, stream=True), self.label)

    def responses_url(self) -> str:
        """The resource's v1 Responses endpoint, whatever form `base_url` or `url` takes."""
        parts = urlsplit(self.model.base_url or self.model.url or "")
        return urlunsplit((parts.scheme, parts.netloc, RESPONSES_PATH, "", ""))

    def responses(self, body: dict, ctx: CallContext) -> dict:
        answer = read_json(self.post(self.responses_url(), body, ctx), self.label)
        return response_answer(answer, self.label)

    def open_responses_stream(self, body: dict, ctx: CallContext) -> ChatStream:
        response = self.post(self.responses_url(), {**body, "stream": True}, ctx, stream=True)
        return ResponsesStream(response, self.label)
