from django.apps import AppConfig

from . import strict


class ApiConfig(AppConfig):
    """Cross-cutting API rules every endpoint inherits (see ``config.api.strict``)."""

    name = "config.api"
    label = "sanduisan_api"

    def ready(self) -> None:
        strict.install()
