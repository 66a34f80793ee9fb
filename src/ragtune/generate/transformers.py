"""Any local Hugging Face causal LM — a model folder, or a GGUF file that transformers
de-quantises on load (``gguf_file=``) — with an optional PEFT adapter on top. This is how
fine-tuned models are served. Runs in fp32 on CPU (bf16 is slower without native support)."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Iterator

from ragtune.errors import GeneratorError
from ragtune.generate import Generator, Messages, Sampling


class TransformersGenerator(Generator):
    def __init__(self, path: Path, cfg, threads: int, adapter: Path | None = None,
                 tokenizer: Path | None = None, name: str | None = None) -> None:
        """``tokenizer``: a folder to take the tokenizer from instead of ``path`` (a registered
        model's ``tokenizer/``); ``name``: how the generator reports itself."""
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)  # PEFT
        torch.set_num_threads(threads)
        gguf = path.is_file() and path.suffix.lower() == ".gguf"
        folder, extra = (path.parent, {"gguf_file": path.name}) if gguf else (path, {})
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer or folder), **({} if tokenizer else extra))
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **extra)
        except (OSError, ValueError) as e:
            raise GeneratorError(f"cannot load {path} with transformers ({str(e).splitlines()[0]}); "
                                 "give a Hugging Face model folder or a .gguf file") from None
        if adapter is not None:
            from peft import PeftModel

            try:
                model = PeftModel.from_pretrained(model, str(adapter))
            except (OSError, ValueError) as e:
                raise GeneratorError(f"cannot load the adapter {adapter} ({str(e).splitlines()[0]})") from None
        if not self.tokenizer.chat_template:
            raise GeneratorError(f"{path} has no chat template; pick an instruct/chat model")
        self.model = model.eval()
        self._torch = torch
        self.cfg, self.context_size, self.max_tokens = cfg, cfg.context_size, cfg.max_tokens
        self.name = name or f"transformers:{path.name}" + (f"+{adapter.name}" if adapter else "")

    def format(self, messages: Messages) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _stream(self, messages: Messages, max_tokens: int, sampling: Sampling, schema: dict | None = None) -> Iterator[str]:
        # schema: not enforced here (no grammar sampler); the caller checks the reply
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        ids = self.tokenizer(self.format(messages), add_special_tokens=False, return_tensors="pt").input_ids
        if ids.shape[1] + 1 > self.context_size:
            raise GeneratorError(f"the prompt has {ids.shape[1]} tokens, more than [generate] context_size = {self.context_size}")
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        self._torch.manual_seed(sampling.seed)
        sampling = ({"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
                    if sampling.temperature > 0 else {"do_sample": False})
        result: dict = {}
        stop = threading.Event()  # set when the reader goes away: generation ends at the next token

        class Stopped(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs) -> bool:
                return stop.is_set()

        def work() -> None:
            with self._torch.inference_mode():
                try:
                    result["out"] = self.model.generate(input_ids=ids, attention_mask=self._torch.ones_like(ids), streamer=streamer,
                                                        max_new_tokens=min(max_tokens, self.context_size - ids.shape[1]),
                                                        pad_token_id=self.tokenizer.eos_token_id,
                                                        stopping_criteria=StoppingCriteriaList([Stopped()]), **sampling)
                except Exception as e:  # surfaced in the caller's thread below
                    result["error"] = e
                    streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            yield from (piece for piece in streamer if piece)
        finally:  # also when the caller closes this generator early
            stop.set()
            thread.join()
        if "error" in result:
            raise GeneratorError(f"generation failed: {result['error']}")
        self._usage = (ids.shape[1], int(result["out"].shape[1] - ids.shape[1]))


def generate_batch(model, tokenizer, conversations: list[Messages], max_new_tokens: int,
                   batch_size: int = 16, no_repeat_ngram: int = 0) -> list[str]:
    """Greedy answers to many conversations at once (left-padded batches of similar length),
    in the input order. For checks over many prompts: one batch of 16 costs little more than one
    answer on a CPU. Works on a model being trained (PEFT or not); its mode is restored."""
    encoded = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True) for m in conversations]
    encoded = [list(e["input_ids"] if hasattr(e, "keys") else e) for e in encoded]
    out = sample_batch(model, encoded, max_new_tokens, pad_token(tokenizer), tokenizer.eos_token_id, batch_size=batch_size,
                       no_repeat_ngram=no_repeat_ngram)
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in out]


def pad_token(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def sample_batch(model, prompts: list[list[int]], max_new_tokens: int, pad_id: int, eos_id: int, batch_size: int = 16,
                 samples: int = 1, temperature: float = 0.0, top_k: int = 0, no_repeat_ngram: int = 0) -> list[list[int]]:
    """The new token ids of ``samples`` answers to each prompt (token ids, chat template applied),
    ``samples`` in a row per prompt, in the input order; each ends with ``eos_id`` unless it was
    cut at ``max_new_tokens``. ``temperature`` 0 is greedy. Prompts of similar length share a
    left-padded batch of ``batch_size`` sequences (prompts x samples)."""
    import torch

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    per_batch = max(1, batch_size // samples)
    answers: list[list[int]] = [[] for _ in range(len(prompts) * samples)]
    sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k or None, "top_p": None} if temperature > 0 else {"do_sample": False}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), per_batch):
                chunk = order[start:start + per_batch]
                width = max(len(prompts[i]) for i in chunk)
                ids = torch.tensor([[pad_id] * (width - len(prompts[i])) + prompts[i] for i in chunk])
                mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in chunk])
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, use_cache=True,
                                     pad_token_id=pad_id, eos_token_id=eos_id, num_return_sequences=samples,
                                     no_repeat_ngram_size=no_repeat_ngram, **sampling)  # no_repeat_ngram 0 = off
                for row in range(out.shape[0]):
                    new = out[row, width:].tolist()
                    if eos_id in new:
                        new = new[: new.index(eos_id) + 1]
                    answers[chunk[row // samples] * samples + row % samples] = new
    finally:
        model.train(was_training)
    return answers
