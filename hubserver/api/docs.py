"""The OpenAPI schema view and a browsable UI (Swagger UI) whose assets this process serves itself.

The Swagger UI files come from the ``drf-spectacular-sidecar`` package and are served under
``api/docs/assets/``, so the docs page loads nothing from a CDN and works on a hub without internet access.
"""

from pathlib import Path

from django.http import Http404
from django.urls import reverse
from django.views.static import serve
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from .openapi import add_payload_schemas

SCHEMA_URL_NAME = "hub-api-schema"
DOCS_URL_NAME = "hub-api-docs"
ASSET_URL_NAME = "hub-api-docs-asset"
ASSETS = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "favicon-32x32.png"})


def _swagger_dist():
    import drf_spectacular_sidecar

    return (
        Path(drf_spectacular_sidecar.__file__).resolve().parent
        / "static"
        / "drf_spectacular_sidecar"
        / "swagger-ui-dist"
    )


class HubSchemaGenerator(SchemaGenerator):
    """drf-spectacular's generator plus every DeviceType's payload schemas (``add_payload_schemas``)."""

    def get_schema(self, request=None, public=False):
        return add_payload_schemas(super().get_schema(request=request, public=public))


class HubSchemaView(SpectacularAPIView):
    """``GET api/schema/``: the OpenAPI 3.1 document (the payload schemas are JSON Schema 2020-12), YAML by
    default, JSON with ``?format=json``."""

    generator_class = HubSchemaGenerator
    custom_settings = {"OAS_VERSION": "3.1.0"}


class HubDocsView(SpectacularSwaggerView):
    """``GET api/docs/``: Swagger UI on the schema, with its JavaScript and CSS served by this process."""

    url_name = SCHEMA_URL_NAME

    @staticmethod
    def _swagger_ui_resource(filename):
        return reverse(ASSET_URL_NAME, args=[filename])

    @staticmethod
    def _swagger_ui_favicon():
        return reverse(ASSET_URL_NAME, args=["favicon-32x32.png"])


def docs_asset(request, name):
    """One of the Swagger UI files the docs page loads, from the sidecar package; 404 for any other name."""
    if name not in ASSETS:
        raise Http404(name)
    return serve(request, name, document_root=str(_swagger_dist()))
