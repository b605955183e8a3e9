from rest_framework.exceptions import ValidationError
from rest_framework.pagination import LimitOffsetPagination


class DefaultPagination(LimitOffsetPagination):
    """``?limit=`` (1 to 500, default 50) and ``?offset=`` (0 to 10^9). Out-of-range or non-numeric
    values answer 400 instead of being silently replaced, as the schema says."""

    default_limit = 50
    max_limit = 500
    max_offset = 10**9

    def _parameter(self, request, name: str, minimum: int, maximum: int | None, default: int | None):
        values = request.query_params.getlist(name)
        if not values:
            return default
        if len(values) > 1:
            raise ValidationError({name: ["Give this parameter once."]})
        try:
            value = int(values[0])
        except ValueError:
            raise ValidationError({name: ["A valid integer is required."]})
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f"{minimum} or more"
            raise ValidationError({name: [f"Must be {bound}."]})
        return value

    def get_limit(self, request):
        return self._parameter(request, self.limit_query_param, 1, self.max_limit, self.default_limit)

    def get_offset(self, request):
        return self._parameter(request, self.offset_query_param, 0, self.max_offset, 0)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.limit_query_param:
                parameter["schema"].update({"minimum": 1, "maximum": self.max_limit, "default": self.default_limit})
            elif parameter["name"] == self.offset_query_param:
                parameter["schema"].update({"minimum": 0, "maximum": self.max_offset, "default": 0})
        return parameters
