"""LanceDB on object storage beyond the conformance suite (which runs on S3 as `lancedb-s3`): a workspace
whose index is in a bucket, ingested by one process while another searches; indexes sharing a prefix;
and the errors of a wrong endpoint, wrong or missing credentials, or a missing bucket."""

import collections
import dataclasses
import subprocess
import time

import numpy as np
import pytest

from ragtune import Workspace
from ragtune.config import CONFIG_FILE, Config, render_toml
from ragtune.errors import ConfigError
from ragtune.store import open_store
from tests.conftest import RAGTUNE, S3_KEY_ENV, S3_SECRET_ENV, free_port
from tests.ingest.test_crash import make_corpus
from tests.store.test_store_conformance import DIM, MODEL, MODEL_ID, chunks, commit, sources, vector


def on_s3(ws_dir, store, **ingest) -> None:
    """Point the workspace's ragtune.toml at ``store`` (and other [ingest] settings)."""
    config = Config.load(ws_dir / CONFIG_FILE)
    config = dataclasses.replace(config, store=store, ingest=dataclasses.replace(config.ingest, **ingest))
    (ws_dir / CONFIG_FILE).write_text(render_toml(config))


@pytest.mark.slow
def test_one_process_ingests_into_the_bucket_while_another_searches_whole_versions(s3_config, tmp_path):
    make_corpus(tmp_path / "docs", n_files=16)
    ws_dir = Workspace.init(tmp_path / "ws").root
    on_s3(ws_dir, s3_config, commit_chunks=4)  # many commits: a file each
    store = Workspace(ws_dir).store
    store.db()  # lancedb imported and connected before the ingest starts: its commits take a second or two in all
    proc = subprocess.Popen([*RAGTUNE, "ingest", str(tmp_path / "docs"), "--workspace", str(ws_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    probe = np.full(384, 384 ** -0.5, np.float32)  # any vector: a search for every chunk sees the whole version
    seen: dict[int, collections.Counter] = {}
    try:
        while proc.poll() is None:
            if not store.exists():
                time.sleep(0.05)
                continue
            store.pin()
            counts = collections.Counter(h.source for h in store.dense(probe, 100_000))
            assert seen.setdefault(store.pinned_version, counts) == counts, "one version, two contents"
    finally:
        proc.kill()
        out, err = proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    ws = Workspace(ws_dir)
    final = collections.Counter(r["source"] for r in ws.store.rows(["source"]))
    assert len(final) == 16 and not (ws_dir / ".ragtune" / "index").exists()  # the index is in the bucket only
    for version, counts in seen.items():  # every file a search saw was whole: committed, never in part
        assert all(n == final[source] for source, n in counts.items()), (version, counts)
    partial = {v for v, counts in seen.items() if 0 < len(counts) < len(final)}
    assert len(partial) >= 2, f"the searcher saw no versions between the first and the last commit: {seen}"
    hits = ws.search("records about comets", k=3, mode="hybrid")  # the keyword index works on S3 too
    assert hits and "comets" in hits[0].text and ws.stats().path == s3_config.uri


def test_indexes_under_one_prefix_keep_apart_and_drop_alone(s3_config, tmp_path):
    # a sweep's extra indexes live under the workspace index's prefix: dropping one leaves the others
    inner_config = dataclasses.replace(s3_config, uri=f"{s3_config.uri}/indexes/abc")
    outer, inner = open_store(s3_config, tmp_path / "index"), open_store(inner_config, tmp_path / "index")
    for store, name in [(outer, "outer"), (inner, "inner")]:
        store.ensure(MODEL, MODEL_ID, DIM)
        commit(store, [(f"{name}.txt", "k1", chunks(f"{name}.txt", [f"The {name} file."]))])
    assert sources(outer.dense(vector("x"), 10)) == ["outer.txt"] and sources(inner.bm25("inner file", 10)) == ["inner.txt"]
    outer.drop()
    assert not open_store(s3_config, tmp_path / "index").exists()
    again = open_store(inner_config, tmp_path / "index")
    assert again.exists() and sources(again.dense(vector("x"), 10)) == ["inner.txt"]


@pytest.mark.parametrize("wrong, message", [
    ("key", r"cannot use the index at s3://.*ACCESS_DENIED.*credentials in \$RAGTUNE_TEST_S3_KEY and \$RAGTUNE_TEST_S3_SECRET"),
    ("endpoint", r"cannot use the index at s3://.*connect.*check \[store\] s3_endpoint = 'http://127.0.0.1:\d+'"),
    ("bucket", r"the bucket 'no-such-bucket' of \[store\] uri = 's3://no-such-bucket/i' does not exist at http://127.0.0.1:\d+: "
               r"create it"),
], ids=["key", "endpoint", "bucket"])
def test_a_wrong_endpoint_credential_or_bucket_says_what_to_fix(s3_config, tmp_path, monkeypatch, wrong, message):
    config = s3_config
    if wrong == "key":
        monkeypatch.setenv(S3_KEY_ENV, "not-the-key")
    elif wrong == "endpoint":
        config = dataclasses.replace(config, s3_endpoint=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    else:
        config = dataclasses.replace(config, uri="s3://no-such-bucket/i")
    store = open_store(config, tmp_path / "index")
    t = time.perf_counter()
    with pytest.raises(ConfigError, match=message) as e:
        store.ensure(MODEL, MODEL_ID, DIM)
    assert time.perf_counter() - t < 20 and "not-the-key" not in str(e.value)


def test_missing_credentials_name_the_variables(s3_config, tmp_path, monkeypatch):
    monkeypatch.delenv(S3_SECRET_ENV)
    with pytest.raises(ConfigError, match=rf"needs S3 credentials: set \${S3_SECRET_ENV} \(named by \[store\] s3_key_env"):
        open_store(s3_config, tmp_path / "index")
    default_chain = dataclasses.replace(s3_config, s3_key_env="", s3_secret_env="")  # the AWS chain: nothing to check here
    assert open_store(default_chain, tmp_path / "index").s3.key is None


@pytest.mark.slow
def test_a_sweeps_extra_index_goes_under_the_workspace_index_in_the_bucket(s3_config, handbook_copy, tmp_path):
    from ragtune.experiment.sweep import load_sweep, run_sweep
    from tests.experiment.test_sweep import write_sweep

    ws_dir = Workspace.init(tmp_path / "ws").root
    on_s3(ws_dir, s3_config)
    Workspace(ws_dir).ingest([handbook_copy])
    sweep = load_sweep(write_sweep(tmp_path, 'name = "s3"\narm = "retrieval"\nlimit = 3\n[grid]\n"ingest.chunk_tokens" = [96, 256]\n'))
    result = run_sweep(Workspace(ws_dir), sweep, log=lambda _: None)
    paths = {o.run.info["config"]["ingest"]["chunk_tokens"]: o.run.info["environment"]["index_path"] for o in result.outcomes}
    assert paths[256] == s3_config.uri and paths[96].startswith(f"{s3_config.uri}/indexes/")
    assert not (ws_dir / ".ragtune" / "indexes").exists() and not (ws_dir / ".ragtune" / "index").exists()
