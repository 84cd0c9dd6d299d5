"""Request body schemas: validation only; the body is forwarded as the client sent it."""

from __future__ import annotations

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate

from .config import flatten_errors
from .errors import InvalidRequestError
from .fastcheck import FastCheck, chat_checks
from .gemini_schemas import GEMINI_COUNT_TOKENS as GEMINI_COUNT_TOKENS
from .gemini_schemas import GENERATE_CONTENT as GENERATE_CONTENT

MAX_MODEL_NAME = 256
MAX_MESSAGES = 100_000
MAX_EMBEDDING_INPUTS = 2048
MAX_PROMPT_CHARS = 32_000
ROLES = ("system", "developer", "user", "assistant", "tool", "function")

# The `*_DOC` constants say in JSON Schema what a validator function checks: they are the
# fields' `metadata`, which app/openapi.py renders with apispec; validation never reads them.
# apispec adds "null" to a nullable field's `type`; an `anyOf` needs it as a branch.
NULL = {"type": "null"}


class StrictBoolean(fields.Boolean):
    """true or false, nothing that merely looks like one ("false", 0, "no")."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise ValidationError("Must be true or false.")
        return value


class StrictNumber(fields.Float):
    """A JSON number (not a string holding one, not a boolean)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError("Must be a number.")
        return super()._deserialize(value, attr, data, **kwargs)


def _model(required: bool = False) -> fields.String:
    """A model name, alias or category; one that may be left out may also be null."""
    default = "" if required else "; absent or null: the default"
    return fields.String(
        required=required,
        allow_none=not required,
        validate=validate.Length(min=1, max=MAX_MODEL_NAME),
        metadata={"description": f"A model name, alias or category{default}."},
    )


def _is_token_id(value: object) -> bool:
    return type(value) is int


def _tools(value: object) -> None:
    if not isinstance(value, list):
        raise ValidationError("Must be a list of tools.")
    for i, tool in enumerate(value):
        if not isinstance(tool, dict):
            raise ValidationError(f"tools[{i}] must be an object.")
        if tool.get("type", "function") != "function":
            continue  # built-in tools (web_search and kin) go to the providers that have them
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ValidationError(
                f'tools[{i}] must be {{"type": "function", "function": {{"name": ...}}}}.'
            )


def _tool_choice(value: object) -> None:
    if value is None or value in ("none", "auto", "required"):
        return
    function = value.get("function") if isinstance(value, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ValidationError('Must be "none", "auto", "required" or a named function.')


def _tool_calls(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        raise ValidationError("Must be a list of tool calls.")
    for call in value:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ValidationError("Every tool call needs a function with a name.")


NAMED = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
CALLS_FUNCTION = {"type": "object", "required": ["function"], "properties": {"function": NAMED}}
NOT_FUNCTION = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"not": {"const": "function"}}},
}
TOOLS_DOC = {
    "type": "array",
    "description": "Tools; a `function` tool (the default type) names its function.",
    "items": {"anyOf": [NOT_FUNCTION, CALLS_FUNCTION]},
}
TOOL_CHOICE_DOC = {"anyOf": [{"enum": ["none", "auto", "required"]}, CALLS_FUNCTION, NULL]}
TOOL_CALLS_DOC = {"type": "array", "items": CALLS_FUNCTION}
CONTENT_DOC = {
    "type": ["string", "array"],
    "items": {"type": "object", "description": "A content part."},
}


def _content(value: object) -> None:
    if value is not None and not isinstance(value, str | list):
        raise ValidationError("must be a string, a list of content parts, or null")
    if isinstance(value, list) and not all(isinstance(part, dict) for part in value):
        raise ValidationError("every content part must be an object")


ROLE_SET = frozenset(ROLES)


