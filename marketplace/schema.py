"""OpenAPI description of API-key authentication (imported by the app config)."""
from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "marketplace.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "bearerFormat": "sds_<prefix>_<secret>",
                "description": "An organisation's API key: `Authorization: Bearer sds_...`"}
