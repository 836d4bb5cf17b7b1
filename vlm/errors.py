"""Errors vlm raises for bad input. All are ``ValueError`` so callers can catch one type."""


class InputError(ValueError):
    """A request vlm cannot serve as given (bad image, prompt too long, placeholder mismatch...)."""


class ImageError(InputError):
    """An image that is missing, unreadable, corrupt, empty or too large."""


class ModelNotFoundError(ValueError):
    """A model name or path that could not be resolved. The message lists what was tried."""
