"""vlm: a LLaVA-style vision-language assistant built on transformers' llava."""
from .api import VLM
from .config import GenerationOptions, InputLimits, TowerPreset
from .errors import ImageError, InputError, ModelNotFoundError

__all__ = ["VLM", "GenerationOptions", "InputLimits", "TowerPreset", "ImageError", "InputError", "ModelNotFoundError"]
__version__ = "0.1.0"
