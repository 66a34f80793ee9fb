import numpy as np
import pytest

from ragtune.embed import EMBEDDERS, get_embedder, resolve_model
from ragtune.embed.cache import EmbeddingCache, embed_cached
from ragtune.errors import EmbedderError

TEXTS = ["The cat sat on the mat.", "Quantum chromodynamics describes the strong force.",
         "A recipe for sourdough bread with rye flour. " * 40]


@pytest.fixture(scope="module")
def reference():
    return get_embedder("minilm", "torch").embed(TEXTS)


@pytest.mark.parametrize("backend, min_cos", [("onnx", 0.9999), ("onnx-int8", 0.98)])
def test_onnx_backends_match_sentence_transformers(reference, backend, min_cos):
    e = get_embedder("minilm", backend)
    v = e.embed(TEXTS)
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    cos = (v * reference).sum(1)
    assert cos.min() > min_cos, cos
    assert e.model_id != get_embedder("minilm", "torch").model_id


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_one_text_runs_on_one_thread_and_gets_the_same_vector(backend):
    """One text (a query) runs on a one-thread session of its own; its vector is the one the
    configured session gives it, to the bit (the cache and the index hold those)."""
    e = get_embedder("minilm", backend, threads=2)
    alone = np.stack([e.embed([t])[0] for t in TEXTS])
    assert e._single is not None and e._single is not e.session
    assert e._single.get_session_options().intra_op_num_threads == 1
    single, e._single = e._single, e.session  # the same texts on the two-thread session
    try:
        assert np.array_equal(alone, np.stack([e.embed([t])[0] for t in TEXTS]))
    finally:
        e._single = single


def test_related_texts_are_closer():
    e = get_embedder()
    a, b, c = e.embed(["How do I reset my password?", "Steps to change a forgotten password", "The volcano erupted in 1883"])
    assert a @ b > a @ c + 0.3


def test_cache_computes_each_text_once(tmp_path):
    e = get_embedder()
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    calls = e.calls
    v1, n1 = embed_cached(e, cache, TEXTS + TEXTS[:1])
    v2, n2 = embed_cached(e, cache, TEXTS[::-1])
    assert (n1, n2) == (3, 0) and e.calls == calls + 1
    assert np.array_equal(v1[:3], v2[::-1]) and np.array_equal(v1[0], v1[3])
    assert cache.count(e.model_id) == 3


def test_unknown_model_and_backend():
    with pytest.raises(EmbedderError, match="use one of minilm or a local model folder"):
        resolve_model("no-such-model")
    with pytest.raises(EmbedderError, match="choose one of: torch, onnx, onnx-int8"):
        get_embedder("minilm", "tpu")


def test_local_sentence_transformers_folder_by_path():
    folder = EMBEDDERS["minilm"].folder()
    e = get_embedder(str(folder), "onnx-int8")
    assert e.name == str(folder) and e.dim == 384 and e.max_tokens == 256
