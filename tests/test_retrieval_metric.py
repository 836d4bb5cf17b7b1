"""recall@K on hand-made similarity matrices with known answers."""
from __future__ import annotations

import math

import pytest
import torch

from vlm.eval.retrieval import chance_recall, recall_at_k


def test_perfect_and_reversed_rankings():
    # 3 images, 2 captions each; caption j belongs to image j // 2
    owner = [0, 0, 1, 1, 2, 2]
    perfect = torch.full((3, 6), -1.0)
    for j, i in enumerate(owner):
        perfect[i, j] = 1.0
    r = recall_at_k(perfect, owner, ks=(1, 2))
    assert r == {"i2t_r1": 1.0, "t2i_r1": 1.0, "i2t_r2": 1.0, "t2i_r2": 1.0}
    r = recall_at_k(-perfect, owner, ks=(1, 2, 3))
    assert r["t2i_r1"] == 0.0 and r["t2i_r2"] == 0.0 and r["t2i_r3"] == 1.0
    # every image's captions rank last: 4 negatives ahead of them
    assert r["i2t_r1"] == 0.0 and r["i2t_r2"] == 0.0 and r["i2t_r3"] == 0.0


def test_known_partial_ranks():
    owner = [0, 1, 2]
    sim = torch.tensor([
        [0.9, 0.1, 0.5],  # image 0: its caption (0) first
        [0.2, 0.3, 0.8],  # image 1: its caption (1) second (behind caption 2)
        [0.95, 0.85, 0.7],  # image 2: its caption (2) third
    ])
    r = recall_at_k(sim, owner, ks=(1, 2, 3))
    assert r["i2t_r1"] == pytest.approx(1 / 3)
    assert r["i2t_r2"] == pytest.approx(2 / 3)
    assert r["i2t_r3"] == 1.0
    # text 0: column [0.9, 0.2, 0.95] -> image 0 is 2nd; text 1: [0.1, 0.3, 0.85] -> 2nd;
    # text 2: [0.5, 0.8, 0.7] -> image 2 is 2nd
    assert r["t2i_r1"] == 0.0
    assert r["t2i_r2"] == 1.0


def test_other_positive_does_not_count_as_negative():
    # image 0 has captions 0 and 1; caption 1 scores highest, caption 0 second: still rank 0 for i2t
    owner = [0, 0, 1]
    sim = torch.tensor([[0.8, 0.9, 0.1], [0.1, 0.2, 0.9]])
    r = recall_at_k(sim, owner, ks=(1,))
    assert r["i2t_r1"] == 1.0


def test_ties_count_against_the_query():
    owner = [0, 1, 2, 3]
    r = recall_at_k(torch.zeros(4, 4), owner, ks=(1, 4))
    assert r["t2i_r1"] == 0.0 and r["i2t_r1"] == 0.0
    assert r["t2i_r4"] == 1.0 and r["i2t_r4"] == 1.0


def test_random_matrix_is_near_chance():
    g = torch.Generator().manual_seed(0)
    n, c = 400, 5
    owner = torch.arange(n).repeat_interleave(c)
    r = recall_at_k(torch.randn(n, n * c, generator=g), owner, ks=(10,))
    ch = chance_recall(n, c, ks=(10,))
    assert ch["t2i_r10"] == pytest.approx(10 / n)
    assert ch["i2t_r10"] == pytest.approx(1 - math.comb(n * c - c, 10) / math.comb(n * c, 10))
    assert abs(r["t2i_r10"] - ch["t2i_r10"]) < 0.015
    assert abs(r["i2t_r10"] - ch["i2t_r10"]) < 0.06


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="2-D"):
        recall_at_k(torch.zeros(3), [0, 1, 2])
    with pytest.raises(ValueError, match="one entry per text"):
        recall_at_k(torch.zeros(2, 3), [0, 1])
    with pytest.raises(ValueError, match="image indices"):
        recall_at_k(torch.zeros(2, 2), [0, 5])


# ---- the text side and the closed-form image head ------------------------------------------------------
def test_text_side_centres_removes_the_common_direction_and_round_trips(tmp_path):
    from vlm.eval.retrieval import RetrievalSpec, TextSide

    g = torch.Generator().manual_seed(0)
    common = torch.randn(16, generator=g)
    states = torch.randn(200, 16, generator=g) * 0.3 + torch.randn(200, 1, generator=g) * common
    side = TextSide.fit(states, remove_components=1, token_weight=torch.rand(50, generator=g))
    unit = side.unit(states)
    assert torch.allclose(unit.norm(dim=-1), torch.ones(200), atol=1e-5)
    assert (unit @ side.components.T).abs().max() < 1e-5  # the common direction is gone
    direction = torch.nn.functional.normalize(common, dim=0)
    assert abs(float(side.components[0] @ direction)) > 0.9  # and it was the planted one
    side.save(tmp_path)
    again = TextSide.load(tmp_path, RetrievalSpec("x", 0, 16))
    assert torch.equal(again.unit(states), unit) and torch.equal(again.token_weight, side.token_weight)


