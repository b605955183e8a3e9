"""A minimal pipelined Redis client for the gateway's hot path: one connection per process,
commands written as they come, replies matched in order (Redis answers a connection's commands
in the order it received them), parsed by hiredis. Two script calls per request cost a few
microseconds of Python each, against a few hundred through redis-py's asyncio client.

Scripts run by ``EVALSHA``; a ``NOSCRIPT`` reply (a restarted Redis) loads them again with
``EVAL``. A lost connection fails the calls in flight (the request answers 503) and the next call
reconnects.
"""
from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from urllib.parse import urlsplit

import hiredis


class RedisUnavailable(Exception):
    pass


def _encode(args) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        else:
            data = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            waiter = self.waiters.popleft()
            if waiter.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                waiter.set_exception(reply)
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc) -> None:
        self.lost = True
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(RedisUnavailable(f"connection to Redis lost: {exc}"))


class RedisLink:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 6379
        self.db = int((parts.path or "/0").lstrip("/") or 0)
        self.password = parts.password
        self.protocol: _Protocol | None = None
        self.connecting: asyncio.Future | None = None
        self.outgoing: list[bytes] = []
        self.writing_to: _Protocol | None = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(_Protocol, self.host, self.port)
        setup = []
        if self.password:
            setup.append(("AUTH", self.password))
        if self.db:
            setup.append(("SELECT", self.db))
        for command in setup:
            waiter = loop.create_future()
            protocol.waiters.append(waiter)
            protocol.transport.write(_encode(command))
            await waiter
        return protocol

    async def _protocol(self) -> _Protocol:
        protocol = self.protocol
        if protocol is not None and not protocol.lost:
            return protocol
        if self.connecting is None:
            self.connecting = asyncio.ensure_future(self._connect())
        try:
            self.protocol = await asyncio.shield(self.connecting)
        except OSError as error:
            raise RedisUnavailable(f"cannot reach Redis: {error}") from error
        finally:
            self.connecting = None
        return self.protocol

    def _send(self, protocol: _Protocol, data: bytes) -> None:
        """Queue bytes for the next write: every command issued during one turn of the event
        loop leaves in one system call (a write to a local socket is the dearest step here)."""
        if protocol is not self.writing_to:
            self._write()
            self.writing_to = protocol
        self.outgoing.append(data)
        if len(self.outgoing) == 1:
            asyncio.get_running_loop().call_soon(self._write)

    def _write(self) -> None:
        if self.outgoing:
            protocol, data = self.writing_to, b"".join(self.outgoing)
            self.outgoing.clear()
            if not protocol.lost:
                protocol.transport.write(data)

    async def call(self, *args):
        protocol = await self._protocol()
        waiter = asyncio.get_running_loop().create_future()
        protocol.waiters.append(waiter)
        self._send(protocol, _encode(args))
        return await waiter

    async def many(self, *commands) -> list:
        """Several commands at once; their replies in order."""
        protocol = await self._protocol()
        loop = asyncio.get_running_loop()
        waiters = [loop.create_future() for _ in commands]
        protocol.waiters.extend(waiters)
        self._send(protocol, b"".join(_encode(command) for command in commands))
        return [await waiter for waiter in waiters]

    def script(self, source: str) -> "Script":
        return Script(self, source)

    def close(self) -> None:
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.close()


class Script:
    def __init__(self, link: RedisLink, source: str) -> None:
        self.link, self.source = link, source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: list, args: list):
        try:
            return await self.link.call("EVALSHA", self.sha, len(keys), *keys, *args)
        except hiredis.ReplyError as error:
            if not str(error).startswith("NOSCRIPT"):
                raise
            return await self.link.call("EVAL", self.source, len(keys), *keys, *args)
