"""recall@K on hand-made similarity matrices with known answers; an LLM's pooled caption states."""
from __future__ import annotations

import math

import pytest
import torch

from vlm.retrieval import chance_recall, recall_at_k


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


# ---- an LLM's caption states (LiT's smollm2-frozen text side) -------------------------------------------
def test_sif_weights_discount_frequent_tokens(smollm2_dir):
    from transformers import AutoTokenizer

    from vlm.retrieval import sif_weights

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    texts = ["a dog runs on the grass", "a man rides a bike", "a girl in a red dress"]
    w = sif_weights(tok, texts, a=1e-2)
    a_id, dress_id = tok(" a", add_special_tokens=False)["input_ids"][0], tok(" dress", add_special_tokens=False)["input_ids"][0]
    unseen = tok(" volcano", add_special_tokens=False)["input_ids"][0]
    assert w[a_id] < w[dress_id] < w[unseen] == 1.0


@pytest.mark.real
def test_truncated_llm_gives_the_same_hidden_states(smollm2_dir):
    """Running only the first layers of SmolLM2 gives exactly the full model's hidden_states[layer]."""
    from vlm.compose import load_llm
    from vlm.retrieval import embed_texts, truncated

    model, tok = load_llm(str(smollm2_dir))  # float32: bf16 batches differ from single runs by ~0.05
    texts = ["A dog runs on the beach .", "Two men play soccer on a grassy field while others watch ."]
    enc = tok(texts[:1], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        full = model.model(**enc, output_hidden_states=True).hidden_states[3].float().mean(1)
    with truncated(model, 3):
        assert len(model.model.layers) == 4
    assert len(model.model.layers) == 30
    side = tok.padding_side
    part = embed_texts(model, tok, texts, 3)  # runs only 4 layers, batched with right padding
    assert len(model.model.layers) == 30 and tok.padding_side == side
    assert torch.allclose(part[0], full[0], atol=1e-3, rtol=1e-4)
    assert part.shape == (2, 576)
