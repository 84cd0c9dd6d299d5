"""Request body schemas: validation only; the body is forwarded as the client sent it."""

from __future__ import annotations

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate

from app.config import flatten_errors
from app.errors import InvalidRequestError

MAX_MODEL_NAME = 256
MAX_MESSAGES = 100_000
MAX_EMBEDDING_INPUTS = 2048
MAX_PROMPT_CHARS = 32_000
ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def _content(value: object) -> None:
    if value is not None and not isinstance(value, str | list):
        raise ValidationError("must be a string, a list of content parts, or null")
    if isinstance(value, list) and not all(isinstance(part, dict) for part in value):
        raise ValidationError("every content part must be an object")


class MessageSchema(Schema):
    class Meta:
        unknown = INCLUDE

    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    content = fields.Raw(allow_none=True, validate=_content)


class StreamOptionsSchema(Schema):
    class Meta:
        unknown = INCLUDE

    include_usage = fields.Boolean(allow_none=True)


class ChatCompletionSchema(Schema):
    """POST /v1/chat/completions; fields not named here pass through untouched."""

    class Meta:
        unknown = INCLUDE

    model = fields.String(allow_none=True, validate=validate.Length(min=1, max=MAX_MODEL_NAME))
    messages = fields.List(
        fields.Nested(MessageSchema),
        required=True,
        validate=validate.Length(min=1, max=MAX_MESSAGES),
    )
    stream = fields.Boolean(allow_none=True)
    stream_options = fields.Nested(StreamOptionsSchema, allow_none=True)
    max_tokens = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=1))
    max_completion_tokens = fields.Integer(
        allow_none=True, strict=True, validate=validate.Range(min=1)
    )
    n = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=1, max=128))
    temperature = fields.Float(allow_none=True, validate=validate.Range(min=0, max=2))
    top_p = fields.Float(allow_none=True, validate=validate.Range(min=0, max=1))


CHAT_COMPLETION = ChatCompletionSchema()


def validate_body(schema: Schema, body: object) -> dict:
    """Check a parsed JSON body; raise a 400 naming the first bad field in `param`."""
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    errors = schema.validate(body)
    if errors:
        first = flatten_errors(errors)[0]
        param, _, message = first.partition(": ")
        raise InvalidRequestError(f"Invalid request: {param}: {message}", param=param)
    return body


def _anthropic_content(value: object) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not all(
        isinstance(block, dict) and isinstance(block.get("type"), str) for block in value
    ):
        raise ValidationError("must be a string or a list of content blocks with a type")


def _system(value: object) -> None:
    if value is not None and not isinstance(value, str | list):
        raise ValidationError("must be a string or a list of text blocks")


class AnthropicMessageSchema(Schema):
    class Meta:
        unknown = INCLUDE

    role = fields.String(required=True, validate=validate.OneOf(("user", "assistant")))
    content = fields.Raw(required=True, validate=_anthropic_content)


class MessagesSchema(Schema):
    """POST /v1/messages (Anthropic); fields not named here pass through to Anthropic upstreams."""

    class Meta:
        unknown = INCLUDE

    model = fields.String(required=True, validate=validate.Length(min=1, max=MAX_MODEL_NAME))
    max_tokens = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    messages = fields.List(
        fields.Nested(AnthropicMessageSchema),
        required=True,
        validate=validate.Length(min=1, max=MAX_MESSAGES),
    )
    system = fields.Raw(allow_none=True, validate=_system)
    stream = fields.Boolean(allow_none=True)
    temperature = fields.Float(allow_none=True, validate=validate.Range(min=0, max=1))
    top_p = fields.Float(allow_none=True, validate=validate.Range(min=0, max=1))
    top_k = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=0))
    stop_sequences = fields.List(fields.String(), allow_none=True)
    tools = fields.List(fields.Dict(), allow_none=True)
    tool_choice = fields.Dict(allow_none=True)
    metadata = fields.Dict(allow_none=True)


class CountTokensSchema(MessagesSchema):
    """POST /v1/messages/count_tokens: a Messages body without max_tokens."""

    max_tokens = fields.Integer(strict=True, validate=validate.Range(min=1))


MESSAGES = MessagesSchema()
COUNT_TOKENS = CountTokensSchema()


def _embedding_input(value: object) -> None:
    if isinstance(value, str):
        if not value:
            raise ValidationError("must not be empty")
        return
    if not isinstance(value, list) or not value:
        raise ValidationError("must be a string or a non-empty list")
    if len(value) > MAX_EMBEDDING_INPUTS:
        raise ValidationError(f"at most {MAX_EMBEDDING_INPUTS} inputs")
    kinds = {type(item) for item in value}
    if kinds == {str} or kinds == {int}:
        return
    if kinds == {list} and all(isinstance(t, int) for item in value for t in item):
        return
    raise ValidationError("must be strings, or token ids, or lists of token ids")


class EmbeddingsSchema(Schema):
    """POST /v1/embeddings."""

    class Meta:
        unknown = INCLUDE

    model = fields.String(required=True, validate=validate.Length(min=1, max=MAX_MODEL_NAME))
    input = fields.Raw(required=True, validate=_embedding_input)
    dimensions = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=1))
    encoding_format = fields.String(allow_none=True, validate=validate.OneOf(("float", "base64")))


class ImagesSchema(Schema):
    """POST /v1/images/generations."""

    class Meta:
        unknown = INCLUDE

    model = fields.String(allow_none=True, validate=validate.Length(min=1, max=MAX_MODEL_NAME))
    prompt = fields.String(required=True, validate=validate.Length(min=1, max=MAX_PROMPT_CHARS))
    n = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=1, max=10))
    size = fields.String(allow_none=True, validate=validate.Length(max=32))
    response_format = fields.String(allow_none=True, validate=validate.OneOf(("url", "b64_json")))


def _prompt(value: object) -> None:
    if isinstance(value, str):
        return
    if isinstance(value, list) and value and all(isinstance(p, str | int | list) for p in value):
        return
    raise ValidationError("must be a string or a non-empty list")


class CompletionsSchema(Schema):
    """POST /v1/completions (legacy)."""

    class Meta:
        unknown = INCLUDE

    model = fields.String(required=True, validate=validate.Length(min=1, max=MAX_MODEL_NAME))
    prompt = fields.Raw(required=True, validate=_prompt)
    stream = fields.Boolean(allow_none=True)
    max_tokens = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=1))


class GoImageSchema(Schema):
    """POST /image (Go ai-proxy): a prompt, as `prompt` or `inputs`, and maybe a model."""

    class Meta:
        unknown = INCLUDE

    model = fields.String(allow_none=True, validate=validate.Length(min=1, max=MAX_MODEL_NAME))
    prompt = fields.String(allow_none=True, validate=validate.Length(min=1, max=MAX_PROMPT_CHARS))
    inputs = fields.String(allow_none=True, validate=validate.Length(min=1, max=MAX_PROMPT_CHARS))


EMBEDDINGS = EmbeddingsSchema()
IMAGES = ImagesSchema()
COMPLETIONS = CompletionsSchema()
GO_IMAGE = GoImageSchema()
