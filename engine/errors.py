"""The exception type users see: its message is the whole story, printed without a
traceback."""


class PipelineError(Exception):
    """A failure the user can act on."""

    explains_itself = True


def explains_itself(error: BaseException) -> bool:
    """A PipelineError, or one of the sealed model's own errors (ModelError), which code
    outside the model cannot catch by class: every loaded model brings its own copy."""
    return getattr(error, "explains_itself", False) is True
