"""Errors vlm raises. Bad input is a ``ValueError`` (``InputError``) so callers can catch one type; a missing
OCR engine is an ``OcrEngineError``."""


class InputError(ValueError):
    """A request vlm cannot serve as given (bad image, prompt too long, placeholder mismatch...)."""


class ContextLengthError(InputError):
    """A prompt that leaves no room for the answer it asks for, or is longer than a limit the caller set.

    Carries the numbers so a caller can phrase the problem in its own terms: ``prompt_tokens`` (images
    included), ``answer_tokens`` (the answer budget asked for; None when none was), ``context`` (the model's)
    and ``limit`` (the caller's prompt limit, when that is what was exceeded)."""

    def __init__(self, message: str, *, prompt_tokens: int, answer_tokens: int | None = None,
                 context: int | None = None, limit: int | None = None):
        super().__init__(message)
        self.prompt_tokens, self.answer_tokens, self.context, self.limit = prompt_tokens, answer_tokens, context, limit


class ImageError(InputError):
    """An image that is missing, unreadable, corrupt, empty or too large."""


class ModelNotFoundError(ValueError):
    """A model name or path that could not be resolved. The message lists what was tried."""


class OcrEngineError(FileNotFoundError):
    """An OCR engine that cannot run here: its Python binding or its model/language files are missing.

    A ``FileNotFoundError`` (not an ``InputError``): the installation is at fault, not the request. The message
    names what is missing and how to install it.
    """