def _messages(value: object) -> None:
    """A non-empty list of chat messages: role, content and tool calls of the right shapes."""
    if not isinstance(value, list):
        raise ValidationError("Not a valid list.")
    if not 1 <= len(value) <= MAX_MESSAGES:
        raise ValidationError(f"Length must be between 1 and {MAX_MESSAGES}.")
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise ValidationError({index: {"_schema": ["Invalid input type."]}})
        role = message.get("role")
        if role is None:
            raise ValidationError({index: {"role": ["Missing data for required field."]}})
        # A role that is not a string (an object, a list) cannot be looked up in a set.
        if not isinstance(role, str) or role not in ROLE_SET:
            raise ValidationError({index: {"role": [f"Must be one of: {', '.join(ROLES)}."]}})
        for field, check in (("content", _content), ("tool_calls", _tool_calls)):
            try:
                check(message.get(field))
            except ValidationError as err:
                raise ValidationError({index: {field: err.messages}}) from None


MESSAGES_DOC = {
    "type": "array",
    "minItems": 1,
    "maxItems": MAX_MESSAGES,
    "items": {"$ref": "#/components/schemas/ChatMessage"},
}


class ChatMessageSchema(Schema):
    """A chat message; fields other than `role`, `content` and `tool_calls` pass through."""

    # Documentation only: `_messages` checks the same, faster than a nested schema would.
    class Meta:
        unknown = INCLUDE

    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    content = fields.Raw(allow_none=True, metadata=CONTENT_DOC)
    tool_calls = fields.Raw(allow_none=True, metadata=TOOL_CALLS_DOC)


class StreamOptionsSchema(Schema):
    class Meta:
        unknown = INCLUDE

    include_usage = StrictBoolean(allow_none=True)


class ChatCompletionSchema(Schema):
    """POST /v1/chat/completions; fields not named here pass through untouched."""

    class Meta:
        unknown = INCLUDE

    model = _model()
    # Checked by a plain function rather than a nested schema per message: this runs on every
    # request, and a nested schema costs more than the rest of the validation together.
    messages = fields.Raw(required=True, validate=_messages, metadata=MESSAGES_DOC)
    stream = StrictBoolean(allow_none=True)
    stream_options = fields.Nested(StreamOptionsSchema, allow_none=True)
    tools = fields.Raw(allow_none=True, validate=_tools, metadata=TOOLS_DOC)
    tool_choice = fields.Raw(allow_none=True, validate=_tool_choice, metadata=TOOL_CHOICE_DOC)
    max_tokens = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=1))
    max_completion_tokens = fields.Integer(
        allow_none=True, strict=True, validate=validate.Range(min=1)
    )
    n = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=1, max=128))
    temperature = StrictNumber(allow_none=True, validate=validate.Range(min=0, max=2))
    top_p = StrictNumber(allow_none=True, validate=validate.Range(min=0, max=1))


CHAT_COMPLETION = ChatCompletionSchema()
# Plainly valid bodies skip marshmallow (app/fastcheck.py); anything else gets the schema's errors.
FAST_CHECKS: dict[int, FastCheck] = {
    id(CHAT_COMPLETION): FastCheck(
        set(CHAT_COMPLETION.load_fields),
        chat_checks(_messages, _tools, _tool_choice, MAX_MODEL_NAME),
        {name for name, field in CHAT_COMPLETION.load_fields.items() if field.required},
    )
}


def validate_body(schema: Schema, body: object) -> dict:
    """Check a parsed JSON body; raise a 400 naming the first bad field in `param`."""
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    fast = FAST_CHECKS.get(id(schema))
    if fast is not None and fast.ok(body):
        return body
    errors = schema.validate(body)
    if errors:
        first = flatten_errors(errors)[0]
        param, _, message = first.partition(": ")
        raise InvalidRequestError(f"Invalid request: {param}: {message}", param=param)
    return body


def _block_problem(block: object) -> str | None:
    """What is wrong with one Anthropic content block, if anything."""
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        return "every content block must be an object with a type"
    kind = block["type"]
    if kind == "text" and not isinstance(block.get("text"), str):
        return "a text block needs a string text"
    if kind == "image" and not isinstance(block.get("source"), dict):
        return "an image block needs a source object"
    if kind == "tool_use" and not (
        isinstance(block.get("name"), str) and isinstance(block.get("input", {}), dict)
    ):
        return "a tool_use block needs a name and an object input"
    if kind == "tool_result":
        if not isinstance(block.get("tool_use_id"), str):
            return "a tool_result block needs a tool_use_id"
        content = block.get("content")
        if content is not None and not isinstance(content, str):
            if not isinstance(content, list):
                return "tool_result content must be a string or a list of blocks"
            for inner in content:
                problem = _block_problem(inner)
                if problem:
                    return problem
    return None


