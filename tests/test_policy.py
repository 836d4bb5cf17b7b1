"""vlm.policy with a tiny random CLIP: parsing, the score (a policy's share against the neutral phrases, checked
against Clip.classify), verdicts, the server's screen and config. Real weights: tests/test_policy_real.py."""
from __future__ import annotations

import pytest
from PIL import Image

from clip_fixtures import *  # noqa: F401,F403


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    from vlm.clip import Clip

    return Clip.load(tiny_clip_dir)


def test_policy_parse():
    from vlm.policy import DEFAULT_THRESHOLD, Policy, PolicyConfig

    assert Policy.parse("a weapon") == Policy("a weapon", DEFAULT_THRESHOLD)
    assert Policy.parse(" a weapon =0.3") == Policy("a weapon", 0.3)
    assert Policy.parse("a weapon", 0.7).threshold == 0.7
    assert Policy.parse("x=y").text == "x=y"  # '=' inside the text
    for bad in ("a weapon=1.5", "=0.3", "", "a=nan"):
        with pytest.raises(ValueError):
            Policy.parse(bad)
    with pytest.raises(ValueError, match="distinct"):
        PolicyConfig.from_specs(["a dog", "a dog=0.2"])
    cfg = PolicyConfig.from_specs(["a weapon", "a credit card=0.7"], 0.4)
    assert [(p.text, p.threshold) for p in cfg.policies] == [("a weapon", 0.4), ("a credit card", 0.7)]


def test_score_is_the_policys_share_against_the_neutral_phrases(clip, photo):
    from vlm.policy import NEUTRAL, TEMPLATE, PolicyCheck

    check = PolicyCheck(clip, ["a dog", "a credit card"])
    verdict = check.check(photo)
    for policy in ("a dog", "a credit card"):
        probs = dict(clip.classify(photo, [policy, *NEUTRAL], template=TEMPLATE))
        assert verdict.scores[policy] == pytest.approx(probs[policy], abs=1e-5)
    alone = PolicyCheck(clip, ["a dog"]).check(photo)  # policies do not compete with each other
    assert alone.scores["a dog"] == pytest.approx(verdict.scores["a dog"], abs=1e-6)
    # a policy equal to a neutral phrase is not scored against itself
    assert PolicyCheck(clip, ["a person"]).check(photo).scores["a person"] == pytest.approx(
        dict(clip.classify(photo, ["a person"] + [n for n in NEUTRAL if n != "a person"], template=TEMPLATE))["a person"],
        abs=1e-5)


def test_verdicts_follow_thresholds(clip, photo):
    from vlm.policy import Policy, PolicyCheck

    score = PolicyCheck(clip, ["a dog"]).check(photo).scores["a dog"]
    blocked = PolicyCheck(clip, [Policy("a dog", max(0.0, score - 1e-4)), Policy("a cat", 1.0)]).check(photo)
    assert blocked.blocked and [m.policy for m in blocked.matched] == ["a dog"]
    assert blocked.reason() == f"matched policy 'a dog' (score {score:.2f}, threshold {max(0.0, score - 1e-4):.2f})"
    passed = PolicyCheck(clip, [Policy("a dog", min(1.0, score + 1e-4))]).check(photo)
    assert not passed.blocked and passed.reason() == ""
    many = PolicyCheck(clip, [Policy("a dog", 0.0)]).check_many([photo, Image.new("RGB", (40, 30), "red")])
    assert [v.blocked for v in many] == [True, True]
    with pytest.raises(ValueError, match="at least one"):
        PolicyCheck(clip, [])


def test_policy_screen_refuses_with_the_policy_named(clip, photo):
    from vlm.policy import Policy, PolicyCheck
    from vlm.serve.errors import Flagged
    from vlm.serve.moderation import PolicyScreen, Screens

    image = Image.open(photo).convert("RGB")
    screen = PolicyScreen(PolicyCheck(clip, [Policy("a weapon", 1.0), Policy("a dog", 0.0)]))
    with pytest.raises(Flagged) as e:
        Screens(screen).check([Image.new("RGB", (32, 32), "blue"), image])
    assert e.value.code == "content_policy_violation" and e.value.status == 400
    assert str(e.value).startswith("image 1 was refused by the content policy: it matched policy 'a dog' (score")
    Screens(PolicyScreen(PolicyCheck(clip, [Policy("a dog", 1.0)]))).check([image])  # passes


def test_serve_flags_map_to_the_typed_config(tiny_vlm):
    from vlm.cli import build_parser
    from vlm.cli.serve import config_from_args
    from vlm.clip import ClipNotFoundError
    from vlm.serve.app import build_engine

    args = build_parser().parse_args(["serve", "--policy", "a weapon", "--policy", "a credit card=0.7",
                                      "--policy-threshold", "0.4", "--video-frames", "3", "--no-moderation"])
    cfg = config_from_args(args)
    assert [(p.text, p.threshold) for p in cfg.policy.policies] == [("a weapon", 0.4), ("a credit card", 0.7)]
    assert cfg.video.frames == 3
    assert config_from_args(build_parser().parse_args(["serve"])).policy.policies == ()
    with pytest.raises(ValueError, match="threshold"):
        config_from_args(build_parser().parse_args(["serve", "--policy", "a dog=2"]))
    from dataclasses import replace

    from vlm.video import VideoOptions

    try:
        with pytest.raises(ClipNotFoundError, match="no CLIP"):  # policies need the model's CLIP
            build_engine(replace(cfg, limits=tiny_vlm.limits), tiny_vlm)
    finally:
        tiny_vlm.video = VideoOptions()
