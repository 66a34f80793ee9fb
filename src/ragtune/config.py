"""The workspace configuration (``ragtune.toml``), grouped by stage and validated.

Each setting is a dataclass field whose ``metadata["doc"]`` is its one-line documentation;
``render_toml`` writes the file that ``ragtune init`` creates from these same fields, so the
documentation in the file cannot drift from the code. Validation errors name the key and what
would be valid.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ragtune.errors import ConfigError

CONFIG_FILE = "ragtune.toml"
STATE_DIR = ".ragtune"  # beside ragtune.toml: the index, caches, models, runs
THREADS_ENV = "RAGTUNE_THREADS"  # the default of every `threads = 0` setting (CI, containers, parallel test workers)

# The valid choices, once: modules that check a choice derive their lists from these.
EmbedBackend = Literal["torch", "onnx", "onnx-int8"]
RetrieveMode = Literal["dense", "bm25", "hybrid"]
GenerateBackend = Literal["llamacpp", "transformers", "openai"]
StoreBackend = Literal["lancedb", "pgvector"]
AgentCalls = Literal["json", "native"]
IngestEngine = Literal["local", "ray"]


def env_threads() -> int:
    """``$RAGTUNE_THREADS`` as a number (0 when unset)."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if value and not value.isdigit():
        raise ConfigError(f"${THREADS_ENV} = {value!r}: give a whole number of threads, or unset it")
    return int(value or 0)


def cpu_threads(configured: int = 0) -> int:
    """Threads for a CPU backend: a ``threads`` setting, else ``$RAGTUNE_THREADS``, else every core."""
    return configured or env_threads() or os.cpu_count() or 1


def _f(default: Any, doc: str) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass
class IngestConfig:
    """Loading files and cutting them into chunks."""

    include: list[str] = _f([], "Glob patterns of files to take from folders; empty = every supported type.")
    exclude: list[str] = _f([".*", "**/.*", "**/.*/**", "**/node_modules/**"], "Glob patterns to skip (matched against the path relative to the folder).")
    chunk_tokens: int = _f(256, "Most tokens per chunk (the embedder's tokenizer), title and heading path included.")
    chunk_overlap: int = _f(32, "Tokens of trailing sentences repeated at the start of the next chunk of the same section.")
    commit_chunks: int = _f(1024, "Chunks per index commit (whole files only); a killed ingest resumes from the last commit.")
    max_file_mb: float = _f(50.0, "Files larger than this are refused with a message (raise it for big corpora).")
    record_id_field: str = _f("id", "JSON/JSONL records: field with the record id ('_id' is tried when this is missing).")
    record_title_field: str = _f("title", "JSON/JSONL records: field with the title (optional in each record).")
    record_text_field: str = _f("text", "JSON/JSONL records: field with the body text (required in each record).")
    record_metadata_fields: list[str] = _f([], "JSON/JSONL records: fields kept as metadata; empty = every other scalar field.")
    engine: IngestEngine = _f("local", "local = load, chunk and embed in this process; ray = on a Ray cluster's workers, committed here (pip install 'ragtune[ray]'; docs/scale.md).")
    ray_address: str = _f("auto", "ray: the cluster: auto = $RAY_ADDRESS or the one `ray start` began on this machine; local = a private one for this run; HOST:PORT; ray://HOST:PORT.")
    ray_actors: int = _f(0, "ray: embedding actors, each loading the model once and taking [embed] threads CPUs (at least 1); 0 = as many as the cluster's CPUs allow.")


@dataclass
class EmbedConfig:
    """Turning chunks and queries into vectors."""

    model: str = _f("minilm", "Registry name (see `ragtune embedders`) or a local sentence-transformers folder.")
    backend: EmbedBackend = _f("onnx-int8", "torch = sentence-transformers; onnx = ONNX Runtime fp32 (fused); onnx-int8 = dynamic int8 quantisation.")
    batch_size: int = _f(64, "Texts per forward pass.")
    threads: int = _f(0, "CPU threads for the embedder; 0 = $RAGTUNE_THREADS, else all cores.")


@dataclass
class RetrieveConfig:
    """Searching the index."""

    mode: RetrieveMode = _f("hybrid", "dense = vectors, bm25 = keywords, hybrid = both fused by reciprocal rank.")
    k: int = _f(5, "Results returned by a search.")
    candidates: int = _f(50, "Hybrid: results taken from each retriever before fusion.")
    rrf_k: int = _f(60, "Hybrid: the RRF constant (score = weight / (rrf_k + rank)).")
    dense_weight: float = _f(1.0, "Hybrid: weight of the dense ranking in the fusion.")
    bm25_weight: float = _f(1.0, "Hybrid: weight of the BM25 ranking in the fusion.")