def _anthropic_content(value: object) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise ValidationError("must be a string or a list of content blocks")
    for block in value:
        problem = _block_problem(block)
        if problem:
            raise ValidationError(problem)


def _system(value: object) -> None:
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, list) or not all(
        isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        for b in value
    ):
        raise ValidationError("must be a string or a list of text blocks")


NAME = {"type": "string", "minLength": 1}
NAMED_TOOL = {"type": {"const": "tool"}, "name": {"type": "string"}}


def _anthropic_tools(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not all(
        isinstance(t, dict) and isinstance(t.get("name"), str) and t["name"] for t in value
    ):
        raise ValidationError("every tool needs a name")


def _anthropic_tool_choice(value: object) -> None:
    if value is None:
        return
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        raise ValidationError('type must be "auto", "any", "tool" or "none"')
    if kind == "tool" and not isinstance(value.get("name"), str):
        raise ValidationError('a "tool" choice needs the tool\'s name')


# Looser than `_block_problem`, which also wants the fields a block's type names.
BLOCK_DOC = {
    "type": "object",
    "description": "A content block: text, image, tool_use, tool_result ...",
    "required": ["type"],
    "properties": {"type": {"type": "string"}},
}
BLOCKS_DOC = {"type": ["string", "array"], "items": BLOCK_DOC}
TEXT_BLOCK = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
}
SYSTEM_DOC = {
    "type": ["string", "array"],
    "description": "A string or a list of text blocks.",
    "items": TEXT_BLOCK,
}
ANTHROPIC_TOOLS_DOC = {"type": "array", "items": NAMED | {"properties": {"name": NAME}}}
ANTHROPIC_CHOICE = {"type": "object", "required": ["type"]}
ANTHROPIC_TOOL_CHOICE_DOC = {
    "anyOf": [
        ANTHROPIC_CHOICE | {"properties": {"type": {"enum": ["auto", "any", "none"]}}},
        ANTHROPIC_CHOICE | {"required": ["type", "name"], "properties": NAMED_TOOL},
        NULL,
    ]
}


class AnthropicMessageSchema(Schema):
    class Meta:
        unknown = INCLUDE

    role = fields.String(required=True, validate=validate.OneOf(("user", "assistant")))
    content = fields.Raw(required=True, validate=_anthropic_content, metadata=BLOCKS_DOC)


class MessagesSchema(Schema):
    """POST /v1/messages (Anthropic); fields not named here pass through to Anthropic upstreams."""

    class Meta:
        unknown = INCLUDE

    model = _model(required=True)
    max_tokens = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    messages = fields.List(
        fields.Nested(AnthropicMessageSchema),
        required=True,
        validate=validate.Length(min=1, max=MAX_MESSAGES),
    )
    system = fields.Raw(allow_none=True, validate=_system, metadata=SYSTEM_DOC)
    stream = StrictBoolean(allow_none=True)
    temperature = StrictNumber(allow_none=True, validate=validate.Range(min=0, max=1))
    top_p = StrictNumber(allow_none=True, validate=validate.Range(min=0, max=1))
    top_k = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=0))
    stop_sequences = fields.List(fields.String(), allow_none=True)
    tools = fields.Raw(allow_none=True, validate=_anthropic_tools, metadata=ANTHROPIC_TOOLS_DOC)
    tool_choice = fields.Raw(
        allow_none=True, validate=_anthropic_tool_choice, metadata=ANTHROPIC_TOOL_CHOICE_DOC
    )
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
    if kinds == {list} and all(_is_token_id(t) for item in value for t in item):
        return
    raise ValidationError("must be strings, or token ids, or lists of token ids")


