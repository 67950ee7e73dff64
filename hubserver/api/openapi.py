"""What the OpenAPI schema says beyond the serializers: each DeviceType's MQTT payload schemas.

``add_payload_schemas`` is a drf-spectacular post-processing hook that adds, per type with models, the
components ``<Type>DataPayload``, ``<Type>StatusPayload`` and, per command, ``<Type><Command>CommandPayload``
(the message the hub publishes on ``cmd``) and ``<Type><Command>ReplyPayload`` (what the device answers on
``reply``), from ``DeviceType.data_schema()``, ``status_schema()`` and ``command_schemas()``. The request body
of ``POST .../commands/`` is described by ``CommandRequestExtension``: one alternative per command, each with
that command's params schema.

The schemas are JSON Schema 2020-12, which OpenAPI 3.1 schema objects are; the hub serves its schema as 3.1.
"""

from drf_spectacular.extensions import OpenApiSerializerExtension

from ..registry import registry

COMPONENT_PREFIX = "#/components/schemas/"


def camel(name):
    """``set_mode`` -> ``SetMode``."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)


def relocate(schema, pointer):
    """A copy of ``schema`` without ``$schema``, its local ``$ref``s (``#/...``) rewritten to start at
    ``pointer``: the JSON pointer (``#/components/...``) where the schema is placed in the OpenAPI document."""

    def walk(node):
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "$schema":
                    continue
                if key == "$ref" and isinstance(value, str) and value.startswith("#"):
                    out[key] = pointer + value[1:]
                else:
                    out[key] = walk(value)
            return out
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return walk(schema)


def payload_components(device_type):
    """``{component name: schema}`` of one type's MQTT payloads."""
    base = device_type.__name__
    parts = {f"{base}DataPayload": device_type.data_schema(), f"{base}StatusPayload": device_type.status_schema()}
    components = {name: relocate(schema, COMPONENT_PREFIX + name) for name, schema in parts.items()}
    for name, spec in device_type.command_schemas().items():
        command_name = f"{base}{camel(name)}CommandPayload"
        envelope = relocate({"description": spec["description"], **spec["command"]}, COMPONENT_PREFIX + command_name)
        # The params schema's own "#" is its root, now at properties/payload of the envelope.
        params = device_type._commands[name].json_schema()
        envelope["properties"]["payload"] = relocate(params, f"{COMPONENT_PREFIX}{command_name}/properties/payload")
        components[command_name] = envelope
        reply_name = f"{base}{camel(name)}ReplyPayload"
        components[reply_name] = relocate(spec["reply"], COMPONENT_PREFIX + reply_name)
    return components


def add_payload_schemas(result, generator=None, request=None, public=False, **kwargs):
    """Post-processing hook: add every registered type's payload schemas to ``components.schemas``."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    for device_type, *_ in registry.all_with_models():
        schemas.update(payload_components(device_type))
    return result


def command_request_schema(device_type, pointer):
    """The body of ``POST .../commands/``: ``{"command": name, "payload": {...}}``, one alternative per command."""
    alternatives = []
    for index, (name, command) in enumerate(device_type._commands.items()):
        alternatives.append(
            {
                "title": name,
                "description": command.description,
                "type": "object",
                "properties": {
                    "command": {"const": name},
                    "payload": relocate(command.json_schema(), f"{pointer}/oneOf/{index}/properties/payload"),
                },
                "required": ["command"],
            }
        )
    if not alternatives:
        return {
            "type": "object",
            "description": f"{device_type.__name__} declares no commands.",
            "properties": {"command": {"type": "string"}, "payload": {"type": "object"}},
            "required": ["command"],
        }
    return {"oneOf": alternatives}


class CommandRequestExtension(OpenApiSerializerExtension):
    """Describes each type's generated ``CommandRequestSerializer`` with its commands' params schemas."""

    target_class = "hubserver.generators.serializers.CommandRequestSerializer"
    match_subclasses = True

    def _class(self):
        return self.target if isinstance(self.target, type) else type(self.target)

    def get_name(self, auto_schema, direction):
        return self._class().__name__.removesuffix("Serializer")

    def map_serializer(self, auto_schema, direction):
        device_type = self._class().device_type
        name = self.get_name(auto_schema, direction)
        return command_request_schema(device_type, COMPONENT_PREFIX + name)
