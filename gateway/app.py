"""The token gateway: a pure ASGI application speaking OpenAI's wire format.

``POST /v1/chat/completions``, ``POST /v1/completions`` and ``GET /v1/models``, authenticated with
the buyer's API key (``Authorization: Bearer sds_...``). A request is served from the buyer's live
token allocations for the model, cheapest expected cost first, forwarded to the supplier's
endpoint over pooled keep-alive connections (aiohttp), streamed back chunk by chunk.

Hot path, per request: no database round trip. Keys, routes and prices come from an in-process
cache (``CACHE_TTL`` seconds; a miss loads them in a thread through ``selectors``); rate limits,
the idempotency key and the budget reservation are one Redis script call before forwarding; the
settlement of the reservation, the usage event (appended to a Redis list) and the endpoint's
outcome are one Redis script call after. ``buffer.usage_flush`` records the buffered events in
batches through billing's usage-event path, from its own process (``python -m gateway.flusher``),
so its database work never competes with the event loop for the GIL; the Celery task
``gateway.usage_flush`` is the backstop, and ``Gateway(flush=True)`` runs it in a thread here.

Errors are OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: 400 malformed,
401 bad key, 403 read-only key, 402 budget (``max_spend``) exhausted, 404 unknown model or
allocation, 409 idempotency key already used, 429 rate limited (with ``Retry-After``), 502 every
endpoint failed, 503 no live allocation or every endpoint paused by the circuit breaker.
"""
from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import time
import uuid
from datetime import datetime, timezone as dt_timezone
from typing import Any, Callable

import aiohttp
import orjson
from django.conf import settings
from django.db import close_old_connections

from . import buffer, selectors
from .redislink import RedisLink, RedisUnavailable
from .usage import Tokens, prompt_bytes, reservation_tokens, usage_estimate, usage_parse

logger = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024
PATHS = {b"/v1/chat/completions": "chat/completions", b"/v1/completions": "completions"}
JSON = [(b"content-type", b"application/json")]
SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
IDEMPOTENCY_TTL = 24 * 3600
NANO = 1000  # Redis budgets count nano-CNY (integers exact in Lua's doubles up to ~9 million CNY)
_UTC = dt_timezone.utc

# KEYS: rpm, tpm, idempotency ('' for none), then one spend key per candidate route.
# ARGV: rpm limit, tpm limit, token estimate, check limits (1 on the first attempt, 0 on failover),
#       then per candidate: limit, reservation, spent so far per the database (used if the key is new).
# Returns {i, 0}: reserved on candidate i (1-based); {0, 0}: every candidate is out of budget;
# {-1, ttl}: requests per minute; {-2, ttl}: tokens per minute; {-3, 0}: idempotency key used.
ADMIT = """
local est = tonumber(ARGV[3])
if ARGV[4] == '1' then
  if KEYS[3] ~= '' and redis.call('exists', KEYS[3]) == 1 then return {-3, 0} end
  local rpm = tonumber(redis.call('get', KEYS[1]) or '0')
  if rpm >= tonumber(ARGV[1]) then return {-1, redis.call('ttl', KEYS[1])} end
  local tpm = tonumber(redis.call('get', KEYS[2]) or '0')
  if tpm > 0 and tpm + est > tonumber(ARGV[2]) then return {-2, redis.call('ttl', KEYS[2])} end
end
for i = 1, #KEYS - 3 do
  local key = KEYS[3 + i]
  local limit = tonumber(ARGV[2 + 3 * i])
  local reserve = tonumber(ARGV[3 + 3 * i])
  local spent = redis.call('get', key)
  if not spent then
    spent = ARGV[4 + 3 * i]
    redis.call('set', key, spent, 'EX', 1209600)
  end
  if tonumber(spent) + reserve <= limit then
    redis.call('incrby', key, reserve)
    if ARGV[4] == '1' then
      if redis.call('incr', KEYS[1]) == 1 then redis.call('expire', KEYS[1], 61) end
      if redis.call('incrby', KEYS[2], est) == est then redis.call('expire', KEYS[2], 61) end
      if KEYS[3] ~= '' then redis.call('set', KEYS[3], '1', 'EX', ARGV[5 + 3 * (#KEYS - 3)] or 86400) end
    end
    return {i, 0}
  end
end
return {0, 0}
"""


