"""ragtune: RAG or fine-tuning? Build, measure and improve both, offline.

    >>> import ragtune
    >>> ws = ragtune.Workspace.init("my-project")        # doctest: +SKIP
    >>> ws.ingest(["docs/"])                              # doctest: +SKIP
    >>> for hit in ws.search("how do I reset my password?", k=3):   # doctest: +SKIP
    ...     print(hit.rank, hit.source, hit.heading)

Heavy libraries (torch, lancedb, onnxruntime) load only when a verb needs them.
"""

__version__ = "0.1.0"

__all__ = ["Workspace", "__version__"]


def __getattr__(name: str):
    if name == "Workspace":
        from ragtune.workspace import Workspace

        return Workspace
    raise AttributeError(f"module 'ragtune' has no attribute {name!r}")
