"""The OpenAPI schema at /api/schema/ (validated) with each type's payload schemas, and the docs UI at /api/docs/."""

import re

import pytest
from openapi_spec_validator import validate

from hubserver.api.openapi import payload_components, relocate
from hubserver.registry import registry
from tests.testapp.devices import Thermometer

pytestmark = pytest.mark.django_db


@pytest.fixture
def schema(admin_client):
    response = admin_client.get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()


@pytest.mark.slow  # validates the whole OpenAPI document
def test_schema_validates(schema):
    assert schema["openapi"].startswith("3.1")
    validate(schema)  # raises on any error


def test_schema_lists_every_types_endpoints(schema):
    for device_type, *_ in registry.all_with_models():
        name = device_type.type_name()
        for path in (
            f"/api/{name}/devices/",
            f"/api/{name}/devices/{{device_id}}/",
            f"/api/{name}/devices/{{device_id}}/readings/",
            f"/api/{name}/devices/{{device_id}}/provision/",
            f"/api/{name}/readings/",
            f"/api/{name}/readings/{{id}}/",
        ):
            assert path in schema["paths"], path
        # A type without commands has no commands/ endpoint.
        commands_path = f"/api/{name}/devices/{{device_id}}/commands/"
        assert (commands_path in schema["paths"]) == bool(device_type._commands), commands_path
    commands = schema["paths"]["/api/thermometer/devices/{device_id}/commands/"]
    assert set(commands) >= {"get", "post"}
    assert "202" in commands["post"]["responses"]
    assert "get" not in schema["paths"]["/api/thermometer/devices/{device_id}/provision/"]


def test_components_are_per_type(schema):
    components = schema["components"]["schemas"]
    for name in ("ThermometerDevice", "ThermometerReading", "HygrometerDevice", "HygrometerReading"):
        assert name in components
    device = components["ThermometerDevice"]["properties"]
    assert "mqtt_password_hash" not in device and "api_key" not in device
    assert device["status"]["readOnly"] and device["mqtt_username"]["readOnly"]
    assert {"mode", "setpoint"} <= set(device)
    assert {"temperature", "door_open", "label"} <= set(components["ThermometerReading"]["properties"])
    assert "humidity" in components["HygrometerReading"]["properties"]


def test_payload_schemas_are_in_the_schema(schema):
    components = schema["components"]["schemas"]
    data = components["ThermometerDataPayload"]
    expected = {k: v for k, v in Thermometer.data_schema().items() if k != "$schema"}
    assert data == expected
    assert components["ThermometerStatusPayload"]["properties"]["status"]["enum"]
    set_mode = components["ThermometerSetModeCommandPayload"]
    assert set_mode["properties"]["command"] == {"const": "set_mode"}
    assert set_mode["properties"]["payload"]["properties"]["mode"] == {"enum": ["auto", "manual"]}
    assert "correlation_id" in components["ThermometerSetModeReplyPayload"]["required"]
    assert "ThermometerRebootCommandPayload" in components and "HygrometerDataPayload" in components


def test_command_request_body_describes_each_command(schema):
    post = schema["paths"]["/api/thermometer/devices/{device_id}/commands/"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ThermometerCommandRequest"
    }
    alternatives = schema["components"]["schemas"]["ThermometerCommandRequest"]["oneOf"]
    by_name = {alt["properties"]["command"]["const"]: alt for alt in alternatives}
    assert set(by_name) == set(Thermometer._commands) == {"reboot", "set_mode"}
    assert by_name["set_mode"]["properties"]["payload"]["required"] == ["mode"]


def test_schema_as_yaml_by_default(admin_client):
    response = admin_client.get("/api/schema/")
    assert response.status_code == 200
    assert response.content.startswith(b"openapi: 3.1")


def test_relocate_rewrites_local_refs():
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": {"level": {"type": "integer"}},
        "properties": {"a": {"$ref": "#/$defs/level"}, "b": {"$ref": "https://example.test/x.json"}},
        "anyOf": [{"$ref": "#"}],
    }
    moved = relocate(schema, "#/components/schemas/X")
    assert "$schema" not in moved
    assert moved["properties"]["a"] == {"$ref": "#/components/schemas/X/$defs/level"}
    assert moved["properties"]["b"] == {"$ref": "https://example.test/x.json"}
    assert moved["anyOf"] == [{"$ref": "#/components/schemas/X"}]
    assert schema["properties"]["a"] == {"$ref": "#/$defs/level"}  # the original is untouched


@pytest.mark.slow  # validates whole OpenAPI documents
def test_command_params_with_local_refs_stay_valid(admin_client, monkeypatch):
    """A command whose params schema uses ``$defs`` still gives a schema whose references resolve."""
    from hubserver import Command

    command = Command(
        params={
            "$defs": {"seconds": {"type": "integer", "minimum": 1}},
            "type": "object",
            "properties": {"after": {"$ref": "#/$defs/seconds"}},
        }
    )
    command.name = "delayed_reboot"
    monkeypatch.setitem(Thermometer._commands, "delayed_reboot", command)
    assert "ThermometerDelayedRebootCommandPayload" in payload_components(Thermometer)
    schema = admin_client.get("/api/schema/?format=json").json()
    validate(schema)
    payload = schema["components"]["schemas"]["ThermometerDelayedRebootCommandPayload"]["properties"]["payload"]
    assert payload["properties"]["after"]["$ref"] == (
        "#/components/schemas/ThermometerDelayedRebootCommandPayload/properties/payload/$defs/seconds"
    )


def test_docs_page_is_self_hosted(client, admin_client):
    response = admin_client.get("/api/docs/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert "/api/schema/" in html
    sources = re.findall(r"<(?:script|link)[^>]+(?:src|href)=\"([^\"]+)\"", html)
    assert sources, html
    assert not [s for s in sources if re.match(r"(https?:)?//", s)], sources
    assert not re.search(r"https?://[^\"' ]*(cdn|jsdelivr|unpkg)", html)
    # Every asset the page loads is served by this process.
    for source in sources:
        asset = client.get(source)
        assert asset.status_code == 200, source
        assert b"".join(asset.streaming_content), source
        asset.close()


def test_docs_assets_stay_inside_the_swagger_dist(client):
    bundle = client.get("/api/docs/assets/swagger-ui-bundle.js")
    assert bundle["Content-Type"] in ("text/javascript", "application/javascript")
    bundle.close()
    assert client.get("/api/docs/assets/..%2F..%2F..%2F__init__.py").status_code == 404
    assert client.get("/api/docs/assets/swagger-ui-bundle.js.map").status_code == 404  # not one of the page's files
    assert client.get("/api/docs/assets/nope.js").status_code == 404
