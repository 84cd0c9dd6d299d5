"""Request body schemas of the Gemini surface (`generateContent`, `countTokens`).

Validation only, like `app.schemas` (which re-exports these): the body is forwarded to `google`
deployments as sent, and translated for the others. The `*_DOC` constants say in JSON Schema
what the validator functions check, for `/openapi.json`.
"""

from __future__ import annotations

import re

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate, validates_schema

MAX_CONTENTS = 100_000
MAX_PARTS = 10_000
MAX_STOP_SEQUENCES = 16
MAX_CANDIDATES = 8
MAX_FUNCTIONS = 512
ROLES = ("user", "model")
CALLING_MODES = ("AUTO", "ANY", "NONE", "VALIDATED", "MODE_UNSPECIFIED")
# What a function may be called, as Google documents it.
FUNCTION_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,127}$"
FUNCTION_NAME_RE = re.compile(FUNCTION_NAME_PATTERN.rstrip("$"))
# A part carries exactly one of these; the other fields (`thought`, `thoughtSignature`,
# `videoMetadata` ...) only qualify it.
DATA_FIELDS = (
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
)
QUALIFIERS = ("thought", "thoughtSignature", "videoMetadata", "partMetadata", "mediaResolution")
NULL = {"type": "null"}


class StrictNumber(fields.Float):
    """A JSON number (not a string holding one, not a boolean)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError("Must be a number.")
        return super()._deserialize(value, attr, data, **kwargs)


def _object_with(value: object, required: dict[str, type], optional: dict[str, type]) -> str | None:
    if not isinstance(value, dict):
        return "must be an object"
    for name, kind in required.items():
        if not isinstance(value.get(name), kind):
            return f"needs {name} ({kind.__name__})"
    for name, kind in optional.items():
        if name in value and not isinstance(value[name], kind):
            return f"{name} must be {kind.__name__}"
    return None


PART_FIELDS: dict[str, tuple[dict[str, type], dict[str, type]]] = {
    "inlineData": ({"mimeType": str, "data": str}, {}),
    "fileData": ({"fileUri": str}, {"mimeType": str}),
    "functionCall": ({"name": str}, {"args": dict, "id": str}),
    "functionResponse": ({"name": str, "response": dict}, {"id": str}),
    "executableCode": ({"code": str}, {"language": str}),
    "codeExecutionResult": ({}, {"outcome": str, "output": str}),
}


def part_problem(part: object) -> str | None:
    """What is wrong with one part, if anything."""
    if not isinstance(part, dict):
        return "every part must be an object"
    unknown = [key for key in part if key not in DATA_FIELDS and key not in QUALIFIERS]
    if unknown:
        return f"unknown part field {unknown[0][:64]!r}"
    data = [key for key in DATA_FIELDS if key in part]
    if len(data) != 1:
        return f"a part holds exactly one of {', '.join(DATA_FIELDS)}"
    kind = data[0]
    if kind == "text":
        if not isinstance(part["text"], str):
            return "text must be a string"
    else:
        problem = _object_with(part[kind], *PART_FIELDS[kind])
        if problem:
            return f"{kind} {problem}"
    if "thought" in part and not isinstance(part["thought"], bool):
        return "thought must be true or false"
    if "thoughtSignature" in part and not isinstance(part["thoughtSignature"], str):
        return "thoughtSignature must be a string"
    return None


def _parts(value: object) -> None:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_PARTS:
        raise ValidationError(f"must be a list of 1 to {MAX_PARTS} parts")
    for index, part in enumerate(value):
        problem = part_problem(part)
        if problem:
            raise ValidationError({index: [problem]})


def _object_doc(required: dict, optional: dict) -> dict:
    names = {str: "string", dict: "object"}
    properties = {k: {"type": names[t]} for k, t in {**required, **optional}.items()}
    return {"type": "object", "required": list(required), "properties": properties}


PART_DOC = {
    "type": "object",
    "description": "A part: exactly one of text, inlineData, fileData, functionCall, "
    "functionResponse, executableCode, codeExecutionResult.",
    "additionalProperties": False,
    "properties": {
        "text": {"type": "string"},
        **{kind: _object_doc(*shape) for kind, shape in PART_FIELDS.items()},
        "thought": {"type": "boolean"},
        "thoughtSignature": {"type": "string"},
        **{name: {} for name in ("videoMetadata", "partMetadata", "mediaResolution")},
    },
    "oneOf": [{"required": [kind]} for kind in DATA_FIELDS],
}
PARTS_DOC = {"type": "array", "minItems": 1, "maxItems": MAX_PARTS, "items": PART_DOC}


class ContentSchema(Schema):
    """A turn: `role` user or model (absent: user) and its parts."""

    class Meta:
        unknown = INCLUDE

    role = fields.String(validate=validate.OneOf(ROLES))
    parts = fields.Raw(required=True, validate=_parts, metadata=PARTS_DOC)


class SystemInstructionSchema(ContentSchema):
    """The system instruction: parts (text); a role is ignored."""

    role = fields.String()


class GenerationConfigSchema(Schema):
    class Meta:
        unknown = INCLUDE

    temperature = StrictNumber(allow_none=True, validate=validate.Range(min=0, max=2))
    topP = StrictNumber(allow_none=True, validate=validate.Range(min=0, max=1))
    topK = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=1))
    candidateCount = fields.Integer(
        allow_none=True, strict=True, validate=validate.Range(min=1, max=MAX_CANDIDATES)
    )
    maxOutputTokens = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=1))
    stopSequences = fields.List(
        fields.String(), allow_none=True, validate=validate.Length(max=MAX_STOP_SEQUENCES)
    )
    presencePenalty = StrictNumber(allow_none=True, validate=validate.Range(min=-2, max=2))
    frequencyPenalty = StrictNumber(allow_none=True, validate=validate.Range(min=-2, max=2))
    seed = fields.Integer(allow_none=True, strict=True)
    responseMimeType = fields.String(allow_none=True, validate=validate.Length(max=128))
    responseSchema = fields.Dict(allow_none=True)
    responseJsonSchema = fields.Dict(allow_none=True)


def _function_name(value: str) -> None:
    # fullmatch: `$` would let a name end with a newline.
    if not FUNCTION_NAME_RE.fullmatch(value):
        raise ValidationError(
            "must start with a letter or _, then letters, digits, _ . : or -, at most 128"
        )


class FunctionDeclarationSchema(Schema):
    class Meta:
        unknown = INCLUDE

    name = fields.String(
        required=True,
        validate=_function_name,
        metadata={"pattern": FUNCTION_NAME_PATTERN, "description": "The function's name."},
    )
    description = fields.String(allow_none=True)
    parameters = fields.Dict(allow_none=True)
    parametersJsonSchema = fields.Dict(allow_none=True)


class ToolSchema(Schema):
    """A tool: function declarations, or a built-in tool (Google Search ...) for google
    deployments, which others drop with a warning."""

    class Meta:
        unknown = INCLUDE

    functionDeclarations = fields.List(
        fields.Nested(FunctionDeclarationSchema),
        allow_none=True,
        validate=validate.Length(max=MAX_FUNCTIONS),
    )


class FunctionCallingConfigSchema(Schema):
    class Meta:
        unknown = INCLUDE

    mode = fields.String(allow_none=True, validate=validate.OneOf(CALLING_MODES))
    allowedFunctionNames = fields.List(
        fields.String(validate=validate.Length(min=1)), allow_none=True
    )


class ToolConfigSchema(Schema):
    class Meta:
        unknown = INCLUDE

    functionCallingConfig = fields.Nested(FunctionCallingConfigSchema, allow_none=True)


class GenerateContentSchema(Schema):
    """POST /v1beta/models/{model}:generateContent (and :streamGenerateContent); the model is
    in the path. Fields not named here pass through to google deployments."""

    class Meta:
        unknown = INCLUDE

    contents = fields.List(
        fields.Nested(ContentSchema),
        required=True,
        validate=validate.Length(min=1, max=MAX_CONTENTS),
    )
    systemInstruction = fields.Nested(SystemInstructionSchema, allow_none=True)
    generationConfig = fields.Nested(GenerationConfigSchema, allow_none=True)
    tools = fields.List(fields.Nested(ToolSchema), allow_none=True)
    toolConfig = fields.Nested(ToolConfigSchema, allow_none=True)
    safetySettings = fields.List(fields.Dict(), allow_none=True)
    cachedContent = fields.String(allow_none=True)


class NamedGenerateContentSchema(GenerateContentSchema):
    """A GenerateContentRequest inside countTokens, which may name its model."""

    model = fields.String(allow_none=True, validate=validate.Length(max=256))


class GeminiCountTokensSchema(Schema):
    """POST /v1beta/models/{model}:countTokens: `contents`, or a whole `generateContentRequest`
    (to count its system instruction and tools too)."""

    class Meta:
        unknown = INCLUDE

    contents = fields.List(
        fields.Nested(ContentSchema), validate=validate.Length(min=1, max=MAX_CONTENTS)
    )
    generateContentRequest = fields.Nested(NamedGenerateContentSchema)

    @validates_schema
    def _one_of(self, data, **kwargs):
        if ("contents" in data) == ("generateContentRequest" in data):
            raise ValidationError("send contents or generateContentRequest (one of them)")


# What the schema-level check says, for the document.
COUNT_EXTRA = {
    "oneOf": [
        {"required": ["contents"], "not": {"required": ["generateContentRequest"]}},
        {"required": ["generateContentRequest"], "not": {"required": ["contents"]}},
    ]
}

GENERATE_CONTENT = GenerateContentSchema()
GEMINI_COUNT_TOKENS = GeminiCountTokensSchema()
