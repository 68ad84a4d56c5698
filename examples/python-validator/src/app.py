"""natsplug example plugin in Python: validates JSON request bodies.

`request_filter` checks the body of POST, PUT and PATCH requests (config key
`methods` changes that list) against a small JSON Schema subset and either
lets the request through (`next`) or answers the client itself (`end`):

* 415 when the request says its body is not JSON (`content-type` present
  and neither `application/json` nor `*/*+json`);
* 400 when the body is missing, empty, not UTF-8 or not parseable JSON;
* 422 when the JSON does not match the schema, with every reason listed.

The schema is the config value `schema` (a JSON document) or, when unset,
the built-in DEFAULT_SCHEMA below. Supported keywords: `type` (object,
array, string, integer, number, boolean, null), `required`, `properties`,
`additionalProperties` (false only), `minimum`, `maximum`, `minLength`,
`maxLength` and `enum`.

`init` reads the config once per instance and refuses a `schema` that is not
a JSON object, so a bad schema fails the load of the plugin instead of every
call. The component exports only `init` and `request-filter` (its world is
examples/python-validator/wit/world.wit).
"""

import json
import struct
from typing import Any, Iterator, List, NamedTuple, Optional, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types

VERSION = "1.0.0"

DEFAULT_SCHEMA: dict = {
    "type": "object",
    "required": ["name", "quantity"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "quantity": {"type": "integer", "minimum": 1},
    },
}

DEFAULT_METHODS = ("POST", "PUT", "PATCH")

# Header values are bytes in the contract.
JSON_HEADERS = [("content-type", b"application/json")]


class Settings(NamedTuple):
    schema: Any
    methods: Tuple[str, ...]


# The schema and method list of this instance: the defaults until `init`,
# which the host calls on every new instance before its first call, replaces
# them with those of the plugin's config (fixed for the life of an instance).
_settings = Settings(DEFAULT_SCHEMA, DEFAULT_METHODS)


def parse_settings(config: List[Tuple[str, str]]) -> Settings:
    """The settings of a config, or ValueError saying what is wrong."""
    entries = dict(config)
    schema: Any = DEFAULT_SCHEMA
    raw = entries.get("schema")
    if raw is not None:
        try:
            schema = json.loads(raw)
        except ValueError as error:
            raise ValueError(f"config `schema` is not valid JSON: {error}")
        if not isinstance(schema, dict):
            raise ValueError(
                f"config `schema` must be a JSON object, not {_type_name(schema)}"
            )
    methods = DEFAULT_METHODS
    methods_raw = entries.get("methods")
    if methods_raw is not None:
        methods = tuple(m.strip().upper() for m in methods_raw.split(",") if m.strip())
    return Settings(schema, methods)


def header_fields(buffer: bytes) -> Iterator[Tuple[bytes, bytes]]:
    """The (name, value) pairs of a header buffer, in order.

    The layout is the one documented at `type fields` in wit/plugin.wit: for
    each field, the name's length (u32, little endian), the name's bytes,
    the value's length (u32, little endian), the value's bytes.
    """
    view = memoryview(buffer)
    offset = 0
    while offset < len(view):
        parts = []
        for _ in range(2):
            if offset + 4 > len(view):
                raise ValueError("header buffer ends inside a length")
            (length,) = struct.unpack_from("<I", view, offset)
            offset += 4
            if offset + length > len(view):
                raise ValueError("header buffer ends inside a field")
            parts.append(bytes(view[offset : offset + length]))
            offset += length
        yield parts[0], parts[1]


def header(buffer: bytes, name: str) -> Optional[bytes]:
    """The value of the first field called `name` (compared
    case-insensitively), or None."""
    wanted = name.lower().encode("ascii")
    for key, value in header_fields(buffer):
        if key.lower() == wanted:
            return value
    return None


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _has_type(value: Any, wanted: str) -> bool:
    actual = _type_name(value)
    return actual == wanted or (wanted == "number" and actual == "integer")


def _characters(count: int) -> str:
    return f"{count} character" if count == 1 else f"{count} characters"


def _child(pointer: str, key: str) -> str:
    return pointer + "/" + key.replace("~", "~0").replace("/", "~1")