@dataclass
class RagConfig:
    """Building the prompt from retrieved chunks (augmentation)."""

    template: str = _f("default", "Prompt template: 'default' or a Jinja2 file (relative to the workspace); a line '---' splits system from user text.")
    context_tokens: int = _f(768, "Most tokens of retrieved text in the prompt; lower-ranked chunks are dropped first (and reported).")
    min_similarity: float = _f(0.2, "If no retrieved chunk has at least this cosine similarity to the question, answer 'I don't know' without generating.")


@dataclass
class GenerateConfig:
    """Writing the answer."""

    backend: GenerateBackend = _f("llamacpp", "llamacpp = a GGUF via llama-cpp-python; transformers = a local HF model (+ PEFT adapter); openai = any OpenAI-compatible HTTP endpoint.")
    model: str = _f("smollm2", "'smollm2' (bundled SmolLM2-135M-Instruct GGUF), a .gguf file, a Hugging Face model folder, a registered fine-tuned model's name (served by transformers), or the endpoint's model name.")
    adapter: str = _f("", "transformers: a PEFT adapter folder applied on top of the model; empty = none.")
    context_size: int = _f(2048, "Context window in tokens (prompt + answer).")
    max_tokens: int = _f(256, "Most tokens generated per answer.")
    temperature: float = _f(0.0, "Sampling temperature; 0 = greedy (reproducible).")
    top_p: float = _f(1.0, "Nucleus sampling threshold.")
    seed: int = _f(0, "Random seed for sampling.")
    threads: int = _f(0, "llamacpp/transformers: CPU threads; 0 = $RAGTUNE_THREADS, else all cores.")
    base_url: str = _f("http://127.0.0.1:8000/v1", "openai: the endpoint's base URL (OpenAI, vLLM, Ollama, llama.cpp server).")
    api_key_env: str = _f("OPENAI_API_KEY", "openai: name of the environment variable holding the API key (never the key itself).")
    timeout_s: float = _f(60.0, "openai: seconds to wait for a response.")
    retries: int = _f(2, "openai: retries on connection errors and 429/5xx responses.")


@dataclass
class StoreConfig:
    """Where chunks, vectors and the keyword index live."""

    backend: StoreBackend = _f("lancedb", "Vector + full-text store: lancedb is embedded (no server); pgvector = a PostgreSQL server with the pgvector extension (set url).")
    path: str = _f(".ragtune/index", "Store location, relative to the workspace folder (pgvector: names the index's tables unless table is set).")
    uri: str = _f("", "lancedb: keep the index in object storage instead of path, s3://bucket/prefix (the bucket must exist); empty = path.")
    s3_endpoint: str = _f("", "lancedb on s3://: the endpoint of an S3-compatible server (MinIO, SeaweedFS, Ceph, R2), e.g. https://s3.internal:9000; empty = AWS.")
    s3_region: str = _f("", "lancedb on s3://: the bucket's region; empty = $AWS_REGION, else us-east-1.")
    s3_allow_http: bool = _f(False, "lancedb on s3://: allow an http:// s3_endpoint (requests unencrypted).")
    s3_key_env: str = _f("AWS_ACCESS_KEY_ID", "lancedb on s3://: name of the environment variable holding the access key id; empty (with s3_secret_env) = the AWS default chain (instance or container role).")
    s3_secret_env: str = _f("AWS_SECRET_ACCESS_KEY", "lancedb on s3://: name of the environment variable holding the secret access key (never the key itself).")
    url: str = _f("", "pgvector: the server and database, postgresql://user@host:port/db (no password here).")
    password_env: str = _f("RAGTUNE_PG_PASSWORD", "pgvector: name of the environment variable holding the password (unset = libpq's PGPASSWORD or ~/.pgpass).")
    table: str = _f("", "pgvector: prefix of the index's tables (lowercase letters, digits, '_'); empty = derived from the index's full path, so workspaces can share a database.")


