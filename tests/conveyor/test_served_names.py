"""The names a worker will serve, known (and marked in Redis) before its model loads."""

from __future__ import annotations

from pathlib import Path

import redis

from conveyor.bus import BusNames
from conveyor.served_names import ServedNames, expected_names, mark_expected_known, served_aliases
from conveyor.settings import Settings
from engine.loader import BUNDLED_MODEL_NAME


def test_the_model_as_given_is_also_a_name_vllm_clients_use() -> None:
    """Without --served-model-name, vLLM serves `/models/qwen` as "/models/qwen"; here it
    is "qwen", and the path is another name for it."""
    assert served_aliases(Settings(model="/models/qwen"), "qwen") == ("/models/qwen",)
    assert served_aliases(Settings(model="org/qwen"), "org/qwen") == ()
    assert served_aliases(Settings(), "SmolLM2-135M-Instruct") == ()
    named = Settings(model="/m", served_model_name="q", served_model_aliases=["a"])
    assert served_aliases(named, "q") == ("a",)
    assert served_aliases(Settings(model="/m", served_model_aliases=["b"]), "m") == ("b",)


def test_expected_names_need_no_weights(tmp_path: Path) -> None:
    assert expected_names(Settings()) == ServedNames(BUNDLED_MODEL_NAME)
    folder = tmp_path / "qwen"
    folder.mkdir()  # no config.json: nothing is read
    assert expected_names(Settings(model=str(folder))) == ServedNames("qwen", (str(folder),))
    gguf = tmp_path / "tiny-q8.gguf"
    gguf.write_bytes(b"")
    assert expected_names(Settings(model=str(gguf))).model == "tiny-q8"
    assert expected_names(Settings(model="org/model")) == ServedNames("org/model")
    named = Settings(
        model="org/model",
        served_model_name="m",
        served_model_aliases=["n"],
        lora_modules=[f"sql={tmp_path}"],
    )
    assert expected_names(named) == ServedNames("m", ("n",), ("sql",))


def test_marking_them_known_makes_a_request_a_503_not_a_404(redis_url: str) -> None:
    settings = Settings(model="org/model", served_model_aliases=["other"], redis_prefix="t-names")
    mark_expected_known(settings, redis_url)
    names = BusNames(prefix="t-names")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert client.get(names.known_model("org/model")) == "1"
        assert client.get(names.known_alias("other")) == "org/model"
        assert client.ttl(names.known_model("org/model")) > 0
    finally:
        client.delete(names.known_model("org/model"), names.known_alias("other"))
        client.close()


def test_no_redis_is_a_warning_not_an_error(caplog) -> None:
    mark_expected_known(Settings(), "redis://127.0.0.1:1/0")
    assert "could not mark SmolLM2-135M-Instruct as loading" in caplog.text
