"""Errors the engine raises for bad input. Each message is one line that says what is wrong
and what to do; the CLI prints it without a traceback and the web app shows it in a form."""


class MergeHubError(Exception):
    """Base of every error meant for a user (not a bug)."""


class InvalidCheckpoint(MergeHubError):
    """A file or directory is not a readable safetensors checkpoint."""


class MismatchedCheckpoints(MergeHubError):
    """Experts do not share the base's coordinate system (names, shapes, dtypes)."""


class ConfigError(MergeHubError):
    """The merge configuration or a parameter is invalid."""


class BudgetError(MergeHubError):
    """The I/O budget cannot be parsed or is out of range."""


class OutputExists(MergeHubError):
    """The output directory exists and ``force`` was not given."""


class DiskFull(MergeHubError):
    """Writing the output ran out of space; nothing was published."""


class ReplayMismatch(MergeHubError):
    """A replayed merge did not reproduce the manifest's output bit for bit."""


class Cancelled(MergeHubError):
    """The caller asked the job to stop; nothing was published."""


class NonFiniteOutput(MergeHubError):
    """The merge turned finite inputs into Inf/NaN (a weight or parameter overflows the
    working dtype, or a value exceeds the output dtype's range); nothing was published."""