def test_folder_without_text_file_uses_the_spec_mean(tmp_path):
    from vlm.eval.retrieval import RetrievalSpec, TextSide

    side = TextSide.load(tmp_path, RetrievalSpec("x", 0, 3, text_mean=[1.0, 0.0, 0.0]))
    assert torch.allclose(side.unit(torch.tensor([[2.0, 1.0, 0.0]])), torch.tensor([[0.7071, 0.7071, 0.0]]), atol=1e-4)


def test_sif_weights_discount_frequent_tokens(smollm2_dir):
    from transformers import AutoTokenizer

    from vlm.eval.retrieval import sif_weights

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    texts = ["a dog runs on the grass", "a man rides a bike", "a girl in a red dress"]
    w = sif_weights(tok, texts, a=1e-2)
    a_id, dress_id = tok(" a", add_special_tokens=False)["input_ids"][0], tok(" dress", add_special_tokens=False)["input_ids"][0]
    unseen = tok(" volcano", add_special_tokens=False)["input_ids"][0]
    assert w[a_id] < w[dress_id] < w[unseen] == 1.0


def test_bag_of_tokens_side_weights_rare_tokens_and_round_trips(smollm2_dir, tmp_path):
    import math

    from transformers import AutoTokenizer

    from vlm.eval.retrieval import RetrievalSpec, TextSide

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    texts = ["A dog runs on the grass", "a dog jumps", "A man rides a bike", "a man and a dog", "A girl in a red dress"]
    side = TextSide.bag(tok, texts, min_count=2)
    column = {tok.decode([t]).strip(): j for j, t in enumerate(side.vocabulary.tolist())}
    assert set(column) == {"a", "dog", "man"}  # lower-cased, so "A" and "a" are one token; singletons dropped
    bags = side.states(None, tok, ["A DOG in the snow", "a man with a dog", "a volcano"], 0)
    dog, man = math.log(5 / 3), math.log(5 / 2)  # idf; "a" is in every caption: idf 0
    expected = torch.zeros(3, 3)
    expected[0, column["dog"]] = 1.0
    expected[1, column["dog"]], expected[1, column["man"]] = dog / math.hypot(dog, man), man / math.hypot(dog, man)
    assert torch.allclose(bags, expected, atol=1e-6)  # nothing known in "a volcano": a zero bag
    side.save(tmp_path)
    again = TextSide.load(tmp_path, RetrievalSpec("x", 0, 3, text_pooling="bag"))
    assert torch.equal(again.vocabulary, side.vocabulary) and torch.equal(again.unit(bags), side.unit(bags))


def test_ridge_head_folds_into_a_linear_layer():
    from train.stage0.probe import ridge_apply, ridge_as_linear, ridge_fit
    from vlm.eval.retrieval import ImageHead

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g) * 3 + 1, torch.randn(64, 5, generator=g)
    w, m, s = ridge_fit(x, y, 10.0)
    head = ImageHead(8, 5)
    head.load_state_dict(ridge_as_linear(w, m, s))
    with torch.no_grad():
        assert torch.allclose(head(x), ridge_apply(x, w, m, s), atol=1e-5)


def test_cca_head_finds_the_shared_signal_and_folds_into_the_text_side(tmp_path):
    from train.stage0.probe import cca_as_linear, cca_fit
    from vlm.eval.retrieval import ImageHead, RetrievalSpec, TextSide, recall_at_k

    g = torch.Generator().manual_seed(0)
    latent = torch.randn(400, 4, generator=g)
    x = latent @ torch.randn(4, 10, generator=g) + 0.3 * torch.randn(400, 10, generator=g)
    states = latent @ torch.randn(4, 16, generator=g) + 0.3 * torch.randn(400, 16, generator=g) + 2.0
    side = TextSide.fit(states)
    units = side.unit(states)
    fit = cca_fit(x[:300], units[:300], 1e-3, 1e-3, dims=4)
    assert fit.correlations.shape == (4,) and fit.correlations.min() > 0.8  # the 4 shared directions
    weak = cca_fit(torch.randn(300, 10, generator=g), units[:300], 1e-3, 1e-3, dims=4)
    assert weak.correlations.max() < 0.4  # unrelated features: no shared direction
    head = ImageHead(10, 4)
    head.load_state_dict(cca_as_linear(fit))
    projected = side.with_projection(fit.y_mean, fit.y_proj)
    with torch.no_grad():
        assert torch.allclose(head(x), fit.images(x), atol=1e-5)
    assert torch.allclose(projected.unit(states), fit.texts(units), atol=1e-5) and projected.dim == 4
    held_out = recall_at_k(head(x[300:]).detach() @ projected.unit(states[300:]).T, list(range(100)), ks=(5,))
    assert held_out["t2i_r5"] > 0.5  # chance is 0.05
    projected.save(tmp_path)
    again = TextSide.load(tmp_path, RetrievalSpec("x", 0, 4))
    assert torch.equal(again.unit(states), projected.unit(states))
