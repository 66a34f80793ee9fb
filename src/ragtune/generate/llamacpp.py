"""GGUF models through llama-cpp-python, with the model's own chat template.

The template is applied here (not inside llama.cpp) so the exact prompt text is known: it is
what ``--show-prompt`` prints and what the token counts refer to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from ragtune.errors import GeneratorError
from ragtune.generate import Generator, Messages, Sampling


class LlamaCppGenerator(Generator):
    constrained = True  # a JSON schema becomes a grammar: nothing else can be sampled

    def __init__(self, path: Path, cfg, threads: int) -> None:
        try:
            from llama_cpp import Llama
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError:
            raise GeneratorError("llama-cpp-python is not installed: `ragtune doctor` prints the command that builds it "
                                 "portably (`make llama` in a ragtune checkout)") from None
        if path.is_dir() or path.suffix.lower() != ".gguf":
            raise GeneratorError(f"{path} is not a .gguf file: the llamacpp generator runs GGUF models")
        try:
            self.llm = Llama(model_path=str(path), n_ctx=cfg.context_size, n_threads=threads, seed=cfg.seed, verbose=False)
        except (ValueError, RuntimeError) as e:
            raise GeneratorError(f"cannot load {path} with llama.cpp ({e}); is it a complete GGUF file?") from None
        self.name = f"llamacpp:{path.name}"
        self._grammars: dict[str, object] = {}
        self.cfg, self.context_size, self.max_tokens = cfg, cfg.context_size, cfg.max_tokens
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise GeneratorError(f"{path} has no chat template in its metadata; pick an instruct/chat GGUF")
        eos_id, bos_id = self.llm.token_eos(), self.llm.token_bos()
        text = self.llm._model.token_get_text  # llama-cpp-python does the same to build its own formatter
        self._formatter = Jinja2ChatFormatter(template, eos_token=text(eos_id) if eos_id >= 0 else "",
                                              bos_token=text(bos_id) if bos_id >= 0 else "", stop_token_ids=[eos_id])

    def format(self, messages: Messages) -> str:
        return self._formatter(messages=messages).prompt

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def grammar(self, schema: dict):
        """llama.cpp's grammar for a JSON schema (``generate.gbnf``; built once per schema)."""
        from llama_cpp import LlamaGrammar

        from ragtune.generate.gbnf import to_gbnf

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = LlamaGrammar.from_string(to_gbnf(schema), verbose=False)
        return self._grammars[key]

    def _stream(self, messages: Messages, max_tokens: int, sampling: Sampling, schema: dict | None = None) -> Iterator[str]:
        formatted = self._formatter(messages=messages)
        tokens = self.llm.tokenize(formatted.prompt.encode("utf-8"), add_bos=False, special=True)
        if len(tokens) + 1 > self.context_size:
            raise GeneratorError(f"the prompt has {len(tokens)} tokens, more than [generate] context_size = {self.context_size}")
        pieces = self.llm.create_completion(tokens, max_tokens=min(max_tokens, self.context_size - len(tokens)),
                                            temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed,
                                            stop=formatted.stop, stream=True,
                                            grammar=self.grammar(schema) if schema else None)
        parts = []
        for chunk in pieces:
            piece = chunk["choices"][0]["text"]
            if piece:
                parts.append(piece)
                yield piece
        self._usage = (len(tokens), self.count_tokens("".join(parts)))
