from datetime import timedelta

from tests.factories import next_hour


def iso(moment) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def card_hours_body(*, start_in: int = 1, window_hours: int = 24, **overrides) -> dict:
    start = next_hour(start_in)
    body = {
        "kind": "card_hours",
        "chips": ["nvidia-h800-sxm"],
        "cards": 4,
        "duration_hours": 3,
        "window": {"earliest_start": iso(start), "latest_end": iso(start + timedelta(hours=window_hours))},
        "max_price_per_card_hour": "12.50",
        "region": {"policy": "anywhere"},
        "workload": {"image": "registry.example/llm:1", "command": "python serve.py",
                     "ssh_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake buyer@laptop"},
    }
    body.update(overrides)
    return body


def tokens_body(**overrides) -> dict:
    body = {
        "kind": "tokens",
        "model": "DeepSeek-V3",
        "expected_input_tokens": 10_000_000,
        "expected_output_tokens": 2_000_000,
        "expected_cache_hit_ratio": "0.25",
        "max_prices": {"input_hit_per_m": "0.5", "input_miss_per_m": "2", "output_per_m": "8"},
        # Agreed beyond the hold (32.25), so usage past the expected tokens is charged from the wallet.
        "max_spend": "1000",
    }
    body.update(overrides)
    return body


def listing_body(node_id: int, *, start_in: int = 1, hours: int = 24, **overrides) -> dict:
    start = next_hour(start_in)
    body = {"node": node_id, "cards": 8, "start": iso(start), "end": iso(start + timedelta(hours=hours)),
            "ask_per_card_hour": "10.00"}
    body.update(overrides)
    return body


def assert_error(response, status: int, field: str | None = None, code: str | None = None) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert {"code", "message", "fields"} <= set(error)
    if field is not None:
        assert field in error["fields"], error
        assert error["fields"][field] and all(isinstance(m, str) and m for m in error["fields"][field])
    if code is not None:
        assert error["code"] == code, error
    return error
