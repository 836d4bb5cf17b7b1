"""The CLIP's uses (``vlm.clip`` and ``VLM.embed_images / embed_texts / classify``): a tiny random stock CLIP
folder on real Flickr8k photos."""
from __future__ import annotations

import io
import shutil

import pytest
import torch
from PIL import Image

from clip_fixtures import *  # noqa: F401,F403
from clip_fixtures import write_tiny_clip


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    from vlm.clip import Clip

    return Clip.load(tiny_clip_dir)


@pytest.fixture(scope="module")
def photos(data_dir, flickr_records):
    return [data_dir / "flickr8k" / r["image"] for r in flickr_records[:5]]


def test_vectors_are_unit_batched_and_any_image_input(clip, photos):
    vecs = clip.embed_images(photos, batch_size=2)
    assert vecs.shape == (5, 16) and vecs.dtype == torch.float32
    assert torch.allclose(vecs.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(vecs, clip.embed_images(photos, batch_size=5), atol=1e-5)
    pil = Image.open(photos[0])
    assert torch.allclose(clip.embed_images(pil)[0], vecs[0], atol=1e-5)            # one PIL image
    assert torch.allclose(clip.embed_images([photos[0].read_bytes()])[0], vecs[0], atol=1e-5)  # bytes
    texts = clip.embed_texts(["a dog runs", "two children play in the snow", "a dog " * 40])  # the last: clipped
    assert texts.shape == (3, 16) and torch.allclose(texts.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(clip.embed_texts("a dog runs")[0], texts[0], atol=1e-5)
    assert clip.embed_images([]).shape == (0, 16) and clip.embed_texts([]).shape == (0, 16)


def test_bad_image_names_the_problem(clip, tmp_path):
    from vlm import ImageError

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ImageError, match="broken.jpg"):
        clip.embed_images([bad])


def test_preprocess_pads_to_square_with_the_mean_colour(clip):
    """A wide image is centred on a square of the mean colour (normalised to ~0), as the llava processor pads."""
    from vlm.clip import preprocess

    wide = Image.new("RGB", (40, 20), (255, 255, 255))
    x = preprocess([wide], 32, clip.mean, clip.std)
    assert x.shape == (1, 3, 32, 32)
    assert x[0, :, :4].abs().max() < 0.03 and x[0, :, -4:].abs().max() < 0.03  # padding rows: the mean colour
    assert (x[0, :, 14:18] > 1.0).all()  # the white image in the middle


def test_long_texts_keep_their_end_token(clip):
    """A caption longer than the text positions keeps its first tokens and the end token CLIP pools at."""
    limit = clip.model.config.text_config.max_position_embeddings
    long = "a dog " * (limit * 2)
    vec = clip.embed_texts([long])
    assert vec.shape == (1, clip.dim) and torch.isfinite(vec).all()
    assert torch.allclose(vec.norm(dim=-1), torch.ones(1), atol=1e-5)


def test_flip_average_follows_lit_json(tmp_path, photos):
    from vlm.clip import Clip

    flipped = Clip.load(write_tiny_clip(tmp_path / "f", flip_average=True))
    assert flipped.flip_average and not Clip.load(tmp_path / "f", flip_average=False).flip_average
    plain = Clip.load(tmp_path / "f", flip_average=False)
    image = Image.open(photos[0])
    mirror = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert torch.allclose(flipped.embed_images(image), flipped.embed_images(mirror), atol=1e-5)  # mirror-invariant
    assert not torch.allclose(plain.embed_images(image), plain.embed_images(mirror), atol=1e-4)


def test_classify_is_softmax_of_scaled_cosines(clip, photos):
    labels = ["dog", "beach", "snow"]
    out = clip.classify(photos[0], labels, template="a photo of a {}.")
    assert [lab for lab, _ in out] != [] and sorted(lab for lab, _ in out) == sorted(labels)
    probs = [p for _, p in out]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-5
    image = clip.embed_images(photos[0])[0]
    text = clip.embed_texts([f"a photo of a {lab}." for lab in labels])
    want = torch.softmax(clip.model.logit_scale.exp() * text @ image, dim=0)
    assert dict(out) == pytest.approx(dict(zip(labels, want.tolist())), abs=1e-5)


def test_template_ensemble_averages_unit_vectors(clip, photos):
    templates = ["a photo of a {}.", "a picture of the {}.", "{}"]
    ensembled = clip.label_vectors(["dog", "cat"], templates)
    per = clip.embed_texts([t.format(lab) for lab in ["dog", "cat"] for t in templates]).view(2, 3, -1)
    assert torch.allclose(ensembled, torch.nn.functional.normalize(per.mean(1), dim=-1), atol=1e-6)
    out = dict(clip.classify(photos[0], ["dog", "cat"], templates=templates))
    assert abs(sum(out.values()) - 1) < 1e-5
    with pytest.raises(ValueError, match="at least one label"):
        clip.classify(photos[0], [])
    with pytest.raises(ValueError, match="distinct"):
        clip.classify(photos[0], ["dog", "dog"])
    with pytest.raises(ValueError, match="template"):
        clip.classify(photos[0], ["dog"], template="a photo")


def test_a_clip_model_folder_works_too(tmp_path, clip, photos):
    """Any CLIP-interface folder: a stock CLIPModel with a CLIPProcessor."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    from vlm.clip import Clip

    torch.manual_seed(1)
    config = CLIPConfig(text_config=dict(vocab_size=len(clip.tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=16,
                                         eos_token_id=0, pad_token_id=0, bos_token_id=0),
                        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=1, num_attention_heads=4), projection_dim=8)
    CLIPModel(config).save_pretrained(tmp_path)
    proc = CLIPProcessor.from_pretrained(clip.folder)
    proc.save_pretrained(tmp_path)
    other = Clip.load(tmp_path)
    assert other.dim == 8 and other.embed_images(photos[:2]).shape == (2, 8)
    assert len(other.classify(photos[0], ["dog", "cat"])) == 2


def test_finding_a_clip(tmp_path, tiny_clip_dir):
    from vlm import ModelNotFoundError
    from vlm.clip import Clip, ClipNotFoundError, find_clip

    model_folder = tmp_path / "model"
    shutil.copytree(tiny_clip_dir, model_folder / "clip")
    assert find_clip(model_folder) == model_folder / "clip"
    assert find_clip(tiny_clip_dir) == tiny_clip_dir
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipNotFoundError, match="vlm train clip"):
        Clip.load(tmp_path / "empty")
    with pytest.raises(ModelNotFoundError, match="not found"):
        Clip.load(tmp_path / "nowhere")


def test_save_round_trips(clip, tmp_path, photos):
    from vlm.clip import Clip

    copy = Clip.load(clip.save(tmp_path / "copy"))
    assert torch.allclose(copy.embed_images(photos[:2]), clip.embed_images(photos[:2]), atol=1e-6)
    fresh = Clip(clip.model, clip.tokenizer, mean=clip.mean, std=clip.std, flip_average=True)  # no folder
    again = Clip.load(fresh.save(tmp_path / "fresh"))
    assert again.flip_average and again.mean == pytest.approx(clip.mean)
    assert torch.allclose(again.embed_images(photos[:2]), fresh.embed_images(photos[:2]), atol=1e-6)


def test_vlm_uses_the_clip_its_folder_carries(tiny_vlm, tiny_clip_dir, tmp_path, photos):
    from vlm import VLM
    from vlm.clip import Clip, ClipNotFoundError

    folder = tiny_vlm.save(tmp_path / "m")
    with pytest.raises(ClipNotFoundError, match=r"clip=PATH.*vlm train clip"):
        VLM.load(folder, levers=None).classify(photos[0], ["dog", "cat"])
    shutil.copytree(tiny_clip_dir, folder / "clip")
    m = VLM.load(folder, levers=None)
    want = Clip.load(tiny_clip_dir)
    assert torch.allclose(m.embed_images(photos[:2]), want.embed_images(photos[:2]), atol=1e-6)
    assert torch.allclose(m.embed_texts(["a dog"]), want.embed_texts(["a dog"]), atol=1e-6)
    assert dict(m.classify(photos[0], ["dog", "cat"])) == pytest.approx(dict(want.classify(photos[0], ["dog", "cat"])))
    with pytest.raises(ClipNotFoundError):
        VLM.load(folder, levers=None, clip=False).embed_texts(["a dog"])
    # the model keeps its CLIP when saved, and an explicit clip= wins over the carried one
    other = write_tiny_clip(tmp_path / "other", seed=3)
    m2 = VLM.load(folder, levers=None, clip=other)
    assert not torch.allclose(m2.embed_texts(["a dog"]), want.embed_texts(["a dog"]), atol=1e-4)
    saved = m2.save(tmp_path / "m2")
    assert torch.allclose(VLM.load(saved, levers=None).embed_texts(["a dog"]), m2.embed_texts(["a dog"]), atol=1e-6)
    built = VLM(tiny_vlm.model, tiny_vlm.processor, clip=Clip.load(tiny_clip_dir))  # a loaded Clip works too
    assert built.embed_texts("a dog").shape == (1, 16)
