"""The error a user can fix, shared by every role: the CLI prints it in one line (no traceback)
and exits with code 2.  Subclasses add a stable ``code`` where a program reads them
(``adrank.core.artifact.ArtifactError``, ``training.datasets.io.DataError``)."""


class UserError(Exception):
    """An error the user can fix; ``adrank`` prints it without a traceback, exit code 2."""
