"""Every JSON request body of this API is an object; ``null``, a list or a bare value is refused
with a 400 here, once for every endpoint, instead of being read as "no data" by some views."""
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class ObjectJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        if not isinstance(data, dict):
            raise ParseError(f"The JSON body must be an object, not {type(data).__name__}.")
        return data
