"""Input limits on every endpoint (config.api.limits, config.api.strict, config.api.throttling):
oversized bodies 413, over-deep or non-object JSON 400, unknown fields and wrong JSON types 400
naming the field, out-of-range dates 400, the listing horizon, rate limits 429 with Retry-After,
and the statement timeout 503 — all in the one error shape."""
import json
import time
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import OperationalError, connection
from django.http import HttpResponse
from django.test import override_settings
from rest_framework.test import APIClient

from config.api.errors import exception_handler
from config.api.limits import ApiRequestLimitsMiddleware, json_depth_exceeds, statement_timeout

from tests.factories import NodeFactory, next_hour
from tests.marketplace.helpers import assert_error, card_hours_body, iso, listing_body

pytestmark = pytest.mark.django_db

USAGE_EVENT = "/api/v1/usage-events"
USAGE_BATCH = "/api/v1/usage-events/batch"


def _post_raw(client, path: str, body: bytes, method: str = "post"):
    return getattr(client, method)(path, data=body, content_type="application/json")


@pytest.mark.parametrize("path", ["/api/v1/orders", "/api/v1/quotes", USAGE_EVENT, USAGE_BATCH, "/api/v1/nodes"])
def test_a_body_over_the_limit_answers_413_on_every_endpoint_including_the_usage_fast_path(supplier_client, path):
    # given a 2 MB JSON body (the limit is 1 MiB)
    body = json.dumps({"events": [], "padding": "x" * (2 * 1024 * 1024)}).encode()
    # when it is posted, then 413 in the error shape, before any parsing
    assert_error(_post_raw(supplier_client, path, body), 413, code="payload_too_large")


@override_settings(SANDUISAN_MAX_BODY_BYTES=1000)
def test_the_body_limit_is_checked_on_patch_too(supplier_client):
    node = NodeFactory(organisation=supplier_client.organisation)
    body = json.dumps({"name": "x" * 2000}).encode()
    assert_error(_post_raw(supplier_client, f"/api/v1/nodes/{node.pk}", body, method="patch"), 413,
                 code="payload_too_large")


@pytest.mark.parametrize("depth", [33, 1000, 100_000])
@pytest.mark.parametrize("path", ["/api/v1/orders", USAGE_EVENT, USAGE_BATCH])
def test_over_deep_json_answers_400_malformed_request(supplier_client, path, depth):
    body = b"[" * depth + b"]" * depth
    assert_error(_post_raw(supplier_client, path, body), 400, code="malformed_request")
    nested = ('{"a":' * depth + "1" + "}" * depth).encode()
    assert_error(_post_raw(supplier_client, path, nested), 400, code="malformed_request")


def test_depth_counts_structure_not_brackets_inside_strings():
    assert not json_depth_exceeds(json.dumps({"text": "[" * 500}).encode(), limit=32)
    assert not json_depth_exceeds(json.dumps({"a": [[{"b": [1]}]] * 200}).encode(), limit=32)
    assert json_depth_exceeds(json.dumps([[[[1]]]]).encode(), limit=3)
    assert not json_depth_exceeds(json.dumps([[[1]]]).encode(), limit=3)
    assert not json_depth_exceeds(b'{"s": "\\"[[[[[["}', limit=1)


@pytest.mark.parametrize("body", [b"null", b"[]", b"3", b'"text"'])
def test_a_body_that_is_not_a_json_object_answers_400(buyer_client, body):
    assert_error(_post_raw(buyer_client, "/api/v1/orders", body), 400, code="malformed_request")
    assert_error(_post_raw(buyer_client, "/api/v1/invoices", body), 400, code="malformed_request")


def test_unknown_fields_are_refused_naming_each_of_them(buyer_client):
    # given an order with a typo at the top and an unknown key inside the window
    body = card_hours_body(placment="same_fabric")
    body["window"]["timezone"] = "Asia/Shanghai"
    # when it is posted, then 400 naming both, and nothing was created
    error = assert_error(buyer_client.post("/api/v1/orders", body, format="json"), 400, code="validation_error")
    assert set(error["fields"]) == {"placment", "window.timezone"}
    assert buyer_client.get("/api/v1/orders").json()["count"] == 0


