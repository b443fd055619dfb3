"""The exception type users see: its message is the whole story, printed without a
traceback."""


class PipelineError(Exception):
    """A failure the user can act on."""

    explains_itself = True


def explains_itself(error: BaseException) -> bool:
    """A PipelineError, or one of the sealed model's own errors (ModelError), which code
    outside the model cannot catch by class: every loaded model brings its own copy."""
    return getattr(error, "explains_itself", False) is True


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived (engine/cli.py turns both into this)."""

    def __init__(self, signal_name: str, exit_code: int):
        super().__init__(f"stopped by {signal_name}")
        self.exit_code = exit_code
