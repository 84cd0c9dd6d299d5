"""Request body schemas: validation only; the body is forwarded as the client sent it."""

from __future__ import annotations

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate

from app.config import flatten_errors
from app.errors import InvalidRequestError

MAX_MODEL_NAME = 256
MAX_MESSAGES = 100_000
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