@dataclass
class TrainConfig:
    """Fine-tuning (`ragtune finetune sft`); flags of the command override these."""

    base: str = _f("smollm2", "Base model: 'smollm2' (the bundled GGUF, converted once to a Hugging Face folder) or a local Hugging Face model folder.")
    method: Literal["lora", "full"] = _f("lora", "lora = train a small adapter (PEFT); full = train every weight.")
    epochs: float = _f(1.0, "Passes over the training examples (fractions allowed).")
    learning_rate: float = _f(2e-4, "Peak learning rate (LoRA likes ~2e-4, full fine-tuning ~2e-5).")
    schedule: Literal["cosine", "linear", "constant"] = _f("cosine", "Learning-rate decay after the warm-up.")
    warmup_ratio: float = _f(0.03, "Share of the steps spent warming the learning rate up from 0.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    batch_size: int = _f(8, "Examples per forward pass (batched by similar length: little padding).")
    grad_accum: int = _f(1, "Forward passes per optimiser step (effective batch = batch_size x grad_accum x processes).")
    max_length: int = _f(512, "Most tokens per example (chat template included); longer examples are refused by validation.")
    lora_r: int = _f(16, "LoRA rank.")
    lora_alpha: int = _f(32, "LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = _f(0.0, "Dropout on the LoRA path.")
    lora_targets: list[str] = _f(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "Module names that get LoRA adapters.")
    eval_fraction: float = _f(0.05, "Share of the examples held out for eval loss (and the forgetting check); 0 = none.")
    early_stopping: int = _f(0, "Stop when eval loss has not improved for this many epochs; 0 = off.")
    activation_checkpointing: bool = _f(True, "Keep only each layer's input during the forward pass and recompute the rest in the backward pass: a fraction of the memory for ~30% more compute.")
    forgetting_threshold: float = _f(0.1, "Flag the model when the general-text probe's perplexity rises by more than this share (0.1 = 10%), or its score on the shipped general prompts falls by more than this (0.1 = 10 points).")
    check_prompts: bool = _f(True, "Answer the shipped general prompts with the base and the tuned model (forgetting check).")
    check_answers: int = _f(100, "Held-out examples whose final answer (GSM8K-style '#### 42') is generated and checked, base vs tuned; 0 = skip.")
    check_max_tokens: int = _f(320, "Most new tokens per generated held-out answer in that check.")
    checkpoint_steps: int = _f(50, "Save a resumable checkpoint every N optimiser steps (and at the end of each epoch).")
    seed: int = _f(0, "Seed for data order, eval split and initialisation.")
    threads: int = _f(0, "CPU threads for torch; 0 = $RAGTUNE_THREADS, else torch's default.")


@dataclass
class PreferenceConfig:
    """Learning from preferences without a reward model (`ragtune finetune dpo|kto`); [train] holds the rest."""

    beta: float = _f(0.1, "How far from the base model the tuned one may move: higher = stay closer (DPO/KTO's beta).")
    label_smoothing: float = _f(0.0, "DPO: assume this share of the pairs is labelled the wrong way round (conservative DPO); 0 = off.")
    desirable_weight: float = _f(1.0, "KTO: weight of liked answers (raise it when there are fewer likes than dislikes).")
    undesirable_weight: float = _f(1.0, "KTO: weight of disliked answers.")


@dataclass
class RLConfig:
    """On-policy optimisation against a reward model (`ragtune finetune rl`); [train] holds the model and optimiser settings."""

    algorithm: Literal["rloo", "grpo"] = _f("rloo", "rloo = REINFORCE with the other samples of the prompt as baseline, KL folded into the reward; grpo = group-normalised advantages, KL as a loss term (kl_coef must be > 0).")
    samples: int = _f(4, "Answers sampled per prompt (the group the baseline comes from; at least 2).")
    prompts_per_step: int = _f(4, "Prompts per optimiser step (prompts x samples answers are generated in one batch).")
    steps: int = _f(50, "Optimiser steps (each on freshly sampled answers); the prompts are cycled in a seeded order.")
    max_new_tokens: int = _f(64, "Most tokens per sampled answer; an answer cut there counts as truncated.")
    temperature: float = _f(1.0, "Sampling temperature.")
    top_k: int = _f(0, "Sample from the top-k tokens only; 0 = the whole vocabulary.")
    kl_coef: float = _f(0.05, "Weight of the KL divergence to the base model (the reference): the price of moving away from it.")
    kl_stop: float = _f(20.0, "Stop when the mean sequence KL to the base exceeds this (nats) for 3 steps in a row: the policy is drifting; 0 = never.")
    length_penalty: float = _f(0.0, "Subtract this per generated token from the reward (fights answers that win by length).")
    truncation_penalty: float = _f(0.0, "Subtract this from the reward of answers cut at max_new_tokens.")
    eval_prompts: int = _f(64, "Held-out prompts answered by the base and the tuned model after every rl/dpo/kto run (score, win rate, KL, length, distinct-2, end-of-turn rate); 0 = skip.")


@dataclass
class CompareConfig:
    """RAG or fine-tuning? (`ragtune compare`): four arms of one base model on the same held-out questions."""

    test_fraction: float = _f(0.3, "Share of each document's questions held out for the test (a document's only question stays in training, so every test question's document was seen in training).")
    seed: int = _f(0, "Seed of the train/test split and of the changed values of the freshness check.")
    fresh_questions: int = _f(20, "Test questions whose answer is changed in an edited copy of their document, re-ingested, and asked again (freshness); 0 = skip.")
    margin: float = _f(0.02, "F1 difference under which two arms count as equally good: the recommendation then takes the one that follows changed documents best, then the cheaper one.")
    epochs: float = _f(3.0, "Passes over the training questions for both fine-tuned arms (questions are few: one pass teaches little).")
    learn_documents: bool = _f(False, "Also train the fine-tuned arm on the documents' passages (continued pre-training text, as chat turns: the passage's title -> its text).")


@dataclass
class AgentConfig:
    """The tool-using agent (`ragtune agent`): model -> tool call -> result -> model, until an answer or the budget."""

    builtins: list[str] = _f(["search", "read", "calculate", "today"], "Built-in tools the agent may call: search (the workspace index), read (a source's whole section), calculate (safe arithmetic), today.")
    tools: list[str] = _f([], "Python modules whose public functions (or TOOLS list) are tools too, e.g. [\"mypkg.tools\"]; schemas come from type hints and docstrings.")
    calls: AgentCalls = _f("json", "How the model calls tools: json = one JSON action per reply (grammar-constrained on llama.cpp, response_format on openai, strictly parsed everywhere); native = the endpoint's own tool calling (openai backend: tools in the request, tool_calls in the reply).")
    max_steps: int = _f(6, "Most model calls per question; the last one may only answer (loops end by this budget).")
    max_tokens: int = _f(320, "Most tokens per step's reply; strings in actions are bounded to fit it.")
    k: int = _f(3, "Passages the search tool returns per call.")


@dataclass
class ExperimentConfig:
    """Tracking evaluation runs (`ragtune eval qa`, `ragtune experiment run`)."""

    tracking_uri: str = _f("", "MLflow tracking URI; empty = a local store in .ragtune/mlflow.db; 'none' = run folders only.")
    experiment: str = _f("ragtune", "MLflow experiment for runs outside a named sweep (a sweep uses its own name).")


@dataclass
class ServeConfig:
    """The served app (`ragtune serve`): the OpenAI-compatible API, the web page and the feedback store."""

    host: str = _f("127.0.0.1", "Address to listen on; 127.0.0.1 = this machine only (set 0.0.0.0 and api_keys_env to serve a network).")
    port: int = _f(8000, "Port to listen on.")
    api_keys_env: str = _f("", "Name of the environment variable holding the API keys (comma-separated); set = every route needs one. Empty = no keys.")
    feedback_url: str = _f("", "Where feedback is stored: empty = .ragtune/feedback.sqlite; postgresql://user@host/db = shared by several servers (password from PGPASSWORD).")
    cors_origins: list[str] = _f([], "Web origins allowed to call the API from a browser (CORS); empty = none (the app's own page needs none).")
    max_body_kb: int = _f(1024, "Largest request body accepted, in KiB.")
    max_tokens: int = _f(1024, "Most tokens one answer may ask for (a request's max_tokens above it is refused).")


@dataclass
class Config:
    ingest: IngestConfig = field(default_factory=IngestConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    retrieve: RetrieveConfig = field(default_factory=RetrieveConfig)
    rag: RagConfig = field(default_factory=RagConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = CONFIG_FILE) -> "Config":
        sections = {f.name: f for f in dataclasses.fields(cls)}
        for name in data:
            if name not in sections:
                raise ConfigError(f"{origin}: unknown section [{name}]; valid sections: {', '.join(sections)}")
        kwargs = {}
        for name, f in sections.items():
            table = data.get(name, {})
            if not isinstance(table, dict):
                raise ConfigError(f"{origin}: '{name}' must be a table ([{name}])")
            kwargs[name] = _build_section(f.default_factory, table, f"{origin}: [{name}]")  # type: ignore[misc]
        return cls(**kwargs)

    @classmethod
    def load(cls, path: Path) -> "Config":
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e}); fix the file or recreate it with `ragtune init --force`") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
        return cls.from_dict(data, origin=str(path))

    def override(self, section: str, **values: Any) -> "Config":
        """A copy with some settings replaced (CLI flags), validated like the file."""
        current = dataclasses.asdict(self)
        current[section].update({k: v for k, v in values.items() if v is not None})
        return Config.from_dict(current, origin="options")


def _build_section(cls: type, table: dict[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in table:
        if key not in fields:
            raise ConfigError(f"{where} unknown key '{key}'; valid keys: {', '.join(fields)}")
    values = {k: _check_value(f"{where} {k}", hints[k], v) for k, v in table.items()}
    obj = cls(**values)
    _check_ranges(obj, where)
    return obj


def _check_value(key: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{key} = {value!r} is not valid; choose one of: {', '.join(map(str, choices))}")
        return value
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of strings, got {value!r}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {hint.__name__}, got {value!r}")
    return value


_POSITIVE = {"epochs", "check_max_tokens", "learning_rate", "grad_accum", "max_length", "lora_r", "lora_alpha", "checkpoint_steps", "chunk_tokens", "commit_chunks", "context_tokens", "context_size", "max_tokens", "timeout_s", "top_p", "max_file_mb", "batch_size", "k", "candidates", "rrf_k", "port", "max_body_kb", "max_steps"}
_NON_NEGATIVE = {"fresh_questions", "margin", "forgetting_threshold", "check_answers", "warmup_ratio", "weight_decay", "lora_dropout", "eval_fraction", "early_stopping", "chunk_overlap", "threads", "ray_actors", "dense_weight", "bm25_weight", "temperature", "retries"}


def _check_ranges(obj: Any, where: str) -> None:
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if f.name in _POSITIVE and v <= 0:
            raise ConfigError(f"{where} {f.name} = {v} must be greater than 0")
        if f.name in _NON_NEGATIVE and v < 0:
            raise ConfigError(f"{where} {f.name} = {v} must be 0 or more")
    if isinstance(obj, CompareConfig) and not 0 < obj.test_fraction < 1:
        raise ConfigError(f"{where} test_fraction = {obj.test_fraction} must be between 0 and 1 (e.g. 0.3)")
    if isinstance(obj, IngestConfig) and obj.chunk_overlap >= obj.chunk_tokens // 2:
        raise ConfigError(f"{where} chunk_overlap = {obj.chunk_overlap} must be less than half of chunk_tokens ({obj.chunk_tokens})")
    if isinstance(obj, StoreConfig):
        _check_store(obj, where)


def _check_store(store: StoreConfig, where: str) -> None:
    if store.uri and not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^/].*)?", store.uri.rstrip("/")):
        raise ConfigError(f"{where} uri = {store.uri!r}: use s3://BUCKET/PREFIX (object storage), or leave it empty "
                          "for a local index at path")
    if store.uri and store.backend != "lancedb":
        raise ConfigError(f"{where} uri is where a lancedb index lives; {store.backend} uses url (leave uri empty)")
    if store.s3_endpoint and not store.s3_endpoint.startswith(("https://", "http://")):
        raise ConfigError(f"{where} s3_endpoint = {store.s3_endpoint!r}: use https://HOST:PORT (or http:// with s3_allow_http = true)")
    if store.s3_endpoint.startswith("http://") and not store.s3_allow_http:
        raise ConfigError(f"{where} s3_endpoint = {store.s3_endpoint!r} is plain http: use https://, or set "
                          "s3_allow_http = true to send requests unencrypted")


def render_toml(config: Config | None = None) -> str:
    """The documented ragtune.toml for ``config`` (defaults when None)."""
    config = config or Config()
    lines = ["# ragtune workspace settings. Every key is optional; shown here with its current value.", ""]
    for section in dataclasses.fields(config):
        obj = getattr(config, section.name)
        lines.append(f"# {type(obj).__doc__.strip()}")
        lines.append(f"[{section.name}]")
        for f in dataclasses.fields(obj):
            lines.append(f"# {f.metadata['doc']}")
            lines.append(f"{f.name} = {_toml_value(getattr(obj, f.name))}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def set_config_value(root: Path, section: str, key: str, value: str) -> None:
    """Set ``[section] key = "value"`` in ragtune.toml in place: every other line, comment and
    setting stays as it is; the result is validated before it replaces the file."""
    path = Path(root) / CONFIG_FILE
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == f"[{section}]"), None)
    new = f'{key} = "{value}"\n'
    if start is None:
        lines += [f"\n[{section}]\n", new]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
        at = next((i for i in range(start + 1, end) if re.match(rf"\s*{re.escape(key)}\s*=", lines[i])), None)
        if at is None:
            lines.insert(start + 1, new)
        else:
            lines[at] = new
    text = "".join(lines)
    Config.from_dict(tomllib.loads(text), origin=str(path))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