TOKEN_IDS = {"type": "array", "items": {"type": "integer"}}
INPUTS = {"type": "array", "minItems": 1, "maxItems": MAX_EMBEDDING_INPUTS}
EMBEDDING_INPUT_DOC = {
    "description": "A string, or strings, token ids or lists of token ids.",
    "anyOf": [
        {"type": "string", "minLength": 1},
        INPUTS | {"items": {"type": "string"}},
        INPUTS | {"items": {"type": "integer"}},
        INPUTS | {"items": TOKEN_IDS},
    ],
}


class EmbeddingsSchema(Schema):
    """POST /v1/embeddings."""

    class Meta:
        unknown = INCLUDE

    model = _model(required=True)
    input = fields.Raw(required=True, validate=_embedding_input, metadata=EMBEDDING_INPUT_DOC)
    dimensions = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=1))
    encoding_format = fields.String(allow_none=True, validate=validate.OneOf(("float", "base64")))


class ImagesSchema(Schema):
    """POST /v1/images/generations."""

    class Meta:
        unknown = INCLUDE

    model = _model()
    prompt = fields.String(required=True, validate=validate.Length(min=1, max=MAX_PROMPT_CHARS))
    n = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=1, max=10))
    size = fields.String(allow_none=True, validate=validate.Length(max=32))
    response_format = fields.String(allow_none=True, validate=validate.OneOf(("url", "b64_json")))


def _prompt(value: object) -> None:
    if isinstance(value, str):
        return
    if (
        isinstance(value, list)
        and value
        and all(isinstance(p, str) or _is_token_id(p) or isinstance(p, list) for p in value)
    ):
        return
    raise ValidationError("must be a string or a non-empty list")


PROMPTS = {"type": "array", "minItems": 1, "items": {"type": ["string", "integer", "array"]}}
PROMPT_DOC = {"anyOf": [{"type": "string"}, PROMPTS]}


class CompletionsSchema(Schema):
    """POST /v1/completions (legacy)."""

    class Meta:
        unknown = INCLUDE

    model = _model(required=True)
    prompt = fields.Raw(required=True, validate=_prompt, metadata=PROMPT_DOC)
    stream = StrictBoolean(allow_none=True)
    max_tokens = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=1))


class GoImageSchema(Schema):
    """POST /image (Go ai-proxy): a prompt, as `prompt` or `inputs`, and maybe a model."""

    class Meta:
        unknown = INCLUDE

    model = _model()
    prompt = fields.String(allow_none=True, validate=validate.Length(min=1, max=MAX_PROMPT_CHARS))
    inputs = fields.String(allow_none=True, validate=validate.Length(min=1, max=MAX_PROMPT_CHARS))


EMBEDDINGS = EmbeddingsSchema()
IMAGES = ImagesSchema()
COMPLETIONS = CompletionsSchema()
GO_IMAGE = GoImageSchema()


# --- the Responses API (POST /v1/responses) ------------------------------------------------------

MAX_METADATA_KEYS = 16
RESPONSES_TOOL_CHOICES = ("none", "auto", "required")


def _responses_input(value: object) -> None:
    """A string, or a list of input items (objects); app/responses_api.py checks each item and
    names the field of one it cannot read."""
    if isinstance(value, str):
        return
    if not isinstance(value, list) or len(value) > MAX_MESSAGES:
        raise ValidationError(f"must be a string or a list of at most {MAX_MESSAGES} items")
    if not all(isinstance(item, dict) for item in value):
        raise ValidationError("every input item must be an object")


