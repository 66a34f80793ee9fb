"""Serving: the OpenAI-compatible app, its web page, the feedback store and the export of feedback
as training data."""
