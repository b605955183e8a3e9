import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_the_openapi_schema_validates_without_warnings(tmp_path):
    # every endpoint documents its request and response, with unambiguous operation ids and enums
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yml"))
    assert "/api/v1/invoices/{invoice_id}/document" in (tmp_path / "schema.yml").read_text()
