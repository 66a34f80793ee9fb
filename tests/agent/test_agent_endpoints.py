"""The agent on the openai backend against llama.cpp's own OpenAI server (``llama_cpp.server``) on loopback:
JSON actions constrained by the server's grammar (native tool calling is tested against ``ragtune serve``,
tests/serve/test_tool_calls.py: llama-cpp-python's chatml-function-calling format did not answer within
a minute here)."""

import json

import pytest

from ragtune.agent.loop import Agent
from ragtune.agent.tools import toolbox
from ragtune.config import GenerateConfig
from ragtune.generate.openai import OpenAIGenerator

pytestmark = pytest.mark.slow
QUESTION = "What is 17 times 23? Use the calculator."


def endpoint(base_url):
    return OpenAIGenerator(GenerateConfig(backend="openai", model="smollm2", base_url=base_url, max_tokens=96))


def test_json_actions_constrained_by_llama_cpp_server(llama_server):
    g = endpoint(llama_server)
    answer = Agent(g, lambda sources: toolbox(["calculate", "today"], []), max_steps=3, max_tokens=96).run(QUESTION)
    # llama_cpp.server refuses OpenAI's json_schema format (422); its json_object + schema spelling constrains the reply
    assert g.json_object
    assert answer.usage["invalid_actions"] == 0 and all(s.error != "parse" for s in answer.steps)
    assert all(isinstance(json.loads(s.output, strict=False), dict) for s in answer.steps)  # raw line breaks: its grammar
    assert answer.stopped in ("answer", "budget", "repeat") and 1 <= len(answer.steps) <= 3
    assert all(json.loads(s.prompt)[0]["role"] == "system" for s in answer.steps)  # the exact messages sent
