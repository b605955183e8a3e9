"""What a request used, in tokens: read from the upstream's ``usage`` object (both common
dialects) or, when none arrived, estimated by the documented rule. Pure Python, no Django.

Dialects:
- OpenAI: ``prompt_tokens``, ``completion_tokens`` and ``prompt_tokens_details.cached_tokens``
  (cache hits, part of ``prompt_tokens``): hit = cached, miss = prompt - cached.
- DeepSeek: ``prompt_cache_hit_tokens`` and ``prompt_cache_miss_tokens`` (their sum is
  ``prompt_tokens``), with ``completion_tokens``. Taken when either field is present.

Estimate rule (no usage reached the gateway, e.g. a stream broke): input = ceil(UTF-8 bytes of
the prompt text / 4), all on cache miss (there is no evidence of a hit); output = the number of
content-bearing chunks delivered to the client (OpenAI-compatible servers stream one token per
chunk). The event is marked estimated (event id ``gw-est-...``).

Prices are integer micro-CNY per million tokens (6 decimals), so ``tokens x price`` is an exact
integer number of pico-CNY (1e-12 CNY), the ledger's scale.
"""
from __future__ import annotations

from decimal import Decimal
from typing import NamedTuple

MAX_TOKENS = 10**12


class Tokens(NamedTuple):
    input_hit: int
    input_miss: int
    output: int

    @property
    def total(self) -> int:
        return self.input_hit + self.input_miss + self.output


class Prices(NamedTuple):
    """Micro-CNY per million tokens: the per-token price in pico-CNY."""

    hit: int
    miss: int
    out: int

    @classmethod
    def from_decimals(cls, hit: Decimal, miss: Decimal, out: Decimal) -> "Prices":
        return cls(int(hit * 1_000_000), int(miss * 1_000_000), int(out * 1_000_000))

    def cost(self, tokens: Tokens) -> int:
        """Exact cost in pico-CNY (1e-12 CNY)."""
        return tokens.input_hit * self.hit + tokens.input_miss * self.miss + tokens.output * self.out


def _count(value) -> int | None:
    if type(value) is int and 0 <= value <= MAX_TOKENS:
        return value
    return None


def usage_parse(usage) -> Tokens | None:
    """Tokens from an upstream ``usage`` object, or None when it is missing or malformed."""
    if not isinstance(usage, dict):
        return None
    output = _count(usage.get("completion_tokens", 0))
    if output is None:
        return None
    if "prompt_cache_hit_tokens" in usage or "prompt_cache_miss_tokens" in usage:
        hit = _count(usage.get("prompt_cache_hit_tokens", 0))
        miss = _count(usage.get("prompt_cache_miss_tokens", 0))
        if hit is None or miss is None:
            return None
        return Tokens(hit, miss, output)
    prompt = _count(usage.get("prompt_tokens", 0))
    if prompt is None:
        return None
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    if cached is None:
        return None
    cached = min(cached, prompt)
    return Tokens(cached, prompt - cached, output)


def _texts(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                yield item
            elif isinstance(item, dict):
                text = item.get("text")
                if isinstance(text, str):
                    yield text


def prompt_bytes(body: dict) -> int:
    """UTF-8 bytes of a chat request's message contents or a completion request's prompt."""
    total = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                for text in _texts(message.get("content")):
                    total += len(text.encode())
    for text in _texts(body.get("prompt")):
        total += len(text.encode())
    return total


def usage_estimate(*, prompt_size: int, chunks_delivered: int) -> Tokens:
    """The documented estimate when no usage arrived (see the module docstring)."""
    return Tokens(0, -(-prompt_size // 4), chunks_delivered)


def reservation_tokens(*, prompt_size: int, max_tokens: int | None, default_output: int) -> Tokens:
    """What the budget reserves before forwarding: every prompt byte as a cache-miss token (a
    token is never shorter than a byte in practice, so this does not under-reserve) and the
    request's ``max_tokens`` (or the default) as output."""
    return Tokens(0, prompt_size, max_tokens if max_tokens is not None else default_output)
