"""Base models for fine-tuning, as plain Hugging Face folders.

transformers loads the bundled GGUF (``gguf_file=``) by de-quantising it, but marks the result
quantized, so ``save_pretrained`` and its Trainer refuse it. ``materialise_base`` converts a GGUF
once into an fp32 safetensors folder, cached under ``<workspace>/.ragtune/base/<sha256[:16]>/``
and keyed by the GGUF's hash. ``tiny_llama`` builds a randomly initialised Llama with the real
tokenizer, for training tests that run in seconds.

What un-quantises (transformers 5.24): loading with ``quantization_config=GgufConfig(dequantize=True)``.
The GGUF quantizer then ends in ``HfQuantizer.remove_quantization_config`` (no ``hf_quantizer``,
no ``config.quantization_config``, ``is_quantized = False``) instead of flagging the model. The
weights are the same as a plain ``gguf_file=`` load: for Llama that path de-quantises too and
only keeps the flag.

Folders are written into a hidden ``.tmp-*`` sibling and renamed into place (``files.staged``), so
a killed conversion never leaves a half folder under the final name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ragtune.config import STATE_DIR
from ragtune.errors import ModelError
from ragtune.files import package_version, staged, weights_sha256, write_json
from ragtune.files import utc_now as now
from ragtune.models.bundled import MODELS

BASE_DIR = "base"  # under the workspace's .ragtune/
MARKER = "ragtune-base.json"  # written last into a converted folder: where it came from
FORMAT_VERSION = 1
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER = ("tokenizer.json", "tokenizer.model", "vocab.json")


def materialise_base(model: str | Path, root: Path) -> Path:
    """A Hugging Face folder for ``model``: a registry name (``smollm2``) or a ``.gguf`` file is
    converted once (fp32 safetensors, config, tokenizer with chat template, generation config)
    and cached; a local Hugging Face folder is checked and returned as it is.

    >>> materialise_base("smollm2", ws.root)  # ~15 s the first time, then instant  # doctest: +SKIP
    PosixPath('.../.ragtune/base/b179c9523d0e6a0f')
    """
    name, source = _source(model, Path(root))
    if source.is_dir():
        return check_folder(source)
    sha = weights_sha256(source)
    final = Path(root) / STATE_DIR / BASE_DIR / sha[:16]
    if (final / MARKER).is_file():
        return final
    if final.exists():  # no marker: not ours, or tampered with; convert again
        shutil.rmtree(final)
    try:
        with staged(final) as tmp:
            _convert(source, tmp)
            write_json(tmp / MARKER, {"format_version": FORMAT_VERSION, "name": name, "source": str(source), "sha256": sha,
                                      "dtype": "float32", "transformers": package_version("transformers"), "created": now()})
    except OSError:
        if (final / MARKER).is_file():  # another process finished the same conversion first
            return final
        raise
    return final


def _source(model: str | Path, root: Path) -> tuple[str, Path]:
    """(display name, GGUF file or HF folder) for a registry name or a path (relative to ``root``)."""
    if str(model) in MODELS:
        return str(model), MODELS[str(model)]()
    path = Path(model).expanduser()
    path = path if path.is_absolute() else root / path
    if (path.is_file() and path.suffix.lower() == ".gguf") or path.is_dir():
        return (path.stem if path.is_file() else path.name), path
    raise ModelError(f"base model {str(model)!r} not found or not usable ({path}); set [train] base to one of: "
                     f"{', '.join(MODELS)}, a .gguf file, or a Hugging Face model folder")


def _convert(gguf: Path, dest: Path) -> None:
    """Load the GGUF de-quantised to fp32 and save it as a plain folder into ``dest``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    quiet()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                                     quantization_config=GgufConfig(dequantize=True))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot convert {gguf} with transformers ({str(e).splitlines()[0]}); "
                         "give a GGUF of an architecture transformers supports, or a Hugging Face folder") from None
    if is_quantized(model):  # the un-quantising above is version-specific: fail loudly if it stops working
        raise ModelError(f"transformers {package_version('transformers')} still flags {gguf.name} as quantized after "
                         "de-quantising; use the tested transformers version (see pyproject.toml)")
    model.save_pretrained(str(dest))  # safetensors, config.json, generation_config.json
    tokenizer.save_pretrained(str(dest))  # tokenizer.json, tokenizer_config.json, chat_template.jinja


def is_quantized(model) -> bool:
    """Whether transformers treats ``model`` as quantized (then ``save_pretrained``/Trainer refuse it)."""
    return bool(getattr(model, "is_quantized", False) or getattr(model, "hf_quantizer", None) is not None
                or getattr(model.config, "quantization_config", None) is not None)


def check_folder(folder: Path) -> Path:
    """``folder`` if it is a complete Hugging Face model folder (config, weights, tokenizer)."""
    missing = [what for what, names in (("config.json", ("config.json",)), ("weights (model.safetensors)", WEIGHTS),
                                        ("tokenizer (tokenizer.json)", TOKENIZER))
               if not any((folder / n).is_file() for n in names)]
    if missing:
        raise ModelError(f"{folder} is not a complete Hugging Face model folder: no {', '.join(missing)}; "
                         "give a folder saved with save_pretrained (model and tokenizer), or a .gguf file")
    return folder


def base_identity(path: str | Path) -> dict[str, str]:
    """``{"name", "path", "sha256"}`` of a base model, for model cards. The sha256 is the GGUF's
    for a folder converted from one (what its weights came from), the file's for a ``.gguf``,
    the weights' for any other Hugging Face folder. A registry name stands for its GGUF."""
    if str(path) in MODELS:
        gguf = MODELS[str(path)]()
        return {"name": str(path), "path": str(gguf), "sha256": weights_sha256(gguf)}
    path = Path(path)
    if (path / MARKER).is_file():
        meta = json.loads((path / MARKER).read_text())
        return {"name": meta["name"], "path": str(path), "sha256": meta["sha256"]}
    if path.is_file():
        return {"name": path.stem, "path": str(path), "sha256": weights_sha256(path)}
    return {"name": path.name, "path": str(path), "sha256": weights_sha256(check_folder(path))}


def tiny_llama(folder: Path, tokenizer_from: Path, layers: int = 2, hidden: int = 64, heads: int = 4,
               kv_heads: int = 2, intermediate: int = 128, seed: int = 0) -> Path:
    """A randomly initialised Llama (seeded) with the vocabulary and tokenizer of ``tokenizer_from``
    (a Hugging Face folder or a ``.gguf``), saved as a Hugging Face folder: the real tokenizer and
    chat template on a model small enough to train for a few steps in a test (~3 M parameters
    with SmolLM2's 49k vocabulary, almost all of them the tied embedding)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig

    quiet()
    tokenizer = _tokenizer(Path(tokenizer_from))
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id}
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=2048, tie_word_embeddings=True, **ids)
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's random state
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(**ids)
    with staged(Path(folder), replace=True) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    return Path(folder)


def _tokenizer(source: Path):
    from transformers import AutoTokenizer

    if source.is_file() and source.suffix.lower() == ".gguf":
        return AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    return AutoTokenizer.from_pretrained(str(source))


def quiet() -> None:
    """No transformers progress bars or info logs, and no PEFT deprecation noise, in our output."""
    import warnings

    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
