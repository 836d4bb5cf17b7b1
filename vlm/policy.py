"""Text policies over images through a CLIP: "block anything that looks like *a weapon*".

Contract:

* A :class:`Policy` is a short description of what to refuse ("a weapon", "a credit card") and a threshold
  in ``[0, 1]``. ``Policy.parse("a weapon=0.3")`` reads the command-line form (``TEXT`` or ``TEXT=THRESHOLD``;
  the last ``=`` followed by a number splits them).
* A raw CLIP cosine has no fixed scale (it depends on the CLIP, the phrase and the picture), so a policy's
  **score** is a probability against a fixed set of neutral phrases: ``softmax(logit_scale * cosines)`` over
  the policy's phrase and the :data:`NEUTRAL` phrases ("a man", "a woman", "people", "a building", ...),
  each put in :data:`TEMPLATE`, and the score is the policy's share. A picture the policy describes better
  than any everyday scene scores near 1; one that an everyday phrase describes better scores near 0. Each
  policy is scored against the neutral set on its own, so adding a policy never changes another's score.
* :class:`PolicyCheck` holds the CLIP, the policies (their text vectors computed once) and the neutral set;
  ``check(image)`` returns a :class:`PolicyVerdict` with every policy's score and the policies matched
  (score at or over their threshold), best first; ``check_many`` scores a batch. It needs no server.
* :data:`DEFAULT_THRESHOLD` was calibrated on Flickr8k **train** photos (never dev) with vlm-tiny's CLIP by
  ``python -m vlm.eval.policy_calibration`` (docs/clip.md has the figures): the threshold at which 5% of
  photos whose captions never mention a probe policy's object are blocked, pooled over the probe policies.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

# Chosen by the calibration on Flickr8k train (vlm/eval/policy_calibration.py, vlm-tiny's CLIP): the bare phrase
# (the LiT text tower was trained on captions) against everyday caption subjects separated best: 57% of the
# probes' positives blocked at 5% of their negatives (43% with "a photo of {}." and scene phrases).
TEMPLATE = "{}"
NEUTRAL = ("a man", "a woman", "a person", "people", "a child", "a girl", "a boy", "a crowd", "a building", "a room")
DEFAULT_THRESHOLD = 0.66  # 5% of train negatives blocked, pooled over 10 probe policies (docs/clip.md)


@dataclass(frozen=True)
class Policy:
    text: str
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError("a policy needs a non-empty text, e.g. 'a weapon'")
        if not (isinstance(self.threshold, (int, float)) and 0.0 <= self.threshold <= 1.0):
            raise ValueError(f"policy {self.text!r}: threshold must be in [0, 1], got {self.threshold}")
        object.__setattr__(self, "text", self.text.strip())

    @classmethod
    def parse(cls, spec: str, default_threshold: float = DEFAULT_THRESHOLD) -> "Policy":
        """``"a weapon"`` or ``"a weapon=0.3"``."""
        text, sep, tail = spec.rpartition("=")
        if sep:
            try:
                threshold = float(tail)
            except ValueError:
                return cls(spec, default_threshold)  # an '=' inside the text
            if not math.isfinite(threshold):
                raise ValueError(f"policy {spec!r}: threshold must be a number in [0, 1]")
            return cls(text, threshold)
        return cls(spec, default_threshold)


@dataclass(frozen=True)
class PolicyConfig:
    """What ``vlm serve --policy ... --policy-threshold T`` configures: no policies = off."""

    policies: tuple[Policy, ...] = ()
    neutral: tuple[str, ...] = NEUTRAL
    template: str = TEMPLATE

    def __post_init__(self) -> None:
        texts = [p.text for p in self.policies]
        if len(set(texts)) != len(texts):
            raise ValueError(f"policies must be distinct, got {texts}")
        if not self.neutral:
            raise ValueError("the neutral set must not be empty")
        if "{}" not in self.template:
            raise ValueError(f"the policy template must contain '{{}}', got {self.template!r}")

    @classmethod
    def from_specs(cls, specs: Sequence[str], default_threshold: float = DEFAULT_THRESHOLD) -> "PolicyConfig":
        return cls(tuple(Policy.parse(s, default_threshold) for s in specs))


@dataclass(frozen=True)
class PolicyMatch:
    policy: str
    score: float
    threshold: float

    def __str__(self) -> str:
        return f"policy {self.policy!r} (score {self.score:.2f}, threshold {self.threshold:.2f})"


@dataclass(frozen=True)
class PolicyVerdict:
    scores: dict[str, float] = field(default_factory=dict)  # every policy's score
    matched: tuple[PolicyMatch, ...] = ()                   # at or over threshold, best first

    @property
    def blocked(self) -> bool:
        return bool(self.matched)

    def reason(self) -> str:
        """"matched policy 'a dog' (score 0.93, threshold 0.50)" (and any others), or "" when not blocked."""
        return ("matched " + "; ".join(str(m) for m in self.matched)) if self.matched else ""


class PolicyCheck:
    """Scores images against text policies with a CLIP (see the module docstring)."""

    def __init__(self, clip, policies: Sequence[Policy | str] | PolicyConfig,
                 neutral: Sequence[str] = NEUTRAL, template: str = TEMPLATE):
        from .index import _as_clip

        config = policies if isinstance(policies, PolicyConfig) else PolicyConfig(
            tuple(p if isinstance(p, Policy) else Policy.parse(p) for p in policies), tuple(neutral), template)
        if not config.policies:
            raise ValueError("PolicyCheck needs at least one policy")
        self.clip = _as_clip(clip)
        self.config = config
        self.policies = config.policies
        neutral = [n for n in config.neutral if n not in {p.text for p in config.policies}]
        texts = [config.template.format(p.text) for p in config.policies]
        texts += [config.template.format(n) for n in neutral]
        vectors = self.clip.embed_texts(texts)
        self._policy_vectors = vectors[:len(config.policies)]
        self._neutral_vectors = vectors[len(config.policies):]

    def score_vectors(self, image_vectors: torch.Tensor) -> torch.Tensor:
        """(N, P) policy scores of N unit image vectors."""
        scale = self.clip.logit_scale
        own = scale * image_vectors @ self._policy_vectors.T            # (N, P)
        neutral = scale * image_vectors @ self._neutral_vectors.T       # (N, K)
        # softmax over [policy, neutrals] for each policy, taking the policy's share
        return torch.sigmoid(own - torch.logsumexp(neutral, dim=1, keepdim=True))

    def verdict(self, scores: Sequence[float]) -> PolicyVerdict:
        by_name = {p.text: float(s) for p, s in zip(self.policies, scores)}
        matched = sorted((PolicyMatch(p.text, by_name[p.text], p.threshold) for p in self.policies
                          if by_name[p.text] >= p.threshold), key=lambda m: -m.score)
        return PolicyVerdict(by_name, tuple(matched))

    def check_many(self, images: Sequence) -> list[PolicyVerdict]:
        """One verdict per image (paths, PIL images, bytes, data URLs)."""
        if not images:
            return []
        scores = self.score_vectors(self.clip.embed_images(list(images)))
        return [self.verdict(row.tolist()) for row in scores]

    def check(self, image) -> PolicyVerdict:
        return self.check_many([image])[0]
