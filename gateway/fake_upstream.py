"""A fake OpenAI-compatible upstream for tests and the bench: a real HTTP server process
(``uvicorn gateway.fake_upstream:app``), no Django.

The first path segment picks the behaviour, so one process plays many suppliers: an endpoint
registered with base URL ``http://host:port/<mode>/v1`` gets

- ``openai``    usage in OpenAI's dialect: prompt_tokens 100 (40 of them cached), completion_tokens
                = the chunks sent;
- ``deepseek``  usage in DeepSeek's dialect: prompt_cache_hit_tokens 30, prompt_cache_miss_tokens 70;
- ``nousage``   no usage at all;
- ``fail``      500 on every request;
- ``stall``     waits 30 s before answering;
- ``break``     streams 3 content chunks, pauses 1 s, then drops the connection (no usage, no
                [DONE]); the pause lets the gateway relay the chunks first, since bytes that
                arrive together with the drop are lost to the reader (aiohttp raises the error
                before handing out what it buffered) and would count as never delivered;
- ``flaky-N-<tag>``  500 for the first N requests (per tag), then like ``openai``.

Anything after a dash is a tag (``fail-a``, ``fail-b``): alike in behaviour, counted apart.
A request sends ``max_tokens`` content chunks (default 5, at most 256), one per token.
``GET /_stats`` answers what each mode received (request counts, the last Authorization header,
whether the stream asked for usage); ``POST /_reset`` clears it.
"""
from __future__ import annotations

import asyncio
from collections import Counter

import orjson

STATS: dict = {"requests": Counter(), "auth": {}, "include_usage": {}}
JSON = [(b"content-type", b"application/json")]
SSE = [(b"content-type", b"text/event-stream")]
BREAK_PAUSE = 1.0  # seconds between the last chunk and the drop in ``break`` mode
CREATED = 1_700_000_000


def _usage(mode: str, completion: int) -> dict:
    if mode == "deepseek":
        return {"prompt_tokens": 100, "completion_tokens": completion, "total_tokens": 100 + completion,
                "prompt_cache_hit_tokens": 30, "prompt_cache_miss_tokens": 70}
    return {"prompt_tokens": 100, "completion_tokens": completion, "total_tokens": 100 + completion,
            "prompt_tokens_details": {"cached_tokens": 40}}


async def _body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": JSON})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path in ("/_stats", "/health"):
        await _respond(send, 200, orjson.dumps(STATS))
        return
    if path == "/_reset":
        STATS["requests"].clear()
        STATS["auth"].clear()
        STATS["include_usage"].clear()
        await _respond(send, 200, b"{}")
        return
    mode, _, rest = path.lstrip("/").partition("/")
    behaviour = mode.split("-")[0]  # "fail-a" and "fail-b" behave alike, counted apart
    STATS["requests"][mode] += 1
    for key, value in scope["headers"]:
        if key == b"authorization":
            STATS["auth"][mode] = value.decode()
    if behaviour == "fail" or (behaviour == "flaky" and STATS["requests"][mode] <= int(mode.split("-")[1])):
        await _respond(send, 500, b'{"error": {"message": "upstream exploded", "type": "server_error"}}')
        return
    if behaviour == "stall":
        await asyncio.sleep(30)
    if rest == "v1/models":
        await _respond(send, 200, b'{"object": "list", "data": [{"id": "any", "object": "model"}]}')
        return
    chat = rest == "v1/chat/completions"
    if not chat and rest != "v1/completions":
        await _respond(send, 404, b'{"error": {"message": "no such path", "type": "invalid_request_error"}}')
        return
    body = orjson.loads(await _body(receive))
    count = min(int(body.get("max_tokens") or 5), 256)
    model = body.get("model", "unknown")
    if not body.get("stream"):
        text = "".join(f"tok{i} " for i in range(count))
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"} if chat
                  else {"index": 0, "text": text, "finish_reason": "stop"})
        answer = {"id": "cmpl-fake", "object": "chat.completion" if chat else "text_completion", "created": CREATED,
                  "model": model, "choices": [choice]}
        if behaviour != "nousage":
            answer["usage"] = _usage(behaviour, count)
        await _respond(send, 200, orjson.dumps(answer))
        return
    options = body.get("stream_options") or {}
    STATS["include_usage"][mode] = bool(options.get("include_usage"))
    await send({"type": "http.response.start", "status": 200, "headers": SSE})
    kind = "chat.completion.chunk" if chat else "text_completion"
    if chat:
        first = {"id": "chatcmpl-fake", "object": kind, "created": CREATED, "model": model,
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(first) + b"\n\n", "more_body": True})
    for i in range(count):
        if behaviour == "break" and i == 3:
            await asyncio.sleep(BREAK_PAUSE)
            raise ConnectionAbortedError("the fake upstream drops the stream on purpose")
        choice = ({"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None} if chat
                  else {"index": 0, "text": f"tok{i} ", "finish_reason": None})
        chunk = {"id": "chatcmpl-fake", "object": kind, "created": CREATED, "model": model, "choices": [choice]}
        await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk) + b"\n\n", "more_body": True})
    tail = b""
    if options.get("include_usage") and behaviour != "nousage":
        usage = {"id": "chatcmpl-fake", "object": kind, "created": CREATED, "model": model, "choices": [],
                 "usage": _usage(behaviour, count)}
        tail = b"data: " + orjson.dumps(usage) + b"\n\n"
    await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n"})
