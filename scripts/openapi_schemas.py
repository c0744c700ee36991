"""JSON Schemas (OpenAPI 3.1) of protobuf messages and enums, as proto3 JSON prints them.

Read from a descriptor set with source info (`generated/descriptors.binpb`), so that it
works for any proto content: field names are the `json_name` Envoy's transcoder uses,
`google.api.field_behavior` becomes `required` / `readOnly` / `writeOnly`, 64-bit
integers are strings with a pattern, enums list their names, and the comments become
descriptions. Bounds that a proto cannot state are added from the constraints file
(`protos/openapi-constraints.yaml`), keyed by the field's full name.
"""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Iterator, Mapping
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf import descriptor_pb2

FieldProto = descriptor_pb2.FieldDescriptorProto
BEHAVIOR = field_behavior_pb2.FieldBehavior

INT64_PATTERN = r"^-?[0-9]+$"
UINT64_PATTERN = r"^[0-9]+$"
_INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
_UINT32 = {"type": "integer", "format": "int32", "minimum": 0, "maximum": 2**32 - 1}
_SCALARS: Mapping[int, dict[str, Any]] = {
    FieldProto.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldProto.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldProto.TYPE_INT64: {"type": "string", "format": "int64", "pattern": INT64_PATTERN},
    FieldProto.TYPE_SINT64: {"type": "string", "format": "int64", "pattern": INT64_PATTERN},
    FieldProto.TYPE_SFIXED64: {"type": "string", "format": "int64", "pattern": INT64_PATTERN},
    FieldProto.TYPE_UINT64: {"type": "string", "format": "uint64", "pattern": UINT64_PATTERN},
    FieldProto.TYPE_FIXED64: {"type": "string", "format": "uint64", "pattern": UINT64_PATTERN},
    FieldProto.TYPE_INT32: _INT32,
    FieldProto.TYPE_SINT32: _INT32,
    FieldProto.TYPE_SFIXED32: _INT32,
    FieldProto.TYPE_UINT32: _UINT32,
    FieldProto.TYPE_FIXED32: _UINT32,
    FieldProto.TYPE_BOOL: {"type": "boolean"},
    FieldProto.TYPE_STRING: {"type": "string"},
    FieldProto.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}
# Well-known types have their own JSON form (protobuf's JSON mapping).
_WELL_KNOWN: Mapping[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BytesValue": {"type": "string", "contentEncoding": "base64"},
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.DoubleValue": {"type": "number"},
    "google.protobuf.FloatValue": {"type": "number"},
    "google.protobuf.Int32Value": _INT32,
    "google.protobuf.UInt32Value": _UINT32,
    "google.protobuf.Int64Value": _SCALARS[FieldProto.TYPE_INT64],
    "google.protobuf.UInt64Value": _SCALARS[FieldProto.TYPE_UINT64],
}
# descriptor.proto paths of source locations (see SourceCodeInfo.Location.path).
_MESSAGE, _ENUM, _SERVICE = 4, 5, 6
_FIELD, _NESTED, _NESTED_ENUM, _VALUE, _METHOD = 2, 3, 4, 2, 2


def schema_name(full_name: str) -> str:
    """Component name of a message or enum: its full proto name, e.g. pi.payments.v1.Payment."""
    return full_name.lstrip(".")


