"""The HTTP API's OpenAPI 3.1 document, generated from a descriptor set (`make proto`).

Every RPC with a `google.api.http` rule of the services the edge serves becomes an
operation, mapped as Envoy's gRPC-JSON transcoder maps it: path variables from the
template, the `body` field (or every other field for `*`) as the JSON body, and the
remaining fields as query parameters (nested messages as dotted names). Every operation
declares the errors the transcoder can answer, as `google.rpc.Status`; the bearer scheme
secures every operation but the public ones; operations whose request has a `request_id`
(AIP-155) take the `Idempotency-Key` header; and links lead from every response that
carries a resource to the operations on that resource's `{id}`, for stateful clients
and fuzzers.

Unknown JSON body fields are ignored by the transcoder, so request schemas do not set
`additionalProperties: false`: the document says what the edge does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2
from openapi_schemas import BEHAVIOR, Catalog, FieldProto, SchemaBuilder, behaviors, ref

# The one idempotency header (pi.platform.runtime.idempotency), 1 to 255 visible ASCII.
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Idempotency key (AIP-155), an alternative to the body's `requestId`: a "
    "retry with the same key and the same request replays the first response; the same "
    "key with a different request is a 409. Scoped to the merchant, kept 24 hours.",
    # Empty is the same as absent.
    "schema": {"type": "string", "maxLength": 255, "pattern": "^[!-~]*$"},
}
# HTTP status -> the gRPC codes (and edge replies) that produce it.
ERRORS: Mapping[str, str] = {
    "400": "INVALID_ARGUMENT (with google.rpc.BadRequest field violations), "
    "FAILED_PRECONDITION or OUT_OF_RANGE; also malformed JSON, an unknown query parameter "
    "or a bad path, answered by the edge.",
    "401": "UNAUTHENTICATED: the bearer token is missing, invalid, expired or revoked.",
    "403": "PERMISSION_DENIED: the credential may not make this call.",
    "404": "NOT_FOUND: no such object, or another merchant's.",
    "409": "ALREADY_EXISTS or ABORTED: the idempotency key was used for another request, or "
    "a concurrent request with the same key is in progress.",
    "413": "The request body is larger than 1 MiB (edge).",
    "429": "RESOURCE_EXHAUSTED: rate limited; retry after `Retry-After` seconds.",
    "500": "INTERNAL, UNKNOWN or DATA_LOSS: a fault of the platform.",
    "503": "UNAVAILABLE: a dependency is unavailable; retry with the same idempotency key.",
    "504": "DEADLINE_EXCEEDED: no answer in time; retry with the same idempotency key.",
}
_STATUS_SCHEMAS: dict[str, Any] = {
    "google.rpc.Status": {
        "type": "object",
        "required": ["code", "message", "details"],
        "properties": {
            "code": {"type": "integer", "format": "int32", "description": "gRPC status code."},
            "message": {"type": "string", "description": "Developer-facing error message."},
            "details": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/google.protobuf.Any"},
                "description": "google.rpc.ErrorInfo (stable `reason`, domain "
                "`pi.platform`) and, for invalid input, google.rpc.BadRequest field "
                "violations.",
            },
        },
        "description": "An error, as a google.rpc.Status.",
    },
    "google.protobuf.Any": {
        "type": "object",
        "required": ["@type"],
        "properties": {"@type": {"type": "string"}},
        "description": "A typed detail: `@type` names the message, e.g. "
        "`type.googleapis.com/google.rpc.ErrorInfo`; the other fields are its JSON.",
    },
}
_METHODS = ("get", "put", "post", "delete", "patch")


def render(
    files: descriptor_pb2.FileDescriptorSet,
    services: Iterable[str],
    public_methods: Iterable[str],
    constraints: Mapping[str, dict[str, Any]],
    info: dict[str, Any],
    *,
    unrouted: Iterable[str] = (),
) -> dict[str, Any]:
    """The document of `services` (full names); `public_methods` (full names) need no
    token; `unrouted` methods (full names), which the edge does not route, are left out."""
    catalog = Catalog(files)
    builder = SchemaBuilder(catalog, constraints)
    public = set(public_methods)
    hidden = set(unrouted)
    operations: list[_Operation] = []
    for service in services:
        if f".{service}" not in catalog.services:
            raise ValueError(f"service {service} is not in the descriptor set")
        _, proto = catalog.services[f".{service}"]
        for method in proto.method:
            if f"{service}.{method.name}" in hidden:
                continue
            rule = method.options.Extensions[annotations_pb2.http]
            for binding in (rule, *rule.additional_bindings):
                verb = binding.WhichOneof("pattern")
                if verb is None:
                    continue
                operations.append(_Operation(catalog, builder, service, method, binding))
    ids = _operation_ids(operations)
    paths: dict[str, dict[str, Any]] = {}
    for operation in operations:
        document = operation.render(ids[operation.key], operation.full_name in public)
        methods = paths.setdefault(operation.path, {})
        if operation.verb in methods:
            raise ValueError(f"{operation.verb.upper()} {operation.path} is bound twice")
        methods[operation.verb] = document
    _link(operations, ids, paths)
    unused = builder.unused_constraints()
    if unused:
        raise ValueError(f"constraints name no field of the API: {', '.join(unused)}")
    schemas = {**builder.schemas, **_STATUS_SCHEMAS}
    return {
        "openapi": "3.1.0",
        "info": info,
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "security": [{"bearer": []}],
        "paths": {path: paths[path] for path in sorted(paths)},
        "components": {
            "schemas": {name: schemas[name] for name in sorted(schemas)},
            "responses": {
                code: {
                    "description": text,
                    "content": {"application/json": {"schema": ref("google.rpc.Status")}},
                }
                for code, text in ERRORS.items()
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "`Authorization: Bearer <access token>` from "
                    "POST /v1/auth/token.",
                }
            },
        },
    }


class _Operation:
    """One HTTP binding of one RPC, as the transcoder maps it."""

    def __init__(
        self,
        catalog: Catalog,
        builder: SchemaBuilder,
        service: str,
        method: descriptor_pb2.MethodDescriptorProto,
        binding: http_pb2.HttpRule,
    ) -> None:
        self.catalog, self.builder = catalog, builder
        self.service, self.method = service, method
        self.full_name = f"{service}.{method.name}"
        self.key = (self.full_name, binding.SerializeToString(deterministic=True))
        verb = binding.WhichOneof("pattern")
        assert verb is not None
        template = binding.custom.path if verb == "custom" else getattr(binding, verb)
        self.verb = binding.custom.kind.lower() if verb == "custom" else verb
        self.path, self.path_fields = _path(template)
        self.body = binding.body
        self.request = method.input_type
        self.response = method.output_type
        self.response_field = binding.response_body

    def render(self, operation_id: str, public: bool) -> dict[str, Any]:
        parameters = [self._path_parameter(name) for name in self.path_fields]
        skip = {name.split(".")[0] for name in self.path_fields}
        body: dict[str, Any] | None = None
        # The transcoder reads an absent body as {}: it is required only if {} is refused.
        body_required = False
        if self.body == "*":
            body = self.builder.message(self.request, skip=frozenset(skip))
            body_required = bool(body.get("required"))
        elif self.body:
            field = self._field(self.request, self.body)
            body = self.builder.field(f"{self.request}.{self.body}", field)
            body_required = BEHAVIOR.REQUIRED in behaviors(field)
            skip.add(self.body)
        if self.body != "*":
            parameters += self._query_parameters(self.request, "", skip)
        if any(field.name == "request_id" for _, field in self.catalog.fields(self.request)):
            parameters.append(dict(IDEMPOTENCY_KEY))
        document: dict[str, Any] = {
            "operationId": operation_id,
            "tags": [self.service.rsplit(".", 1)[-1]],
            "summary": self.method.name,
        }
        comment = self.catalog.comments.get(self.full_name)
        if comment:
            document["description"] = comment
        if parameters:
            document["parameters"] = parameters
        if body is not None:
            document["requestBody"] = {
                "required": body_required,
                "content": {"application/json": {"schema": body}},
            }
        reply = ref(self.response)
        self.builder.type_schema(self.response)
        if self.response_field:
            reply = self.builder.field(
                f"{self.response}.{self.response_field}",
                self._field(self.response, self.response_field),
            )
        document["responses"] = {
            "200": {"description": "OK", "content": {"application/json": {"schema": reply}}},
            **{code: {"$ref": f"#/components/responses/{code}"} for code in ERRORS},
        }
        if public:
            document["security"] = []
        return document

    def _field(self, message: str, dotted: str) -> FieldProto:
        field: FieldProto | None = None
        for part in dotted.split("."):
            field = next((f for _, f in self.catalog.fields(message) if f.name == part), None)
            if field is None:
                raise ValueError(f"{self.full_name}: no field {dotted!r} in {message}")
            message = field.type_name
        assert field is not None
        return field

    def _path_parameter(self, dotted: str) -> dict[str, Any]:
        field = self._field(self.request, dotted)
        schema = self.builder.field(f"{self._owner(dotted)}.{field.name}", field)
        schema.pop("readOnly", None)
        schema.setdefault("minLength", 1)
        # The edge refuses an encoded slash or backslash in a path (400).
        schema.setdefault("pattern", r"^[^/\\]+$")
        return {"name": dotted, "in": "path", "required": True, "schema": schema}

    def _owner(self, dotted: str) -> str:
        message = self.request
        for part in dotted.split(".")[:-1]:
            message = self._field(message, part).type_name
        return message

    def _query_parameters(self, message: str, prefix: str, skip: set[str]) -> list[dict[str, Any]]:
        parameters: list[dict[str, Any]] = []
        for full_name, field in self.catalog.fields(message):
            if field.name in skip:
                continue
            is_message = field.type == FieldProto.TYPE_MESSAGE
            if is_message and self.catalog.is_map(field):
                continue  # the transcoder cannot bind a map from a query string
            schema = self.builder.field(full_name, field)
            if is_message and "$ref" in schema and field.label != FieldProto.LABEL_REPEATED:
                parameters += self._query_parameters(
                    field.type_name, f"{prefix}{field.json_name}.", set()
                )
                continue
            if schema.get("readOnly"):
                continue
            parameter: dict[str, Any] = {
                "name": f"{prefix}{field.json_name}",
                "in": "query",
                "required": False,
                "schema": schema,
            }
            if "description" in schema:
                parameter["description"] = schema.pop("description")
            parameters.append(parameter)
        return parameters


def _path(template: str) -> tuple[str, list[str]]:
    """OpenAPI path and variable names of a google.api.http template."""
    out, names, i = "", [], 0
    while i < len(template):
        if template[i] == "{":
            end = template.index("}", i)
            name = template[i + 1 : end].split("=", 1)[0]
            names.append(name)
            out += "{" + name + "}"
            i = end + 1
        else:
            out += template[i]
            i += 1
    return out, names


def _operation_ids(operations: list[_Operation]) -> dict[tuple[str, bytes], str]:
    """The RPC's name, qualified by its service (then numbered) only where names collide."""
    ids: dict[tuple[str, bytes], str] = {}
    counts: dict[str, int] = {}
    for operation in operations:
        counts[operation.method.name] = counts.get(operation.method.name, 0) + 1
    seen: dict[str, int] = {}
    for operation in operations:
        name = operation.method.name
        if counts[name] > 1:
            name = f"{operation.service.rsplit('.', 1)[-1]}_{name}"
        seen[name] = seen.get(name, 0) + 1
        ids[operation.key] = name if seen[name] == 1 else f"{name}_{seen[name]}"
    return ids