# KEYS: spend, tokens per minute, usage list, outcomes. ARGV: spend delta, tokens delta, event,
# outcome field. The settlement after a request, in one call.
SETTLE = """
redis.call('incrby', KEYS[1], ARGV[1])
if redis.call('incrby', KEYS[2], ARGV[2]) == tonumber(ARGV[2]) then redis.call('expire', KEYS[2], 61) end
redis.call('rpush', KEYS[3], ARGV[3])
redis.call('hincrby', KEYS[4], ARGV[4], 1)
return 1
"""


class GatewayError(Exception):
    def __init__(self, status: int, message: str, *, type_: str, code: str, param: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.retry_after = retry_after


class UpstreamFailed(Exception):
    """The endpoint failed before anything reached the client: fail over."""


def _db_call(load: Callable[[], Any]) -> Any:
    close_old_connections()
    return load()


class TTLCache:
    """In-process cache with a short lifetime; concurrent misses of one key share one load (run
    in a thread, since loads read the database).

    An entry is never served older than ``ttl``. A hit in the last ``REFRESH_SHARE`` of its
    lifetime starts a refresh in the background and answers from the entry, so under steady
    traffic a key is reloaded before it expires and no request waits for the database; only a
    key unused for a while (or a failed refresh) expires and makes its next request wait."""

    REFRESH_SHARE = 0.4

    def __init__(self, ttl: float, max_entries: int = 100_000) -> None:
        self.ttl, self.max_entries = ttl, max_entries
        self.refresh_after = ttl * (1 - self.REFRESH_SHARE)
        self.data: dict[Any, tuple[float, float, Any]] = {}  # key -> (expires, refresh from, value)
        self.loading: dict[Any, asyncio.Future] = {}

    async def get(self, key, load: Callable[[], Any]):
        hit = self.data.get(key)
        if hit is not None:
            now = time.monotonic()
            if hit[0] > now:
                if hit[1] <= now and key not in self.loading:
                    self._load(key, load)
                return hit[2]
        future = self.loading.get(key) or self._load(key, load)
        return await asyncio.shield(future)

    def _load(self, key, load: Callable[[], Any]) -> asyncio.Future:
        # The lifetime counts from the start of the load: what it read may be that old.
        started = time.monotonic()
        future = asyncio.get_running_loop().run_in_executor(None, _db_call, load)
        self.loading[key] = future
        future.add_done_callback(lambda done, key=key: self._loaded(key, done, started))
        return future

    def _loaded(self, key, future: asyncio.Future, started: float) -> None:
        self.loading.pop(key, None)
        if future.cancelled():
            return
        if future.exception() is not None:  # the waiting requests (if any) see it; the entry stays
            logger.warning("gateway cache load failed: %r", future.exception())
        else:
            if len(self.data) >= self.max_entries:
                self.data.clear()
            self.data[key] = (started + self.ttl, started + self.refresh_after, future.result())


class Breaker:
    """Per endpoint: ``threshold`` consecutive failures pause it for ``seconds``; after the pause
    requests try it again, and one more failure pauses it again."""

    def __init__(self, threshold: int, seconds: float) -> None:
        self.threshold, self.seconds = threshold, seconds
        self.failures: dict[int, int] = {}
        self.open_until: dict[int, float] = {}

    def allows(self, endpoint_id: int, now: float) -> bool:
        until = self.open_until.get(endpoint_id)
        return until is None or now >= until

    def success(self, endpoint_id: int) -> None:
        if endpoint_id in self.failures:
            del self.failures[endpoint_id]
            self.open_until.pop(endpoint_id, None)

    def failure(self, endpoint_id: int, now: float) -> None:
        count = self.failures.get(endpoint_id, 0) + 1
        self.failures[endpoint_id] = count
        if count >= self.threshold:
            self.open_until[endpoint_id] = now + self.seconds

    def retry_after(self, now: float) -> int:
        return max(1, int(min(self.open_until.values(), default=now + 1) - now) + 1)


def error_body(message: str, *, type_: str, code: str, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def _ceil_nano(pico: int) -> int:
    return -(-pico // NANO)


class Gateway:
    def __init__(self, *, flush: bool = True) -> None:
        config = settings.SANDUISAN_GATEWAY
        self.config = config
        self.keys = TTLCache(config["CACHE_TTL"])
        self.routes = TTLCache(config["CACHE_TTL"])
        self.models = TTLCache(config["CACHE_TTL"])
        self.breaker = Breaker(config["BREAKER_FAILURES"], config["BREAKER_SECONDS"])
        self.flush_enabled = flush
        self.session: aiohttp.ClientSession | None = None
        self.redis: RedisLink | None = None
        self.admit = self.settle_script = None
        # Request ids: a random prefix per process and a counter (unique across processes and
        # restarts, without a system call per request).
        self.id_prefix = uuid.uuid4().hex[:16]
        self.id_counter = 0
        self.flusher: asyncio.Task | None = None
        self.timeout = aiohttp.ClientTimeout(total=None, connect=config["CONNECT_TIMEOUT"],
                                             sock_connect=config["CONNECT_TIMEOUT"], sock_read=config["READ_TIMEOUT"])

    # --- lifecycle ----------------------------------------------------------------------------------

    async def startup(self) -> None:
        if not settings.REDIS_URL:
            raise RuntimeError("the token gateway needs Redis: set REDIS_URL")
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300,
                                         keepalive_timeout=self.config["UPSTREAM_KEEPALIVE"])
        self.session = aiohttp.ClientSession(connector=connector, timeout=self.timeout, auto_decompress=False,
                                             skip_auto_headers=("User-Agent",))
        self.redis = RedisLink(settings.REDIS_URL)
        self.admit = self.redis.script(ADMIT)
        self.settle_script = self.redis.script(SETTLE)
        if self.flush_enabled:
            self.flusher = asyncio.create_task(self._flush_loop())
        # Django and the imports leave a large heap that lives as long as the process: frozen, the
        # collector's full passes no longer walk it (one such pass stalled the event loop ~90 ms,
        # the tail of the bench's time to first byte).
        gc.collect()
        gc.freeze()

    async def shutdown(self) -> None:
        if self.flusher is not None:
            self.flusher.cancel()
            try:
                await self.flusher
            except asyncio.CancelledError:
                pass
            await asyncio.to_thread(buffer.usage_flush)
        if self.session is not None:
            await self.session.close()
        if self.redis is not None:
            self.redis.close()

    async def _flush_loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(buffer.usage_flush)
            except asyncio.CancelledError:
                raise
            except Exception:  # the database may be briefly away: keep the events, try again
                logger.exception("gateway usage flush failed")
            await asyncio.sleep(0.2)

    # --- ASGI ---------------------------------------------------------------------------------------

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            started = False

            async def tracked(message):
                nonlocal started
                started = True
                await send(message)

            try:
                await self.http(scope, receive, tracked)
            except GatewayError as error:
                await self.respond_error(send, error)
            except RedisUnavailable:
                logger.exception("gateway: Redis unavailable")
                if started:
                    raise
                await self.respond_error(send, GatewayError(503, "The gateway cannot check budgets right now; retry.",
                                                            type_="api_error", code="unavailable", retry_after=1))
            except Exception:
                logger.exception("gateway error")
                if started:
                    raise
                await self.respond_error(send, GatewayError(500, "The gateway failed.", type_="api_error",
                                                            code="internal_error"))
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    try:
                        await self.startup()
                    except Exception as error:  # noqa: BLE001 (reported to the server)
                        await send({"type": "lifespan.startup.failed", "message": str(error)})
                        return
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.shutdown()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    @staticmethod
    async def respond(send, status: int, body: bytes, headers=JSON) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def respond_error(self, send, error: GatewayError) -> None:
        headers = list(JSON)
        if error.retry_after is not None:
            headers.append((b"retry-after", str(error.retry_after).encode()))
        await self.respond(send, error.status, error_body(error.message, type_=error.type, code=error.code,
                                                          param=error.param), headers)

    async def http(self, scope, receive, send) -> None:
        path, method = scope["path"].encode() if isinstance(scope["path"], str) else scope["path"], scope["method"]
        upstream_path = PATHS.get(path)
        if upstream_path is not None and method == "POST":
            await self.completion(scope, receive, send, upstream_path)
        elif path == b"/v1/models" and method == "GET":
            key = await self.authenticate(scope)
            names = await self.models.get(("models", key.organisation_id), lambda: selectors.gateway_models(
                organisation_id=key.organisation_id))
            await self.respond(send, 200, orjson.dumps({"object": "list", "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "sanduisan"} for name in names]}))
        elif path == b"/health":
            await self.respond(send, 200, b'{"status":"ok"}')
        elif upstream_path is not None or path == b"/v1/models":
            raise GatewayError(405, "Method not allowed.", type_="invalid_request_error", code="method_not_allowed")
        else:
            raise GatewayError(404, f"Unknown path {path.decode(errors='replace')}.", type_="invalid_request_error",
                               code="unknown_url")

    @staticmethod
    def header(scope, name: bytes) -> bytes | None:
        for key, value in scope["headers"]:
            if key == name:
                return value
        return None

    async def authenticate(self, scope) -> selectors.KeyInfo:
        raw = self.header(scope, b"authorization") or b""
        scheme, _, value = raw.decode("latin-1").partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value.startswith("sds_"):
            raise GatewayError(401, "Missing or malformed API key: send Authorization: Bearer sds_...",
                               type_="invalid_request_error", code="invalid_api_key")
        digest = hashlib.sha256(value.encode()).hexdigest()
        key = await self.keys.get(digest, lambda: selectors.gateway_key_resolve(raw_key=value))
        if key is None:
            raise GatewayError(401, "Incorrect API key provided.", type_="invalid_request_error", code="invalid_api_key")
        return key

    @staticmethod
    async def read_body(receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise GatewayError(400, "Client disconnected.", type_="invalid_request_error", code="disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                raise GatewayError(413, "Request body too large.", type_="invalid_request_error", code="too_large")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    # --- completions --------------------------------------------------------------------------------

    async def completion(self, scope, receive, send, upstream_path: str) -> None:
        key = await self.authenticate(scope)
        if not key.can_spend:
            raise GatewayError(403, "This API key is read-only (viewer): it cannot spend.",
                               type_="invalid_request_error", code="permission_denied")
        raw = await self.read_body(receive)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise GatewayError(400, "The body is not valid JSON.", type_="invalid_request_error", code="invalid_json")
        if not isinstance(body, dict):
            raise GatewayError(400, "The body must be a JSON object.", type_="invalid_request_error",
                               code="invalid_request")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise GatewayError(400, "You must provide a model.", type_="invalid_request_error", code="missing_model",
                               param="model")
        stream = body.get("stream") is True
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
            raise GatewayError(400, "max_tokens must be a positive integer.", type_="invalid_request_error",
                               code="invalid_value", param="max_tokens")
        routes = await self.routes_for(scope, key, model)
        now = time.monotonic()
        candidates = [r for r in routes if self.breaker.allows(r.endpoint_id, now)]
        if not candidates:
            raise GatewayError(503, f"Every endpoint serving {model} for you is paused after failures; retry soon.",
                               type_="api_error", code="endpoints_unavailable", retry_after=self.breaker.retry_after(now))
        size = prompt_bytes(body)
        reserve = reservation_tokens(prompt_size=size, max_tokens=max_tokens,
                                     default_output=self.config["DEFAULT_OUTPUT_RESERVE"])
        idempotency = self.header(scope, b"idempotency-key")
        if idempotency:
            request_id = hashlib.sha256(f"{key.organisation_id}:".encode() + idempotency).hexdigest()[:32]
            idem_key = f"gw:idem:{request_id}"
        else:
            self.id_counter += 1
            request_id, idem_key = f"{self.id_prefix}{self.id_counter:016x}", ""
        minute = int(time.time()) // 60
        limits = (f"gw:rpm:{key.key_id}:{minute}", f"gw:tpm:{key.key_id}:{minute}", idem_key)
        route, reserved = await self.reserve(key, limits, candidates, reserve, first=True)
        ctx = Served(request_id=request_id, limits=limits, reserve=reserve, prompt_size=size, stream=stream,
                     wants_usage=stream and isinstance(body.get("stream_options"), dict)
                     and body["stream_options"].get("include_usage") is True)
        remaining = [r for r in candidates if r is not route]
        last_error = ""
        while True:
            try:
                await self.forward(send, receive, route, reserved, body, upstream_path, ctx)
                return
            except UpstreamFailed as failure:
                last_error = str(failure)
                self.breaker.failure(route.endpoint_id, time.monotonic())
                if not remaining:
                    await self.fail(route, reserved)
                    break
                route, reserved = await self.reserve(key, limits, remaining, reserve, first=False,
                                                     release=(route, reserved))
                if route is None:
                    break
                remaining = [r for r in remaining if r is not route]
        await self.abandon(ctx)
        raise GatewayError(502, f"No supplier could serve this request ({last_error}).", type_="api_error",
                           code="upstream_error")

    async def routes_for(self, scope, key: selectors.KeyInfo, model: str) -> list[selectors.Route]:
        pin = self.header(scope, b"x-sanduisan-allocation")
        if pin is not None:
            try:
                allocation_id = int(pin)
            except ValueError:
                raise GatewayError(400, "X-Sanduisan-Allocation must be an allocation id.",
                                   type_="invalid_request_error", code="invalid_value")
            found = await self.routes.get(("pin", key.organisation_id, allocation_id, model),
                                          lambda: selectors.gateway_routes_pinned(
                                              organisation_id=key.organisation_id, allocation_id=allocation_id,
                                              model_name=model))
            if found is None:
                raise GatewayError(404, f"No token allocation {allocation_id} of yours.",
                                   type_="invalid_request_error", code="allocation_not_found")
            known, routes = found
        else:
            known, routes = await self.routes.get((key.organisation_id, model), lambda: selectors.gateway_routes(
                organisation_id=key.organisation_id, model_name=model))
        if not known:
            raise GatewayError(404, f"The model {model} does not exist in the catalogue.",
                               type_="invalid_request_error", code="model_not_found", param="model")
        if not routes:
            raise GatewayError(503, f"You hold no live token allocation for {model} served through the gateway: "
                                    f"place a token order (POST /api/v1/orders, kind=tokens) and retry once it is "
                                    f"matched.", type_="api_error", code="no_allocation")
        return routes

    async def reserve(self, key, limits, candidates, reserve: Tokens, *, first: bool, release=None):
        """One script call: limits (first attempt only), then the budget of the first candidate
        with room. Returns (route, reserved nano-CNY)."""
        estimates = [_ceil_nano(r.prices.cost(reserve)) for r in candidates]
        argv: list = [key.requests_per_minute, key.tokens_per_minute, reserve.total, 1 if first else 0]
        for route, estimate in zip(candidates, estimates):
            argv += [_ceil_nano(route.limit_pico), estimate, _ceil_nano(route.spent_pico)]
        argv.append(IDEMPOTENCY_TTL)
        keys = [*limits, *(buffer.spend_key(r.allocation_id) for r in candidates)]
        if release is not None:  # fail over: the failed route's reservation back, its failure counted
            await self.redis.many(("INCRBY", buffer.spend_key(release[0].allocation_id), -release[1]),
                                  ("HINCRBY", buffer.OUTCOMES, f"{release[0].endpoint_id}:fail", 1))
        index, ttl = await self.admit(keys=keys, args=argv)
        if index == -3:
            raise GatewayError(409, "This Idempotency-Key was already used for a request.",
                               type_="invalid_request_error", code="idempotency_conflict")
        if index in (-1, -2):
            what = "requests" if index == -1 else "tokens"
            raise GatewayError(429, f"Rate limit reached: {what} per minute for this key.", type_="requests",
                               code="rate_limit_exceeded", retry_after=max(1, int(ttl)))
        if index == 0:
            if not first:
                return None, 0
            raise GatewayError(402, "The budget (max_spend) of every allocation that could serve this request is "
                                    "used up.", type_="insufficient_quota", code="insufficient_quota")
        return candidates[index - 1], estimates[index - 1]

    async def fail(self, route, reserved: int) -> None:
        """The last candidate failed: its reservation back, its failure counted."""
        await self.redis.many(("INCRBY", buffer.spend_key(route.allocation_id), -reserved),
                              ("HINCRBY", buffer.OUTCOMES, f"{route.endpoint_id}:fail", 1))

    async def abandon(self, ctx: "Served") -> None:
        """Nothing was served: give back the tokens-per-minute estimate and the idempotency key
        (the budget was released at each failure)."""
        commands = [("INCRBY", ctx.limits[1], -ctx.reserve.total)]
        if ctx.limits[2]:
            commands.append(("DEL", ctx.limits[2]))
        await self.redis.many(*commands)

    async def settle(self, route, reserved: int, ctx: "Served", tokens: Tokens, estimated: bool,
                     outcome: str = "ok") -> None:
        """Budget and tokens-per-minute to the actual figures, the usage event buffered, the
        outcome counted: one script call."""
        if outcome == "ok":
            self.breaker.success(route.endpoint_id)
        else:
            self.breaker.failure(route.endpoint_id, time.monotonic())
        event_id = (selectors.ESTIMATED_EVENT_PREFIX if estimated else selectors.GATEWAY_EVENT_PREFIX) + ctx.request_id
        event = orjson.dumps([event_id, route.allocation_id, route.supplier_id,
                              datetime.now(_UTC).isoformat(), *tokens])
        await self.settle_script(
            keys=[buffer.spend_key(route.allocation_id), ctx.limits[1], buffer.USAGE_LIST, buffer.OUTCOMES],
            args=[_ceil_nano(route.prices.cost(tokens)) - reserved, tokens.total - ctx.reserve.total, event,
                  f"{route.endpoint_id}:{outcome}"])

    async def forward(self, send, receive, route, reserved: int, body: dict, upstream_path: str,
                      ctx: "Served") -> None:
        payload = dict(body)
        payload["model"] = route.upstream_model
        if ctx.stream:
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            payload["stream_options"] = options
        headers = {"Content-Type": "application/json"}
        if route.credential:
            headers["Authorization"] = f"Bearer {route.credential}"
        url = f"{route.base_url}/{upstream_path}"
        try:
            async with asyncio.timeout(self.config["FIRST_BYTE_TIMEOUT"]):
                response = await self.session.post(url, data=orjson.dumps(payload), headers=headers)
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise UpstreamFailed(f"{type(error).__name__} from endpoint {route.endpoint_id}") from error
        try:
            status = response.status
            if status >= 500 or status in (401, 403, 408, 429):  # the endpoint's fault: fail over
                raise UpstreamFailed(f"status {status} from endpoint {route.endpoint_id}")
            if status >= 400:  # the request's fault: the client sees the upstream's answer, nothing billed
                text = await response.read()
                await self.redis.call("INCRBY", buffer.spend_key(route.allocation_id), -reserved)
                await self.abandon(ctx)
                await self.respond(send, status, text, JSON)
                return
            if ctx.stream:
                await self.stream(send, receive, response, route, reserved, ctx)
            else:
                await self.whole(send, response, route, reserved, ctx)
        finally:
            response.release()

    async def whole(self, send, response, route, reserved: int, ctx: "Served") -> None:
        try:
            async with asyncio.timeout(self.config["READ_TIMEOUT"]):
                text = await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise UpstreamFailed(f"{type(error).__name__} reading endpoint {route.endpoint_id}") from error
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise UpstreamFailed(f"invalid JSON from endpoint {route.endpoint_id}")
        tokens = usage_parse(data.get("usage")) if isinstance(data, dict) else None
        estimated = tokens is None
        if estimated:
            tokens = usage_estimate(prompt_size=ctx.prompt_size, chunks_delivered=-(-_content_bytes(data) // 4))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*JSON, (b"x-request-id", ctx.request_id.encode()),
                                (b"x-sanduisan-allocation", str(route.allocation_id).encode())]})
        await send({"type": "http.response.body", "body": text})
        await self.settle(route, reserved, ctx, tokens, estimated)

    async def stream(self, send, receive, response, route, reserved: int, ctx: "Served") -> None:
        """Pass events through as they arrive. Until the first event reaches the client a
        failure fails over; after it, a break ends the stream with an error event and the
        request is billed for what was delivered (the upstream's usage if it came, else the
        estimate rule)."""
        tokens: Tokens | None = None
        delivered = 0  # content-bearing chunks sent to the client
        started = done = finished = False
        pending = b""
        disconnect = asyncio.ensure_future(receive())  # completes when the client goes away
        broken = ""
        try:
            iterator = response.content.iter_any().__aiter__()
            while True:
                try:
                    if started:
                        data = await iterator.__anext__()
                    else:
                        async with asyncio.timeout(self.config["FIRST_BYTE_TIMEOUT"]):
                            data = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                except (aiohttp.ClientError, OSError, TimeoutError) as error:
                    if not started:
                        raise UpstreamFailed(f"{type(error).__name__} from endpoint {route.endpoint_id}") from error
                    broken = f"{type(error).__name__}"
                    break
                pending += data
                if b"\n\n" not in pending:
                    continue
                head, _, pending = pending.rpartition(b"\n\n")
                out = []
                for event in head.split(b"\n\n"):
                    payload = event.strip()
                    if not payload.startswith(b"data:"):
                        if payload:
                            out.append(event)
                        continue
                    payload = payload[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        out.append(event)
                        continue
                    if b'"usage"' in payload:  # parse only what may carry usage (the last chunk)
                        try:
                            chunk = orjson.loads(payload)
                        except orjson.JSONDecodeError:
                            chunk = None
                        usage = chunk.get("usage") if isinstance(chunk, dict) else None
                        if usage:
                            tokens = usage_parse(usage) or tokens
                            if not chunk.get("choices") and not ctx.wants_usage:
                                continue  # the usage-only chunk the client did not ask for
                    if _has_content(payload):
                        delivered += 1
                    out.append(event)
                if not out or finished:
                    continue
                message = b"\n\n".join(out) + b"\n\n"
                if not started:
                    started = True
                    await send({"type": "http.response.start", "status": 200,
                                "headers": [*SSE, (b"x-request-id", ctx.request_id.encode()),
                                            (b"x-sanduisan-allocation", str(route.allocation_id).encode())]})
                if disconnect.done():
                    broken = "client disconnected"
                    break
                # [DONE] ends the client's response at once (one write less); the rest of the
                # upstream response is still read, so its connection goes back to the pool.
                await send({"type": "http.response.body", "body": message, "more_body": not done})
                finished = done
            if not started:
                raise UpstreamFailed(f"empty stream from endpoint {route.endpoint_id}")
            if not done and not broken:
                broken = "stream ended early"
            if broken and broken != "client disconnected":
                error = error_body(f"The upstream stream broke ({broken}); you are billed for what was delivered.",
                                   type_="api_error", code="stream_interrupted")
                await send({"type": "http.response.body", "body": b"data: " + error + b"\n\n", "more_body": True})
            if not finished:
                await send({"type": "http.response.body", "body": b""})
        finally:
            disconnect.cancel()
        estimated = tokens is None
        if estimated:
            tokens = usage_estimate(prompt_size=ctx.prompt_size, chunks_delivered=delivered)
        await self.settle(route, reserved, ctx, tokens, estimated,
                          outcome="fail" if broken and broken != "client disconnected" else "ok")


class Served:
    __slots__ = ("request_id", "limits", "reserve", "prompt_size", "stream", "wants_usage")

    def __init__(self, *, request_id: str, limits: tuple, reserve: Tokens, prompt_size: int, stream: bool,
                 wants_usage: bool) -> None:
        self.request_id, self.limits, self.reserve = request_id, limits, reserve
        self.prompt_size, self.stream, self.wants_usage = prompt_size, stream, wants_usage


def _has_content(payload: bytes) -> bool:
    """Whether an SSE chunk carries generated text (a chat delta's ``content`` or a completion's
    ``text``, non-empty), read from the bytes: parsing every chunk would cost more than the rest
    of the pass-through."""
    for marker in (b'"content":', b'"text":'):
        at = payload.find(marker)
        if at >= 0:
            rest = payload[at + len(marker):at + len(marker) + 4].lstrip()
            return rest[:1] == b'"' and rest[:2] != b'""'
    return False


def _content_bytes(data) -> int:
    total = 0
    for choice in data.get("choices") or () if isinstance(data, dict) else ():
        if isinstance(choice, dict):
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else choice.get("text")
            if isinstance(text, str):
                total += len(text.encode())
    return total
