"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp server) over plain HTTP.

Standard library only. The API key comes from the environment variable named in
``[generate] api_key_env``, never from the config file. Connection errors, 429 and 5xx are
retried ``retries`` times with exponential back-off; every failure ends in one clear message.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Iterator

from ragtune.errors import GeneratorError
from ragtune.generate import Generation, Generator, Messages, Sampling

_RETRY_STATUS = {429, 500, 502, 503, 504}


class OpenAIGenerator(Generator):
    def __init__(self, cfg) -> None:
        self.cfg, self.context_size, self.max_tokens = cfg, cfg.context_size, cfg.max_tokens
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.name = f"openai:{cfg.model}@{cfg.base_url}"

    def format(self, messages: Messages) -> str:
        return json.dumps(messages, indent=2, ensure_ascii=False)  # sent as JSON; the server applies its template

    native_tools = True  # ``call_tools``: the endpoint's own tool calling
    json_object = False  # the endpoint refused OpenAI's json_schema reply format: send llama-cpp-python's spelling

    def _body(self, messages: Messages, stream: bool, max_tokens: int, sampling: Sampling, extra: dict | None) -> bytes:
        body = {"model": self.cfg.model, "messages": messages, "max_tokens": max_tokens, "temperature": sampling.temperature,
                "top_p": sampling.top_p, "seed": sampling.seed, "stream": stream, **(extra or {})}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return json.dumps(body).encode()

    def _open(self, messages: Messages, stream: bool, max_tokens: int, sampling: Sampling, extra: dict | None = None):
        if self.json_object and (schema := _asked_schema(extra)):
            extra = {**extra, "response_format": {"type": "json_object", "schema": schema}}
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        for attempt in range(self.cfg.retries + 1):
            request = urllib.request.Request(self.url, data=self._body(messages, stream, max_tokens, sampling, extra), headers=headers, method="POST")
            try:
                return urllib.request.urlopen(request, timeout=self.cfg.timeout_s)
            except urllib.error.HTTPError as e:
                detail = e.read(300).decode("utf-8", "replace").strip()
                refused = e.code in (400, 422) or "response_format" in detail  # llama_cpp.server: 500 naming the field
                if refused and not self.json_object and _asked_schema(extra):
                    try:  # llama-cpp-python's server knows {"type": "json_object", "schema": ...} only
                        self.json_object = True
                        return self._open(messages, stream, max_tokens, sampling, extra)
                    except GeneratorError:
                        self.json_object = False  # not that either: the first refusal is the one to report
                if e.code in _RETRY_STATUS and attempt < self.cfg.retries:
                    time.sleep(0.5 * 2 ** attempt)
                    continue
                hint = f"; set the key in ${self.cfg.api_key_env}" if e.code in (401, 403) else ""
                raise GeneratorError(f"{self.url} answered HTTP {e.code}: {detail or e.reason}{hint}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt < self.cfg.retries:
                    time.sleep(0.5 * 2 ** attempt)
                    continue
                reason = getattr(e, "reason", e)
                raise GeneratorError(f"cannot reach {self.url} ({reason}) after {attempt + 1} tries; "
                                     "start the server or fix [generate] base_url") from None

    def generate(self, messages: Messages, max_tokens: int | None = None, sampling: Sampling | None = None,
                 schema: dict | None = None) -> Generation:
        """One plain (non-streaming) request; time to first token is the whole time."""
        return self._request(messages, max_tokens, sampling, _reply_format(schema))

    def call_tools(self, messages: Messages, tools: list[dict], max_tokens: int | None = None,
                   sampling: Sampling | None = None) -> Generation:
        """One request offering ``tools`` (OpenAI ``tools`` entries, ``tool_choice`` auto): the reply's
        ``tool_calls`` (arguments as the endpoint sent them) in ``Generation.tool_calls``, or its text."""
        return self._request(messages, max_tokens, sampling, {"tools": tools, "tool_choice": "auto"} if tools else None)

    def _request(self, messages: Messages, max_tokens: int | None, sampling: Sampling | None, extra: dict | None) -> Generation:
        t0 = time.perf_counter()
        message, (prompt_tokens, completion_tokens) = self._complete(messages, max_tokens or self.max_tokens,
                                                                     sampling or Sampling.of(self.cfg), extra)
        total = time.perf_counter() - t0
        self.last = Generation(message.get("content") or "", self.format(messages), prompt_tokens, completion_tokens, total, total,
                               tool_calls=message.get("tool_calls") or None)
        return self.last

    def _stream(self, messages: Messages, max_tokens: int, sampling: Sampling, schema: dict | None = None) -> Iterator[str]:
        """Server-sent events. Usage comes from the last event when the server honours
        ``stream_options.include_usage``; otherwise (llama.cpp's server) the completion counts one
        token per content event, as servers send them, and the prompt is estimated."""
        prompt_tokens = completion_tokens = deltas = 0
        with self._open(messages, True, max_tokens, sampling, _reply_format(schema)) as response:
            for raw in response:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = _parse(data, self.url)
                usage = event.get("usage") or {}
                prompt_tokens = usage.get("prompt_tokens", prompt_tokens)
                completion_tokens = usage.get("completion_tokens", completion_tokens)
                for choice in event.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        deltas += 1
                        yield piece
        self._usage = (prompt_tokens or self.count_tokens(self.format(messages)), completion_tokens or deltas)

    def _complete(self, messages: Messages, max_tokens: int, sampling: Sampling,
                  extra: dict | None = None) -> tuple[dict, tuple[int, int]]:
        with self._open(messages, False, max_tokens, sampling, extra) as response:
            event = _parse(response.read().decode("utf-8", "replace"), self.url)
        try:
            message = event["choices"][0]["message"]
            if not isinstance(message, dict) or not (isinstance(message.get("content"), str) or message.get("tool_calls")):
                raise TypeError
        except (KeyError, IndexError, TypeError):
            raise GeneratorError(f"{self.url} answered JSON without choices[0].message.content: {str(event)[:200]}") from None
        usage = event.get("usage") or {}
        return message, (usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))


def _reply_format(schema: dict | None) -> dict | None:
    """Structured output: endpoints that honour it (OpenAI, vLLM, llama.cpp's C++ server) constrain the reply."""
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "reply", "strict": True, "schema": schema}}} if schema else None


def _asked_schema(extra: dict | None) -> dict | None:
    """The JSON schema a request asks for in OpenAI's ``json_schema`` reply format, if it does."""
    fmt = (extra or {}).get("response_format") or {}
    return fmt["json_schema"]["schema"] if fmt.get("type") == "json_schema" else None


def _parse(data: str, url: str) -> dict:
    try:
        event = json.loads(data)
    except ValueError:
        raise GeneratorError(f"{url} answered something that is not JSON ({data[:120]!r}); is it an OpenAI-compatible endpoint?") from None
    if not isinstance(event, dict):
        raise GeneratorError(f"{url} answered JSON that is not an object ({data[:120]!r})")
    if "error" in event:
        raise GeneratorError(f"{url} reported an error: {str(event['error'])[:200]}")
    return event
