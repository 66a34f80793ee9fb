"""Scripted generators for the agent tests: replies from a list, what was sent recorded."""

import json

from ragtune.generate import Generation, Generator


class Scripted(Generator):
    """Replies from a list, one per call; records what it was sent."""

    name = "scripted"

    def __init__(self, replies, context_size=2048, constrained=False):
        self.replies, self.sent, self.schemas = list(replies), [], []
        self.context_size, self.constrained = context_size, constrained

    def generate(self, messages, max_tokens=None, sampling=None, schema=None):
        self.sent.append(messages)
        self.schemas.append(schema)
        text = self.replies.pop(0)
        self.last = Generation(text, self.format(messages), self.count_tokens(self.format(messages)), self.count_tokens(text), 0.01, 0.01)
        return self.last


class NativeScripted(Scripted):
    """An endpoint with its own tool calling: a (name, arguments-as-sent) reply is a tool call, a string is text."""

    native_tools = True

    def call_tools(self, messages, tools, max_tokens=None, sampling=None):
        self.sent.append(messages)
        self.schemas.append([t["function"]["name"] for t in tools])
        reply = self.replies.pop(0)
        calls = [{"id": "abc", "type": "function", "function": {"name": reply[0], "arguments": reply[1]}}] if isinstance(reply, tuple) else None
        self.last = Generation("" if calls else reply, self.format(messages), 10, 5, 0.01, 0.01, tool_calls=calls)
        return self.last


def call(tool, **arguments):
    return json.dumps({"tool": tool, "arguments": arguments})