def validate(value: Any, schema: Any, pointer: str = "") -> List[dict]:
    """Every way `value` fails `schema`, as {"field", "message"} records;
    `field` is a JSON Pointer into the body ("" is the whole body)."""
    reasons: List[dict] = []

    def fail(field: str, message: str) -> None:
        reasons.append({"field": field, "message": message})

    if not isinstance(schema, dict):
        return reasons
    wanted = schema.get("type")
    if isinstance(wanted, str) and not _has_type(value, wanted):
        article = "an" if wanted[0] in "aeiou" else "a"
        fail(pointer, f"must be {article} {wanted}, not {_type_name(value)}")
        return reasons
    if "enum" in schema and isinstance(schema["enum"], list):
        if not any(_type_name(value) == _type_name(o) and value == o for o in schema["enum"]):
            choices = ", ".join(json.dumps(o) for o in schema["enum"])
            fail(pointer, f"must be one of {choices}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        minimum = schema.get("minimum")
        if isinstance(minimum, (int, float)) and value < minimum:
            fail(pointer, f"must be at least {minimum}")
        maximum = schema.get("maximum")
        if isinstance(maximum, (int, float)) and value > maximum:
            fail(pointer, f"must be at most {maximum}")
    if isinstance(value, str):
        min_length = schema.get("minLength")
        if isinstance(min_length, int) and len(value) < min_length:
            fail(pointer, f"must be at least {_characters(min_length)} long")
        max_length = schema.get("maxLength")
        if isinstance(max_length, int) and len(value) > max_length:
            fail(pointer, f"must be at most {_characters(max_length)} long")
    if isinstance(value, dict):
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            properties = {}
        for name in schema.get("required", []):
            if isinstance(name, str) and name not in value:
                fail(_child(pointer, name), "is required")
        for name, sub_schema in properties.items():
            if name in value:
                reasons.extend(validate(value[name], sub_schema, _child(pointer, name)))
        if schema.get("additionalProperties") is False:
            for name in value:
                if name not in properties:
                    fail(_child(pointer, name), "is not allowed")
    return reasons


def _is_json_media_type(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def _next() -> types.RequestDecision:
    return types.RequestDecision_Next(
        types.RequestChanges(headers=None, body=None, path=None)
    )


def _answer(status: int, payload: dict) -> types.RequestDecision:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return types.RequestDecision_End(
        types.LocalResponse(status=status, headers=JSON_HEADERS, body=body)
    )


def _reject(
    request: types.Request, status: int, payload: dict, reasons: int
) -> types.RequestDecision:
    host.log(
        host.Level.WARN,
        "rejected a request body",
        [
            ("method", host.Value_Text(request.method)),
            ("path", host.Value_Text(request.path)),
            ("status", host.Value_Integer(status)),
            ("reasons", host.Value_Integer(reasons)),
        ],
    )
    return _answer(status, payload)


def filter_request(request: types.Request) -> types.RequestDecision:
    schema, methods = _settings
    if request.method.upper() not in methods:
        return _next()

    content_type_bytes = header(request.headers, "content-type")
    if content_type_bytes is not None:
        content_type = content_type_bytes.decode("utf-8", errors="replace")
        if not _is_json_media_type(content_type):
            return _reject(
                request,
                415,
                {
                    "error": "unsupported_media_type",
                    "message": f"the body must be application/json, not {content_type}",
                },
                1,
            )
    if not request.body:
        return _reject(
            request,
            400,
            {"error": "malformed_json", "message": "a JSON body is required"},
            1,
        )
    try:
        document = json.loads(request.body.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as error:
        return _reject(
            request,
            400,
            {"error": "malformed_json", "message": f"the body is not valid JSON: {error}"},
            1,
        )
    reasons = validate(document, schema)
    if reasons:
        return _reject(
            request,
            422,
            {"error": "validation_failed", "reasons": reasons},
            len(reasons),
        )
    return _next()


def _no_constant(name: str) -> Any:
    # json.loads accepts NaN and Infinity; JSON does not.
    raise ValueError(f"{name} is not a JSON value")


class Init(exports.Init):
    def init(self, config: List[Tuple[str, str]]) -> types.PluginInfo:
        global _settings
        try:
            _settings = parse_settings(config)
        except ValueError as error:
            # The host fails the load: "plugin `NAME` refused its
            # configuration in `init`: <this message>".
            raise Err(str(error))
        return types.PluginInfo(version=VERSION)


class RequestFilter(exports.RequestFilter):
    def request_filter(
        self, ctx: types.Context, request: types.Request
    ) -> types.RequestDecision:
        return filter_request(request)