def _resources(catalog: Catalog, message: str) -> dict[str, str]:
    """Singular fields of a response that hold a resource with an `id`: json name -> type."""
    found: dict[str, str] = {}
    for _, field in catalog.fields(message):
        if field.type != FieldProto.TYPE_MESSAGE or field.label == FieldProto.LABEL_REPEATED:
            continue
        if field.type_name in catalog.messages and any(
            f.name == "id" for _, f in catalog.fields(field.type_name)
        ):
            found[field.json_name] = field.type_name
    return found


def _pages(operation: _Operation) -> bool:
    """A List method (AIP-158): `page_token` in, `next_page_token` out."""
    request = {field.name for _, field in operation.catalog.fields(operation.request)}
    reply = {field.name for _, field in operation.catalog.fields(operation.response)}
    return "page_token" in request and "next_page_token" in reply


def _link(
    operations: list[_Operation], ids: Mapping[tuple[str, bytes], str], paths: dict[str, Any]
) -> None:
    """Links from each response carrying a resource to every other operation on its `{id}`."""
    by_type: dict[str, list[_Operation]] = {}
    for operation in operations:
        if operation.path_fields == ["id"]:
            for resource in set(_resources(operation.catalog, operation.response).values()):
                by_type.setdefault(resource, []).append(operation)
    for source in operations:
        links: dict[str, Any] = {}
        for json_name, resource in _resources(source.catalog, source.response).items():
            for target in by_type.get(resource, []):
                if target is source:
                    continue
                links[ids[target.key]] = {
                    "operationId": ids[target.key],
                    "parameters": {"id": f"$response.body#/{json_name}/id"},
                    "description": f"The {resource.rsplit('.', 1)[-1]} in `{json_name}`.",
                }
        if _pages(source):
            links["nextPage"] = {
                "operationId": ids[source.key],
                "parameters": {
                    **{
                        p["name"]: f"$request.query.{p['name']}"
                        for p in paths[source.path][source.verb].get("parameters", [])
                        if p["in"] == "query" and p["name"] != "pageToken"
                    },
                    "pageToken": "$response.body#/nextPageToken",
                },
                "description": "The next page (AIP-158), with the same filters.",
            }
        if links:
            response = paths[source.path][source.verb]["responses"]["200"]
            response["links"] = {name: links[name] for name in sorted(links)}
