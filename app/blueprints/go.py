"""Go ai-proxy compatibility: `POST /image` answers with the raw image bytes."""

from __future__ import annotations

from ..blueprints.common import api_blueprint
from ..blueprints.pipeline import Answer, Call, Endpoint, serve
from ..errors import InvalidRequestError
from ..kinds import Kind
from ..providers import CallContext
from ..routing import Candidate
from ..schemas import GO_IMAGE

bp = api_blueprint("ai_proxy_go", __name__)

ALL_MODELS = "all"


class RawImage(Endpoint):
    name = "create_raw_image"
    paths = ("/image",)
    schema = GO_IMAGE
    kind = Kind.IMAGE
    charged = False

    def normalise(self, body: object) -> object:
        if isinstance(body, dict) and body.get("model") in ("", ALL_MODELS):
            # As in the Go proxy, no model, "" or "all" tries every image model the token may use.
            body = {key: value for key, value in body.items() if key != "model"}
        return body

    def read(self, body: dict, size: int) -> Call:
        prompt = body.get("prompt") or body.get("inputs")
        if not prompt:
            raise InvalidRequestError("Send the image description as 'prompt'.", param="prompt")
        return Call(body, body.get("model"), size, prepared=prompt)

    def answer(self, call: Call, candidate: Candidate, ctx: CallContext) -> Answer:
        request = {"model": candidate.upstream_model, "prompt": call.prepared}
        data, media = candidate.provider.image_file(request, ctx)
        return Answer(data, content_type=media)


serve(bp, RawImage())
