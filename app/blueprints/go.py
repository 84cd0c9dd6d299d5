"""Go ai-proxy compatibility: `POST /image` answers with the raw image bytes."""

from __future__ import annotations

from flask import Blueprint, Response

from app.blueprints.common import (
    admit,
    authenticate,
    call_context,
    image_bytes,
    note_outcome,
    read_json_body,
    routing_headers,
)
from app.errors import OPENAI, InvalidRequestError, UpstreamError
from app.images import sniff_type
from app.schemas import GO_IMAGE, validate_body

bp = Blueprint("ai_proxy_go", __name__)

ALL_MODELS = "all"


@bp.before_request
def require_token():
    authenticate()


@bp.post("/image")
def create_raw_image():
    body, size = read_json_body()
    if isinstance(body, dict) and body.get("model") in ("", ALL_MODELS):
        # As in the Go proxy, no model, "" or "all" tries every image model the token may use.
        body = {key: value for key, value in body.items() if key != "model"}
    body = validate_body(GO_IMAGE, body)
    prompt = body.get("prompt") or body.get("inputs")
    if not prompt:
        raise InvalidRequestError("Send the image description as 'prompt'.", param="prompt")
    state, _token, resolution, quota_headers = admit(body.get("model"), size, kind="image")
    ctx = call_context(resolution.identifier)

    def call(candidate):
        request = {
            "model": candidate.upstream_model,
            "prompt": prompt,
            "n": 1,
            "response_format": "b64_json",
        }
        entries = candidate.provider.generate_image(request, ctx)
        data = image_bytes(entries[0], candidate, ctx)
        media = sniff_type(data)
        if media is None:
            raise UpstreamError(f"{candidate.provider.label}: the upstream answer is not an image")
        return data, media

    outcome = state.router.run(resolution, call, ctx.deadline)
    outcome.finish()
    note_outcome(outcome, OPENAI, stream=False)
    data, media = outcome.result
    return Response(data, content_type=media, headers={**routing_headers(outcome), **quota_headers})
