"""Demonstration data for supervised fine-tuning: load, validate, split, import from QA, write.

JSONL (or ``.jsonl.gz``), one object per line, in the formats TRL's ``SFTTrainer`` reads:

* conversational::

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}]}

  roles are system, user or assistant; every content a non-empty string; at least one user turn;
  the last turn is the assistant's. **Every assistant turn carries loss** (is learned), not only
  the last; system and user turns are context. An agent trace (assistant turns with ``tool_calls``,
  ``tool`` turns with results, as ``ragtune data traces-to-sft`` writes it) is rendered the way the
  agent prompts a model (``agent.protocol.as_text``): its assistant turns become JSON actions.
* prompt-completion: ``{"prompt": "...", "completion": "..."}``, or TRL's conversational variant
  with ``prompt`` a list of messages and ``completion`` a string or a list of one assistant message.
  The completion becomes the final assistant turn. (Assistant turns inside a conversational prompt
  are learned too once normalised, unlike TRL's completion-only loss.)
* any other rows through a field mapping: ``load_examples(path, prompt_field="question",
  completion_field="answer")`` (GSM8K); the fields hold strings (or message lists, as above).

Every row becomes an ``Example(id, messages, metadata)``: ``id`` is the row's ``id`` (else its line
number), ``metadata`` its other scalar fields plus the contents of a ``metadata`` object.
``system`` (an argument) is added as the first turn of every example that has no system turn.
Problems are reported together, by line number, as one ``DatasetError`` before any training.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

from ragtune.errors import ConfigError, DatasetError
from ragtune.files import read_jsonl
from ragtune.types import Example, QAItem

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = typing.get_args(Role)
Messages = list[dict[str, str]]
MAX_ERRORS = 10
FORMATS = "{\"messages\": [...]} or {\"prompt\": ..., \"completion\": ...}"


# -- loading ----------------------------------------------------------------------------------
def load_examples(path: Path, prompt_field: str | None = None, completion_field: str | None = None,
                  system: str | None = None) -> list[Example]:
    """Read and validate an SFT JSONL file; every problem is reported together, by line."""
    path = Path(path)
    if (prompt_field is None) != (completion_field is None):
        raise ConfigError("prompt_field and completion_field go together: give both "
                          "(e.g. --prompt-field question --completion-field answer) or neither")
    if not path.is_file():
        raise DatasetError(f"{path}: no such file (an SFT JSONL file: one {FORMATS} object per line)")
    rows, errors = [], []
    for n, row in read_jsonl(path):
        try:
            rows.append((n, _example(row, n, prompt_field, completion_field, system)))
        except ValueError as e:
            errors.append((n, str(e)))
    errors = [msg for _, msg in sorted(errors + _duplicates(rows))]
    if errors:
        more = f" (and {len(errors) - MAX_ERRORS} more)" if len(errors) > MAX_ERRORS else ""
        raise DatasetError(f"{path}: {len(errors)} bad row(s){more}:\n  " + "\n  ".join(errors[:MAX_ERRORS]))
    if not rows:
        raise DatasetError(f"{path}: no examples in the file (one {FORMATS} object per line)")
    return [ex for _, ex in rows]


def _example(row: Any, n: int, prompt_field: str | None, completion_field: str | None,
             system: str | None) -> Example:
    if isinstance(row, ValueError):
        raise row
    if not isinstance(row, dict):
        raise ValueError(f"line {n}: expected a JSON object, got {type(row).__name__}")
    if prompt_field and completion_field:
        messages = _prompt_completion(row, n, prompt_field, completion_field)
        used = {prompt_field, completion_field}
    elif "messages" in row and _uses_tools(row["messages"]):
        messages, used = tool_turns(row["messages"], n), {"messages"}
    elif "messages" in row:
        messages, used = check_turns(row["messages"], n, "messages"), {"messages"}
    elif "prompt" in row or "completion" in row:
        messages, used = _prompt_completion(row, n, "prompt", "completion"), {"prompt", "completion"}
    else:
        raise ValueError(f"line {n}: no 'messages' and no 'prompt'/'completion' (fields: {', '.join(row) or 'none'}); "
                         "map other fields with prompt_field/completion_field (--prompt-field/--completion-field)")
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    _check_conversation(messages, n)
    return Example(str(row.get("id", n)), messages, _metadata(row, used | {"id"}))


def _prompt_completion(row: dict, n: int, prompt_key: str, completion_key: str) -> Messages:
    prompt, completion = row.get(prompt_key), row.get(completion_key)
    if isinstance(prompt, list):
        turns = check_turns(prompt, n, prompt_key)
    elif isinstance(prompt, str) and prompt.strip():
        turns = [{"role": "user", "content": prompt}]
    else:
        raise ValueError(f"line {n}: missing or empty '{prompt_key}' (a string or a list of messages)")
    if isinstance(completion, list):
        reply = check_turns(completion, n, completion_key)
        if len(reply) != 1 or reply[0]["role"] != "assistant":
            raise ValueError(f"line {n}: '{completion_key}' as a list must hold exactly one assistant message")
        return turns + reply
    if not isinstance(completion, str) or not completion.strip():
        raise ValueError(f"line {n}: missing or empty '{completion_key}' (a string or a list of one assistant message)")
    return turns + [{"role": "assistant", "content": completion}]


def check_turns(value: Any, n: int, key: str) -> Messages:
    """A list of {"role", "content"} objects, checked turn by turn (other keys are dropped)."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"line {n}: '{key}' must be a non-empty list of {{\"role\", \"content\"}} objects")
    turns = []
    for i, turn in enumerate(value):
        where = f"line {n}: {key}[{i}]"
        if not isinstance(turn, dict):
            raise ValueError(f"{where}: expected an object with 'role' and 'content', got {type(turn).__name__}")
        role, content = turn.get("role"), turn.get("content")
        if role not in ROLES:
            raise ValueError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"{where}: missing or empty 'content' (a non-empty string)")
        turns.append({"role": role, "content": content})
    return turns


