from decimal import Decimal


def jsonable(value):
    """Decimals as exact strings, datetimes as ISO 8601 with Z, recursively."""
    if isinstance(value, Decimal):
        return format(value, "f")  # never exponent notation ("0E-12")
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat().replace("+00:00", "Z")
    return value
