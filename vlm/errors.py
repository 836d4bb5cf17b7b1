"""Errors vlm raises. Bad input is a ``ValueError`` (``InputError``) so callers can catch one type; a missing
OCR engine is an ``OcrEngineError``."""


class InputError(ValueError):
    """A request vlm cannot serve as given (bad image, prompt too long, placeholder mismatch...)."""


class ImageError(InputError):
    """An image that is missing, unreadable, corrupt, empty or too large."""


class ModelNotFoundError(ValueError):
    """A model name or path that could not be resolved. The message lists what was tried."""


class OcrEngineError(FileNotFoundError):
    """An OCR engine that cannot run here: its Python binding or its model/language files are missing.

    A ``FileNotFoundError`` (not an ``InputError``): the installation is at fault, not the request. The message
    names what is missing and how to install it.
    """