def _responses_tools(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        raise ValidationError("Must be a list of tools.")
    for i, tool in enumerate(value):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise ValidationError(f"tools[{i}] must be an object with a type.")
        if tool["type"] == "function" and not (isinstance(tool.get("name"), str) and tool["name"]):
            raise ValidationError(f'tools[{i}] must be {{"type": "function", "name": ...}}.')


def _responses_tool_choice(value: object) -> None:
    if value is None or value in RESPONSES_TOOL_CHOICES:
        return
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise ValidationError('Must be "none", "auto", "required" or an object with a type.')
    if value["type"] == "function" and not isinstance(value.get("name"), str):
        raise ValidationError('A "function" choice needs the function\'s name.')


def _text_config(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise ValidationError("Must be an object.")
    fmt = value.get("format")
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise ValidationError('format.type must be "text", "json_object" or "json_schema".')
    if kind == "json_schema" and not isinstance(fmt.get("schema"), dict):
        raise ValidationError("a json_schema format needs a schema object.")


def _metadata(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or len(value) > MAX_METADATA_KEYS:
        raise ValidationError(f"Must be an object of at most {MAX_METADATA_KEYS} strings.")
    for key, item in value.items():
        if len(key) > 64 or not isinstance(item, str) or len(item) > 512:
            raise ValidationError("Keys are at most 64 characters, values strings of 512.")


INPUT_ITEM_DOC = {"type": "object", "description": "An input item (message, function_call ...)."}
RESPONSES_INPUT_DOC = {
    "anyOf": [
        {"type": "string"},
        {"type": "array", "maxItems": MAX_MESSAGES, "items": INPUT_ITEM_DOC},
        NULL,
    ]
}
TYPED = {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}}
FUNCTION_TOOL = {
    "type": "object",
    "required": ["type", "name"],
    "properties": {"type": {"const": "function"}, "name": NAME},
}
OTHER_TOOL = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"type": "string", "not": {"const": "function"}}},
}
RESPONSES_TOOLS_DOC = {"type": "array", "items": {"anyOf": [FUNCTION_TOOL, OTHER_TOOL]}}
RESPONSES_TOOL_CHOICE_DOC = {
    "anyOf": [
        {"enum": list(RESPONSES_TOOL_CHOICES)},
        {
            "type": "object",
            "required": ["type", "name"],
            "properties": {"type": {"const": "function"}, "name": {"type": "string"}},
        },
        OTHER_TOOL,
        NULL,
    ]
}
TEXT_FORMAT = {
    "anyOf": [
        {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"enum": ["text", "json_object"]}},
        },
        {
            "type": "object",
            "required": ["type", "schema"],
            "properties": {"type": {"const": "json_schema"}, "schema": {"type": "object"}},
        },
        NULL,
    ]
}
TEXT_CONFIG_DOC = {"type": "object", "properties": {"format": TEXT_FORMAT}}
METADATA_DOC = {
    "type": "object",
    "maxProperties": MAX_METADATA_KEYS,
    "additionalProperties": {"type": "string", "maxLength": 512},
    # apispec keeps only some keywords at the top of a field; inside allOf they all stay.
    "allOf": [{"propertyNames": {"maxLength": 64}}],
}


class ResponsesSchema(Schema):
    """POST /v1/responses (OpenAI Responses API); fields not named here pass through to
    deployments that serve Responses themselves, and are dropped (with a warning) for others."""

    class Meta:
        unknown = INCLUDE

    model = _model()
    input = fields.Raw(allow_none=True, validate=_responses_input, metadata=RESPONSES_INPUT_DOC)
    instructions = fields.String(allow_none=True)
    previous_response_id = fields.String(
        allow_none=True, validate=validate.Length(min=1, max=MAX_MODEL_NAME)
    )
    stream = StrictBoolean(allow_none=True)
    store = StrictBoolean(allow_none=True)
    tools = fields.Raw(allow_none=True, validate=_responses_tools, metadata=RESPONSES_TOOLS_DOC)
    tool_choice = fields.Raw(
        allow_none=True, validate=_responses_tool_choice, metadata=RESPONSES_TOOL_CHOICE_DOC
    )
    parallel_tool_calls = StrictBoolean(allow_none=True)
    max_output_tokens = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=1))
    temperature = StrictNumber(allow_none=True, validate=validate.Range(min=0, max=2))
    top_p = StrictNumber(allow_none=True, validate=validate.Range(min=0, max=1))
    text = fields.Raw(allow_none=True, validate=_text_config, metadata=TEXT_CONFIG_DOC)
    metadata = fields.Raw(allow_none=True, validate=_metadata, metadata=METADATA_DOC)


RESPONSES = ResponsesSchema()
