import os
import tomllib

import pytest

from ragtune import Workspace
from ragtune.config import Config, cpu_threads, render_toml
from ragtune.errors import ConfigError, WorkspaceError
from ragtune.workspace import find_root


def test_init_writes_documented_config_that_round_trips(tmp_path):
    ws = Workspace.init(tmp_path / "kb")
    text = (ws.root / "ragtune.toml").read_text()
    assert (ws.root / ".ragtune").is_dir()
    for section in ("[ingest]", "[embed]", "[retrieve]", "[rag]", "[generate]", "[store]"):
        assert section in text
    # every key is preceded by its one-line documentation
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if " = " in line and not line.startswith("#"):
            assert lines[i - 1].startswith("# "), line
    assert Config.from_dict(tomllib.loads(text)) == Config()


def test_init_refuses_to_overwrite_without_force(tmp_path):
    Workspace.init(tmp_path)
    with pytest.raises(WorkspaceError, match="--force"):
        Workspace.init(tmp_path)
    Workspace.init(tmp_path, force=True)


def test_workspace_found_from_a_subfolder(tmp_path, monkeypatch):
    Workspace.init(tmp_path)
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    monkeypatch.delenv("RAGTUNE_WORKSPACE", raising=False)
    assert find_root() == tmp_path.resolve()


def test_missing_workspace_says_how_to_create_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAGTUNE_WORKSPACE", raising=False)
    with pytest.raises(WorkspaceError, match="ragtune init"):
        find_root()


@pytest.mark.parametrize("data, message", [
    ({"retrieve": {"mode": "fuzzy"}}, "mode = 'fuzzy' is not valid; choose one of: dense, bm25, hybrid"),
    ({"retrieve": {"kk": 3}}, "unknown key 'kk'; valid keys: mode, k,"),
    ({"ingest": {"chunk_tokens": "big"}}, "chunk_tokens must be int"),
    ({"ingest": {"chunk_tokens": 0}}, "chunk_tokens = 0 must be greater than 0"),
    ({"ingest": {"chunk_tokens": 100, "chunk_overlap": 60}}, "chunk_overlap = 60 must be less than half"),
    ({"embed": {"backend": "cuda"}}, "choose one of: torch, onnx, onnx-int8"),
    ({"ingest": {"engine": "spark"}}, "[ingest] engine = 'spark' is not valid; choose one of: local, ray"),
    ({"ingest": {"ray_actors": -2}}, "ray_actors = -2 must be 0 or more"),
    ({"generation": {}}, "unknown section [generation]"),
    ({"generate": {"backend": "vllm"}}, "choose one of: llamacpp, transformers, openai"),
    ({"store": {"uri": "gs://bucket/x"}}, "uri = 'gs://bucket/x': use s3://BUCKET/PREFIX (object storage), or leave it empty"),
    ({"store": {"uri": "s3://Bad_Bucket/x"}}, "use s3://BUCKET/PREFIX"),
    ({"store": {"uri": "s3://bucket/x", "backend": "pgvector"}}, "uri is where a lancedb index lives; pgvector uses url"),
    ({"store": {"uri": "s3://bucket/x", "s3_endpoint": "127.0.0.1:8333"}}, "s3_endpoint = '127.0.0.1:8333': use https://HOST:PORT"),
    ({"store": {"uri": "s3://bucket/x", "s3_endpoint": "http://127.0.0.1:8333"}}, "is plain http: use https://, or set s3_allow_http = true"),
])
def test_config_errors_name_the_key_and_valid_values(data, message):
    with pytest.raises(ConfigError) as e:
        Config.from_dict(data)
    assert message in str(e.value)


def test_broken_toml_is_a_config_error(tmp_path):
    ws = Workspace.init(tmp_path)
    (ws.root / "ragtune.toml").write_text("[retrieve\nmode = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Workspace(tmp_path)


def test_overrides_are_validated_like_the_file():
    cfg = Config().override("retrieve", k=7, mode=None)
    assert cfg.retrieve.k == 7 and cfg.retrieve.mode == "hybrid"
    with pytest.raises(ConfigError, match="must be greater than 0"):
        Config().override("retrieve", k=-1)


def test_rendered_config_reflects_values():
    cfg = Config().override("embed", backend="torch")
    assert 'backend = "torch"' in render_toml(cfg)


def test_threads_come_from_the_setting_then_the_environment_then_the_cores(monkeypatch):
    from ragtune.embed import get_embedder

    monkeypatch.setenv("RAGTUNE_THREADS", "1")
    assert cpu_threads(3) == 3 and cpu_threads(0) == 1
    assert get_embedder("minilm", "onnx-int8", batch_size=7, threads=0).threads == 1  # a `threads = 0` setting takes it (batch_size: not a cached one)
    monkeypatch.delenv("RAGTUNE_THREADS")
    assert cpu_threads(0) == (os.cpu_count() or 1)
    monkeypatch.setenv("RAGTUNE_THREADS", "two")
    with pytest.raises(ConfigError, match=r"\$RAGTUNE_THREADS = 'two': give a whole number"):
        cpu_threads(0)