def ref(full_name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{schema_name(full_name)}"}


def describe(comment: str) -> str:
    """A proto comment as a description: lines joined, surrounding blanks dropped."""
    paragraphs = [" ".join(part.split()) for part in comment.strip().split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p)


class Catalog:
    """Every message, enum and service of a descriptor set, with its comment."""

    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.services: dict[str, tuple[str, descriptor_pb2.ServiceDescriptorProto]] = {}
        self.comments: dict[str, str] = {}
        for file in files.file:
            self._add_file(file)

    def _add_file(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        located = {
            tuple(loc.path): loc.leading_comments
            for loc in file.source_code_info.location
            if loc.leading_comments
        }
        scope = f".{file.package}" if file.package else ""
        for i, message in enumerate(file.message_type):
            self._add_message(f"{scope}.{message.name}", message, (_MESSAGE, i), located)
        for i, enum in enumerate(file.enum_type):
            self._add_enum(f"{scope}.{enum.name}", enum, (_ENUM, i), located)
        for i, service in enumerate(file.service):
            name = f"{scope}.{service.name}"
            self.services[name] = (file.name, service)
            self._comment(name, located, (_SERVICE, i))
            for j, method in enumerate(service.method):
                self._comment(f"{name}.{method.name}", located, (_SERVICE, i, _METHOD, j))

    def _add_message(
        self,
        name: str,
        message: descriptor_pb2.DescriptorProto,
        path: tuple[int, ...],
        located: Mapping[tuple[int, ...], str],
    ) -> None:
        self.messages[name] = message
        self._comment(name, located, path)
        for j, field in enumerate(message.field):
            self._comment(f"{name}.{field.name}", located, (*path, _FIELD, j))
        for j, nested in enumerate(message.nested_type):
            self._add_message(f"{name}.{nested.name}", nested, (*path, _NESTED, j), located)
        for j, enum in enumerate(message.enum_type):
            self._add_enum(f"{name}.{enum.name}", enum, (*path, _NESTED_ENUM, j), located)

    def _add_enum(
        self,
        name: str,
        enum: descriptor_pb2.EnumDescriptorProto,
        path: tuple[int, ...],
        located: Mapping[tuple[int, ...], str],
    ) -> None:
        self.enums[name] = enum
        self._comment(name, located, path)
        for j, value in enumerate(enum.value):
            self._comment(f"{name}.{value.name}", located, (*path, _VALUE, j))

    def _comment(
        self, name: str, located: Mapping[tuple[int, ...], str], path: tuple[int, ...]
    ) -> None:
        if path in located:
            self.comments[name] = describe(located[path])

    def fields(self, message_name: str) -> Iterator[tuple[str, FieldProto]]:
        """(full field name, field) of a message, in declaration order."""
        for field in self.messages[message_name].field:
            yield f"{message_name}.{field.name}", field

    def is_map(self, field: FieldProto) -> bool:
        if field.type != FieldProto.TYPE_MESSAGE:
            return False
        return self.messages[field.type_name].options.map_entry


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """proto3 JSON reads `null` as the field's default: an optional field accepts it."""
    if "$ref" in schema:
        rest = {key: value for key, value in schema.items() if key != "$ref"}
        return {"anyOf": [{"$ref": schema["$ref"]}, {"type": "null"}], **rest}
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    if isinstance(kind, list):
        return {**schema, "type": [*kind, "null"]}
    return schema


def expand(constraint: Mapping[str, Any]) -> dict[str, Any]:
    """JSON Schema keywords of a constraint; `x-text` becomes a `pattern` (text_pattern)."""
    out = {key: value for key, value in constraint.items() if key != "x-text"}
    if "x-text" in constraint:
        out["pattern"] = text_pattern(**constraint["x-text"])
    for key in ("additionalProperties", "propertyNames"):
        if isinstance(out.get(key), dict):
            out[key] = expand(out[key])
    return out


def _not_default(field: FieldProto, schema: Mapping[str, Any]) -> dict[str, Any]:
    """A REQUIRED scalar is set: proto3 cannot tell its default value from "not sent"."""
    if field.type == FieldProto.TYPE_STRING:
        return {"minLength": 1}
    if field.type == FieldProto.TYPE_ENUM and "$ref" in schema:
        return {"not": {"enum": ["__UNSPECIFIED__"]}}  # replaced by the enum's zero name
    if field.type == FieldProto.TYPE_BOOL:
        return {"const": True}
    if schema.get("type") == "string" and "pattern" in schema:
        return {"not": {"pattern": "^-?0*$"}}
    if schema.get("type") in ("integer", "number"):
        return {"not": {"const": 0}}
    return {}


def text_pattern(
    forbid: list[str],
    *,
    allow: str = "",
    trimmed: bool = False,
    nonblank: bool = False,
    empty: bool = False,
) -> str:
    """A regex for text without characters of the Unicode categories `forbid`.

    `trimmed`: no whitespace (`str.strip`) at either end; `nonblank`: some character is
    not whitespace; both refuse "" unless `empty`. Characters are written literally
    inside the classes, which every regex dialect reads alike.
    """
    excluded = [
        c
        for c in map(chr, range(sys.maxunicode + 1))
        if unicodedata.category(c) in forbid and c not in allow and unicodedata.category(c) != "Cs"
    ]
    spaces = [c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace() and c not in excluded]
    body = f"[^{_ranges(excluded)}]"
    solid = f"[^{_ranges(sorted(excluded + spaces))}]"
    if trimmed:
        text = f"{solid}(?:{body}*{solid})?"
    elif nonblank:
        text = f"{body}*{solid}{body}*"
    else:
        return f"^{body}*$"
    return f"^(?:{text})?$" if empty else f"^{text}$"


def _ranges(chars: list[str]) -> str:
    out: list[str] = []
    codes = sorted(set(map(ord, chars)))
    start = previous = codes[0]
    for code in [*codes[1:], -1]:
        if code == previous + 1:
            previous = code
            continue
        first, last = _literal(chr(start)), _literal(chr(previous))
        out.append(first if start == previous else f"{first}-{last}")
        start = previous = code
    return "".join(out)


def _literal(char: str) -> str:
    return "\\" + char if char in "\\]^-[" else char


def behaviors(field: FieldProto) -> set[int]:
    return set(field.options.Extensions[field_behavior_pb2.field_behavior])


class SchemaBuilder:
    """Builds components/schemas for the messages an API reaches, with constraints."""

    def __init__(self, catalog: Catalog, constraints: Mapping[str, dict[str, Any]]) -> None:
        self.catalog = catalog
        self.constraints = dict(constraints)
        self.schemas: dict[str, dict[str, Any]] = {}
        self.used_constraints: set[str] = set()

    def type_schema(self, type_name: str) -> dict[str, Any]:
        """A $ref to the component of a message or enum (built on first use)."""
        name = schema_name(type_name)
        if name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[name])
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder first: messages may be recursive
            if type_name in self.catalog.enums:
                self.schemas[name] = self._enum(type_name)
            else:
                self.schemas[name] = self.message(type_name)
        return ref(type_name)

    def message(self, type_name: str, *, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
        """Object schema of a message; `skip` drops fields (bound from the path)."""
        properties: dict[str, Any] = {}
        required: list[str] = []
        for full_name, field in self.catalog.fields(type_name):
            if field.name in skip:
                continue
            properties[field.json_name] = self.field(full_name, field)
            if BEHAVIOR.REQUIRED in behaviors(field):
                required.append(field.json_name)
        # The transcoder ignores unknown fields but refuses an empty name.
        schema: dict[str, Any] = {
            "type": "object",
            "properties": properties,
            "propertyNames": {"minLength": 1},
        }
        if required:
            schema["required"] = required
        exclusive = self._oneof_exclusions(type_name, skip)
        if exclusive:
            schema["allOf"] = exclusive
        key = schema_name(type_name)
        if key in self.constraints:
            self.used_constraints.add(key)
            for name, value in self.constraints[key].items():
                if name == "allOf":
                    schema.setdefault("allOf", []).extend(value)
                else:
                    schema[name] = value
        comment = self.catalog.comments.get(type_name)
        if comment:
            schema["description"] = comment
        return schema

    def _oneof_exclusions(self, type_name: str, skip: frozenset[str]) -> list[dict[str, Any]]:
        """At most one member of each (non-synthetic) oneof may be set."""
        message = self.catalog.messages[type_name]
        groups: dict[int, list[str]] = {}
        for field in message.field:
            if (
                field.HasField("oneof_index")
                and not field.proto3_optional
                and field.name not in skip
            ):
                groups.setdefault(field.oneof_index, []).append(field.json_name)
        return [
            {"not": {"required": [a, b]}}
            for members in groups.values()
            for i, a in enumerate(members)
            for b in members[i + 1 :]
        ]

    def field(self, full_name: str, field: FieldProto) -> dict[str, Any]:
        schema = self._value(field)
        if field.label == FieldProto.LABEL_REPEATED and not self.catalog.is_map(field):
            schema = {"type": "array", "items": schema}
        found = behaviors(field)
        if BEHAVIOR.REQUIRED in found and field.label != FieldProto.LABEL_REPEATED:
            schema.update(_not_default(field, schema))
            if field.type == FieldProto.TYPE_ENUM and field.type_name in self.catalog.enums:
                zero = self.catalog.enums[field.type_name].value[0]
                schema["not"] = {"enum": [zero.name, zero.number]}
        if BEHAVIOR.OUTPUT_ONLY in found:
            schema["readOnly"] = True
        if BEHAVIOR.INPUT_ONLY in found:
            schema["writeOnly"] = True
        if BEHAVIOR.REQUIRED not in found and BEHAVIOR.OUTPUT_ONLY not in found:
            schema = _nullable(schema)
        key = schema_name(full_name)
        if key in self.constraints:
            self.used_constraints.add(key)
            schema.update(expand(self.constraints[key]))
        comment = self.catalog.comments.get(full_name)
        if comment:
            schema["description"] = comment
        return schema

    def _value(self, field: FieldProto) -> dict[str, Any]:
        if self.catalog.is_map(field):
            entry = self.catalog.messages[field.type_name]
            key, value = entry.field[0], entry.field[1]
            schema: dict[str, Any] = {"type": "object", "additionalProperties": self._value(value)}
            if key.type != FieldProto.TYPE_STRING:
                schema["propertyNames"] = {"pattern": INT64_PATTERN}
            return schema
        if field.type in (FieldProto.TYPE_MESSAGE, FieldProto.TYPE_ENUM, FieldProto.TYPE_GROUP):
            return self.type_schema(field.type_name)
        return dict(_SCALARS[field.type])

    def _enum(self, type_name: str) -> dict[str, Any]:
        values = self.catalog.enums[type_name].value
        lines = []
        for value in values:
            comment = self.catalog.comments.get(f"{type_name}.{value.name}", "")
            lines.append(f"- `{value.name}`: {comment}".rstrip(": "))
        description = self.catalog.comments.get(type_name, "")
        # JSON prints the name; a request may also send the number.
        return {
            "type": ["string", "integer"],
            "enum": [*(value.name for value in values), *(value.number for value in values)],
            "description": "\n".join([description, "", *lines]).strip(),
        }

    def unused_constraints(self) -> list[str]:
        """Constraint keys that named no field reached by the API (typos, removed fields)."""
        return sorted(set(self.constraints) - self.used_constraints)
