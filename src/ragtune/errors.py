"""The exception types of ragtune.

Library code raises these; the CLI turns each into one line on stderr and an exit code
(never a traceback for a user mistake). Every message says what to do next.
"""


class RagtuneError(Exception):
    """Base class: a problem the user can fix. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class ConfigError(RagtuneError):
    """A setting in ragtune.toml or a flag has a wrong name, type or value."""

    exit_code = 2


class WorkspaceError(RagtuneError):
    """No workspace where one is needed, or one where none should be."""


class IndexMismatchError(RagtuneError):
    """The index on disk was built with a different embedding model or format."""


class EmbedderError(RagtuneError):
    """An embedding model cannot be found or loaded."""


class LoadError(RagtuneError):
    """One input file cannot be read. Reported per file; the rest of an ingest still lands."""


class DatasetError(RagtuneError):
    """A dataset (questions, demonstrations, a BEIR folder) is missing, or a file in it is malformed."""


class GeneratorError(RagtuneError):
    """A generator cannot be loaded or reached, or its answer cannot be read."""


class ModelError(RagtuneError):
    """A base model or a registered (fine-tuned) model is missing, incomplete, or its name is invalid or taken."""
