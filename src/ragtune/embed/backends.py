"""Embedding backends. All share the model's own tokenizer (``tokenizer.json``), mean pooling
and L2 normalisation, so their vectors are comparable and searched by dot product."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ragtune.files import cache_dir, weights_sha256
from ragtune.errors import EmbedderError

ONNX_RECIPE = 1  # bump when the export/optimise/quantise steps change: new cache files


class Embedder:
    """Base: tokenizer, limits and identity. Subclasses implement ``_forward``."""

    def __init__(self, name: str, folder: Path, backend: str, batch_size: int, threads: int) -> None:
        from tokenizers import Tokenizer

        if not (folder / "tokenizer.json").exists():
            raise EmbedderError(f"{folder} has no tokenizer.json (a fast tokenizer is needed for token-aware chunking)")
        self.name, self.folder, self.backend = name, folder, backend
        self.batch_size, self.threads = batch_size, threads
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.max_tokens = _max_seq_length(folder)
        config = json.loads((folder / "config.json").read_text())
        self.dim = int(config.get("hidden_size") or config["dim"])
        self.model_id = f"{name}/{backend}@{weights_sha256(folder)[:16]}"
        self.tokens_seen = 0  # real (non-padding) tokens embedded, for throughput figures
        self.calls = 0
        self._queries: dict[str, np.ndarray] = {}  # recent query vectors: search + rerank + abstain share one

    def embed_query(self, text: str) -> np.ndarray:
        """One text's vector, remembered for the next few calls (a question is embedded once per ask)."""
        if text not in self._queries:
            if len(self._queries) >= 64:
                self._queries.pop(next(iter(self._queries)))
            self._queries[text] = self.embed([text])[0]
        return self._queries[text]

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text (texts longer than the model's limit are truncated)."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=True)
        lengths = np.array([min(len(e.ids), self.max_tokens) for e in encodings])
        order = np.argsort(-lengths, kind="stable")  # similar lengths together: little padding
        out = np.empty((len(texts), self.dim), np.float32)
        for i in range(0, len(texts), self.batch_size):
            idx = order[i:i + self.batch_size]
            width = int(lengths[idx].max())
            ids = np.zeros((len(idx), width), np.int64)
            mask = np.zeros((len(idx), width), np.int64)
            for row, j in enumerate(idx):
                seq = encodings[j].ids[:width]
                if len(encodings[j].ids) > width:  # truncated: keep the closing [SEP]
                    seq = seq[:-1] + [encodings[j].ids[-1]]
                ids[row, :len(seq)] = seq
                mask[row, :len(seq)] = 1
            out[idx] = self._forward(ids, mask)
        self.tokens_seen += int(lengths.sum())
        self.calls += 1
        return out

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @staticmethod
    def _pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        m = mask[..., None].astype(np.float32)
        v = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class TorchEmbedder(Embedder):
    """The reference path: sentence-transformers on torch in fp32 (honours every module of the model)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(self.threads)
        self.model = SentenceTransformer(str(self.folder), device="cpu")

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        self.tokens_seen += sum(min(len(e.ids), self.max_tokens) for e in self.tokenizer.encode_batch(texts))
        self.calls += 1
        return self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False).astype(np.float32)


class OnnxEmbedder(Embedder):
    """ONNX Runtime on a graph exported once from the same weights (cached per user)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._path = onnx_model(self.folder, quantize=self.backend == "onnx-int8")
        self.session = self._session(self.threads)
        self._single = self.session if self.threads == 1 else None  # one text's session, made when first needed
        self._inputs = {i.name for i in self.session.get_inputs()}
        self._cls = _pooling(self.folder) == "cls"

    def _session(self, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # no busy-waiting after a run: the cores go straight to the search that follows
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(self._path), opts, providers=["CPUExecutionProvider"])

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        # one text (a query) runs on one thread: a second gains a short text nothing and takes the core that a
        # hybrid search's keyword query runs on beside it (SciFact hybrid p50 -2 ms); a second session of the
        # same graph costs its weights again (23 MB int8, 90 MB fp32)
        session = self.session
        if len(ids) == 1:
            session = self._single = self._single or self._session(1)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = session.run(None, {k: v for k, v in feed.items() if k in self._inputs})[0]
        if self._cls:
            mask = np.zeros_like(mask)
            mask[:, 0] = 1
        return self._pool(hidden, mask)


def onnx_model(folder: Path, quantize: bool) -> Path:
    """Path of the cached ONNX graph for ``folder``; exported (and quantised) on first use."""
    tag = f"{weights_sha256(folder)[:16]}-r{ONNX_RECIPE}"
    fp32 = cache_dir() / "onnx" / f"{tag}-fp32.onnx"
    target = cache_dir() / "onnx" / f"{tag}-int8.onnx" if quantize else fp32
    if target.exists():
        return target
    fp32.parent.mkdir(parents=True, exist_ok=True)
    if not fp32.exists():
        _export_fused(folder, fp32)
    if quantize:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        os.replace(tmp, target)
    return target


def _export_fused(folder: Path, target: Path) -> None:
    """torch.onnx export of the encoder, then ONNX Runtime's transformer fusions (attention, GELU, LayerNorm)."""
    import logging
    import warnings

    import torch
    from transformers import AutoModel

    class Encoder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    model = AutoModel.from_pretrained(str(folder)).eval()
    raw = target.with_suffix(f".{os.getpid()}.raw")
    ids = torch.ones(2, 16, dtype=torch.long)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Encoder(model), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(raw),
                          input_names=names, output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]})
    from onnxruntime.transformers import optimizer

    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    config = model.config
    kind = config.model_type if config.model_type in ("bert", "roberta", "distilbert") else None
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    if kind:
        fused = optimizer.optimize_model(str(raw), model_type="bert" if kind == "roberta" else kind,
                                         num_heads=config.num_attention_heads, hidden_size=config.hidden_size)
        fused.save_model_to_file(str(tmp))
        raw.unlink()
    else:
        raw.rename(tmp)
    os.replace(tmp, target)


def _pooling(folder: Path) -> str:
    """'mean' or 'cls' from the sentence-transformers pooling config; other set-ups need torch."""
    modules = json.loads((folder / "modules.json").read_text()) if (folder / "modules.json").exists() else []
    extra = [m["type"].rsplit(".", 1)[-1] for m in modules if m["type"].rsplit(".", 1)[-1] not in ("Transformer", "Pooling", "Normalize")]
    if extra:
        raise EmbedderError(f"{folder} has modules {extra} that the ONNX backends do not run; set embed.backend = \"torch\"")
    try:
        pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    except (OSError, ValueError):
        return "mean"
    if pooling.get("pooling_mode_cls_token"):
        return "cls"
    if pooling.get("pooling_mode_mean_tokens", True):
        return "mean"
    raise EmbedderError(f"{folder}: pooling {pooling} is not supported by the ONNX backends; set embed.backend = \"torch\"")


def _max_seq_length(folder: Path) -> int:
    for name in ("sentence_bert_config.json", "tokenizer_config.json"):
        try:
            data = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        value = data.get("max_seq_length") or data.get("model_max_length")
        if isinstance(value, int) and 0 < value < 100_000:
            return value
    return 512
