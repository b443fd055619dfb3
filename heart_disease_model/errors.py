"""The model's own errors. Another copy of these classes comes with every loaded model,
so code outside the model recognises them by the marker, not by class."""


class ModelError(Exception):
    """A failure the user can act on; the message is the whole story."""

    explains_itself = True


class DataValidationError(ModelError):
    """Data breaks a codebook rule that cannot be repaired."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("data validation failed:\n  - " + "\n  - ".join(problems))


class UntrustedModel(ModelError):
    """A stored model asks for a format or a type this code does not trust."""
