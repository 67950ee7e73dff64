"""Helpers of the generated REST API: permissions, pagination, the CSV
renderer, the OpenAPI additions (each DeviceType's payload schemas) and the self-hosted API docs."""
