"""The one exception type users see: its message is the whole story, printed without
a traceback. Kept free of imports so the logged model can carry it (steps/model.py)."""


class PipelineError(Exception):
    """A failure the user can act on."""