def test_unknown_fields_are_refused_by_the_hand_written_usage_parser(supplier_client):
    event = {"event_id": "e1", "allocation": 1, "occurred_at": iso(next_hour(-1)), "output_tokns": 5}
    assert_error(supplier_client.post(USAGE_EVENT, event, format="json"), 400, field="output_tokns")
    assert_error(supplier_client.post(USAGE_BATCH, {"events": [event]}, format="json"), 400,
                 field="events.0.output_tokns")
    assert_error(supplier_client.post(USAGE_BATCH, {"events": [], "dry_run": True}, format="json"), 400,
                 field="dry_run")


def test_json_types_are_what_the_schema_says(supplier_client):
    body = {"name": 7, "chip": "nvidia-h800-sxm", "card_count": "8", "region": "CN-GZ", "interconnect": "roce"}
    error = assert_error(supplier_client.post("/api/v1/nodes", body, format="json"), 400)
    assert set(error["fields"]) == {"name", "card_count"}


@pytest.mark.parametrize("price", ["1e3", " 5", "5.", "-1", "0", "0.0000001", "100000.5", 12.5])
def test_decimals_are_strings_in_the_published_pattern(buyer_client, price):
    body = card_hours_body(max_price_per_card_hour=price)
    assert_error(buyer_client.post("/api/v1/quotes", body, format="json"), 400, field="max_price_per_card_hour")


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00Z", "9999-12-31T23:00:00Z", "1999-12-31T23:00:00Z"])
def test_dates_out_of_range_answer_400_everywhere(supplier_client, client_for, moment):
    buyer = client_for(is_supplier=False, is_buyer=True)
    for side, client in (("buyer", buyer), ("supplier", supplier_client)):
        assert_error(client.get(f"/api/v1/figures/{side}", {"end": moment}), 400, field="end")
        assert_error(client.get(f"/api/v1/figures/{side}", {"start": moment}), 400, field="start")
    order = card_hours_body()
    order["window"]["earliest_start"] = moment
    assert_error(buyer.post("/api/v1/orders", order, format="json"), 400, field="window.earliest_start")
    node = NodeFactory(organisation=supplier_client.organisation)
    assert_error(supplier_client.post("/api/v1/listings", listing_body(node.pk, start=moment), format="json"), 400,
                 field="start")
    event = {"event_id": "e1", "allocation": 1, "occurred_at": moment}
    assert_error(supplier_client.post(USAGE_EVENT, event, format="json"), 400, field="occurred_at")
    assert_error(buyer.post("/api/v1/invoices", {"period_end": moment}, format="json"), 400, field="period_end")


def test_an_empty_query_value_for_a_date_is_refused_not_ignored(buyer_client):
    assert_error(buyer_client.get("/api/v1/figures/buyer?start="), 400, field="start")


def test_listings_start_within_the_horizon(supplier_client):
    # given a node
    node = NodeFactory(organisation=supplier_client.organisation)
    # when a listing starts beyond 365 days, then 400 on start; within it, created
    far = next_hour(24 * 366)
    body = listing_body(node.pk, start=iso(far), end=iso(far + timedelta(hours=2)))
    assert_error(supplier_client.post("/api/v1/listings", body, format="json"), 400, field="start")
    near = next_hour(24 * 364)
    body = listing_body(node.pk, start=iso(near), end=iso(near + timedelta(hours=2)))
    assert supplier_client.post("/api/v1/listings", body, format="json").status_code == 201


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "limit=x", "offset=-1", "offset=null", "offset=1&offset=2",
                                   "status=", "status=nonsense", "kind="])
def test_list_parameters_outside_their_schema_answer_400(buyer_client, query):
    assert_error(buyer_client.get(f"/api/v1/orders?{query}"), 400)