def _uses_tools(value: Any) -> bool:
    return isinstance(value, list) and any(isinstance(t, dict) and (t.get("tool_calls") or t.get("role") == "tool") for t in value)


def tool_turns(value: list, n: int) -> Messages:
    """An agent trace in TRL's format (assistant ``tool_calls`` with ``function.name``/``arguments``, then
    ``tool`` turns), checked and rendered as the agent renders it for a template without tools
    (``agent.protocol.as_text``: each assistant turn its JSON action), so training sees what inference sends."""
    from ragtune.agent.protocol import as_text, call_arguments

    plain = []
    for i, turn in enumerate(value):
        where = f"line {n}: messages[{i}]"
        if not isinstance(turn, dict):
            raise ValueError(f"{where}: expected an object with 'role' and 'content', got {type(turn).__name__}")
        if turn.get("role") == "assistant" and turn.get("tool_calls"):
            calls = turn["tool_calls"]
            if not isinstance(calls, list) or len(calls) != 1:
                raise ValueError(f"{where}: 'tool_calls' must hold exactly one call (the agent makes one per step)")
            f = calls[0].get("function") if isinstance(calls[0], dict) else None
            try:
                if not isinstance(f, dict) or not isinstance(f.get("name"), str):
                    raise ValueError
                args = call_arguments(f.get("arguments"))
            except ValueError:
                raise ValueError(f"{where}: a tool call needs function.name (a string) and function.arguments (an object)") from None
            plain.append({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": f["name"], "arguments": args}}]})
        elif turn.get("role") == "tool":
            if not isinstance(turn.get("content"), str):
                raise ValueError(f"{where}: a tool turn needs 'content' (the tool's result as a string)")
            plain.append({"role": "tool", "content": turn["content"]})
        else:
            plain.extend(check_turns([turn], n, "messages"))
    return as_text(plain)


def _check_conversation(messages: Messages, n: int) -> None:
    roles = [m["role"] for m in messages]
    if "user" not in roles:
        raise ValueError(f"line {n}: no user turn (an example needs at least one)")
    if roles[-1] != "assistant":
        raise ValueError(f"line {n}: the last turn is the {roles[-1]}'s; it must be the assistant's (what is learned)")


def _metadata(row: dict, used: set[str]) -> dict[str, Any]:
    """The row's other scalar fields, plus the contents of its ``metadata`` object."""
    meta = {k: v for k, v in row.items() if k not in used and isinstance(v, (str, int, float, bool))}
    nested = row.get("metadata")
    return {**meta, **nested} if isinstance(nested, dict) else meta


def _duplicates(rows: list[tuple[int, Example]]) -> list[tuple[int, str]]:
    """(line, problem) for rows repeating an earlier row's messages or id."""
    errors, by_messages, by_id = [], {}, {}
    for n, ex in rows:
        first = by_messages.setdefault(_key(ex.messages), n)
        if first != n:
            errors.append((n, f"line {n}: duplicate of line {first} (the same messages)"))
        elif by_id.setdefault(ex.id, n) != n:
            errors.append((n, f"line {n}: duplicate id {ex.id!r} (also on line {by_id[ex.id]}; "
                              "rows without an id get their line number)"))
    return errors


def _key(messages: Messages) -> str:
    return json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)


# -- checks -----------------------------------------------------------------------------------
def overlap(train: Iterable[Example], eval_set: Iterable[Example]) -> list[str]:
    """Eval examples whose prompt (every turn but the last assistant one) is also a train prompt.

    Contents are compared with case and runs of whitespace ignored.
    """
    seen: dict[str, list[str]] = {}
    for ex in train:
        seen.setdefault(_prompt_key(ex), []).append(ex.id)
    return [f"eval example {ex.id!r} has the same prompt as train example(s) {', '.join(map(repr, seen[k]))}"
            for ex in eval_set if (k := _prompt_key(ex)) in seen]


def _prompt_key(ex: Example) -> str:
    return json.dumps([[m["role"], " ".join(m["content"].split()).casefold()] for m in ex.messages[:-1]])


# -- splitting --------------------------------------------------------------------------------
def split(examples: list[Example], eval_fraction: float, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """(train, eval): an example goes to eval when a hash of (seed, id) falls below ``eval_fraction``.

    Each example's side depends only on its id and the seed, so appending rows never moves the
    old ones. With ``eval_fraction > 0`` and two or more examples, eval gets at least one and
    train keeps at least one (the examples with the lowest / highest hashes). Order is kept.
    """
    if not 0 <= eval_fraction < 1:
        raise ConfigError(f"eval_fraction = {eval_fraction}: must be at least 0 and below 1 (e.g. 0.1)")
    scores = {ex.id: unit_hash(ex.id, seed) for ex in examples}
    to_eval = {i for i, s in scores.items() if s < eval_fraction}
    if eval_fraction > 0 and len(scores) >= 2:
        if not to_eval:
            to_eval = {min(scores, key=scores.__getitem__)}
        elif len(to_eval) == len(scores):
            to_eval -= {max(scores, key=scores.__getitem__)}
    return [ex for ex in examples if ex.id not in to_eval], [ex for ex in examples if ex.id in to_eval]


def unit_hash(text: str, seed: int) -> float:
    """A number in [0, 1) fixed by (seed, text): the seeded order and splits of examples and questions."""
    digest = hashlib.sha256(f"{seed}\0{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# -- importing and writing --------------------------------------------------------------------
def from_qa(items: list[QAItem], chain=None, k: int = 0, system: str | None = None, *,
            count_tokens: Callable[[str], int] | None = None, log: Callable[[str], None] | None = None) -> list[Example]:
    """QA items as demonstrations: the question -> its first gold answer.

    With a RAG ``Chain`` and ``k > 0`` the user turn carries the top-k retrieved chunks, packed and
    rendered exactly as that chain does it (its template and ``[rag] context_tokens``;
    ``count_tokens`` defaults to the chain generator's) — RAFT-style data.
    ``[rag] min_similarity`` is not applied: every question keeps what was retrieved.
    ``system`` replaces the template's system text (k > 0) or is added as a system turn (k = 0).
    Retrieval-only items (no answers) are skipped; ``log`` gets one line saying how many.
    """
    if k < 0:
        raise ConfigError(f"k = {k}: give 0 (question only) or the number of retrieved chunks to put in the prompt")
    if k > 0 and chain is None:
        raise ConfigError(f"k = {k} retrieves chunks and needs a workspace's RAG chain: pass chain (run inside a workspace, "
                          "or --workspace DIR), or k = 0")
    answerable = [it for it in items if it.answers]
    skipped = len(items) - len(answerable)
    if skipped and log:
        log(f"skipped {skipped} retrieval-only question(s) (no answers to learn from)")
    if not answerable:
        raise DatasetError(f"none of the {len(items)} question(s) has an answer: nothing to train on "
                           "(retrieval-only sets such as BEIR cannot be turned into demonstrations)")
    prompt = _rag_prompter(chain, k, count_tokens) if k > 0 else _plain_prompter
    return [_qa_example(it, *prompt(it.question), system) for it in answerable]


def _plain_prompter(question: str) -> tuple[Messages, dict[str, Any]]:
    return [{"role": "user", "content": question}], {}


def _rag_prompter(chain, k: int, count_tokens: Callable[[str], int] | None):
    from ragtune.rag.prompt import pack, render

    count = count_tokens or chain.generator.count_tokens

    def prompt(question: str) -> tuple[Messages, dict[str, Any]]:
        sources, dropped = pack(chain.retriever.search(question, k=k), count, chain.config.context_tokens)
        meta = {"k": k, "retrieved": [s.hit.doc_id for s in sources], "dropped": len(dropped)}
        return render(chain.template, question, sources), meta

    return prompt


def _qa_example(item: QAItem, messages: Messages, meta: dict[str, Any], system: str | None) -> Example:
    if system and messages[0]["role"] == "system":
        messages = [{"role": "system", "content": system}, *messages[1:]]
    elif system:
        messages = [{"role": "system", "content": system}, *messages]
    meta = {**item.metadata, "question": item.question, **meta}
    if item.doc_ids and "retrieved" in meta:
        from ragtune.evaluate.qa_eval import gold_doc

        meta["gold_retrieved"] = any(gold_doc(d, item.doc_ids) for d in meta["retrieved"])
    return Example(item.id, [*messages, {"role": "assistant", "content": item.answers[0]}], meta)


def write_examples(examples: Iterable[Example], path: Path) -> int:
    """Write examples in the ``messages`` format (gzip when the name ends .gz); ``load_examples`` reads them back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.name.endswith(".gz") else open
    n = 0
    with opener(path, "wt", encoding="utf-8") as f:
        for ex in examples:
            row = {"id": ex.id, "messages": ex.messages, **({"metadata": ex.metadata} if ex.metadata else {})}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
