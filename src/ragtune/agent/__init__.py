"""The tool-using agent: ``loop.Agent`` runs model -> tool call -> result -> model until an answer or the
step budget; ``tools`` makes tools of plain functions; ``protocol`` is the JSON action format (schema,
prompt, strict parsing, rendering for chat templates); ``calculator`` is the safe arithmetic tool;
``traces`` turns successful runs into SFT data. See docs/agent.md."""