def test_free_text_filters_take_any_text(supplier_client):
    assert supplier_client.get("/api/v1/nodes?fabric_id=").status_code == 200
    assert_error(supplier_client.get("/api/v1/chips?domestic=null"), 400, field="domestic")
    assert supplier_client.get("/api/v1/chips?domestic=true").status_code == 200


@override_settings(SANDUISAN_THROTTLE_RATES={"api": "3/minute", "anon": "2/minute", "usage": "5/minute"})
def test_rate_limits_per_key_answer_429_with_retry_after_and_usage_has_its_own(supplier_client, client_for):
    # given a fresh minute window (a test started at hh:mm:59 would straddle two)
    if time.time() % 60 > 55:
        time.sleep(61 - time.time() % 60)
    other = client_for(organisation=supplier_client.organisation)
    # when one key calls four times
    statuses = [supplier_client.get("/api/v1/me").status_code for _ in range(4)]
    # then the fourth is refused with Retry-After, in the error shape
    assert statuses == [200, 200, 200, 429]
    refused = supplier_client.get("/api/v1/me")
    error = assert_error(refused, 429, code="throttled")
    assert 0 < int(refused["Retry-After"]) <= 60, error
    # and another key of the same organisation has its own count, as does usage ingestion
    assert other.get("/api/v1/me").status_code == 200
    batch = [supplier_client.post(USAGE_BATCH, {"events": []}, format="json").status_code for _ in range(6)]
    assert batch == [400] * 5 + [429]


@override_settings(SANDUISAN_THROTTLE_RATES={"api": "3/minute", "anon": "2/minute", "usage": "5/minute"})
def test_anonymous_calls_are_limited_per_ip():
    cache.delete_many([f"throttle:anon:ip:10.9.8.7:{int(time.time() // 60) + d}" for d in (0, 1)])
    if time.time() % 60 > 55:
        time.sleep(61 - time.time() % 60)
    client = APIClient(REMOTE_ADDR="10.9.8.7")
    assert [client.get("/api/v1/").status_code for _ in range(3)] == [200, 200, 429]
    assert APIClient(REMOTE_ADDR="10.9.8.6").get("/api/v1/").status_code == 200


def test_a_statement_cut_off_by_the_timeout_answers_503_in_the_error_shape(rf):
    # given a statement longer than the timeout
    with pytest.raises(OperationalError) as cut_off:
        with statement_timeout(50), connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(1)")
    # then the handler answers 503 statement_timeout, and the session is back to no timeout
    response = exception_handler(cut_off.value, {"request": rf.get("/api/v1/figures/buyer")})
    assert response.status_code == 503 and response.data["error"]["code"] == "statement_timeout"


def _show_timeout() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        return cursor.fetchone()[0]


@override_settings(SANDUISAN_STATEMENT_TIMEOUT_MS=1234)
def test_api_requests_run_under_the_statement_timeout_and_other_requests_do_not(rf):
    # given a view that reports the session's timeout, behind the middleware
    seen = []

    def view(request):
        seen.append(_show_timeout())
        return HttpResponse()

    middleware = ApiRequestLimitsMiddleware(view)
    # when an API request and a non-API request pass through it
    middleware(rf.get("/api/v1/me"))
    middleware(rf.get("/dashboard/"))
    # then only the API request ran under the timeout, and the session is back to none
    assert seen == ["1234ms", "0"]
    assert _show_timeout() == "0"


@pytest.mark.django_db(transaction=True)
def test_an_invalid_bearer_token_is_refused_even_with_a_valid_session(client):
    # given a logged-in platform admin (a session cookie)
    get_user_model().objects.create_user(username="ops", password="correct horse", is_staff=True)
    assert client.login(username="ops", password="correct horse")
    assert client.get("/api/v1/admin/reviews").status_code == 200
    # when the request also states a bearer token that is not a valid key, then 401
    for token in ("garbage", "sds_x_y", ""):
        response = client.get("/api/v1/admin/reviews", HTTP_AUTHORIZATION=f"Bearer {token}")
        assert_error(response, 401)
