"""Stage-1/2 data: assistant-only labels from the chat template, bad-record accounting, batching, collation."""
from __future__ import annotations

import copy

import pytest
import torch

from vlm.train.data import (
    IGNORE_INDEX,
    Collator,
    LengthGroupedBatches,
    TrainingSet,
    to_messages,
    tokenize_conversation,
)
from vlm.processor import multimodal_chat_template

TWO_TURNS = {
    "image": "x.jpg",
    "conversations": [
        {"from": "human", "value": "<image>\nWhat is in the picture?"},
        {"from": "gpt", "value": "A dog runs on the beach."},
        {"from": "human", "value": "What colour is it?"},
        {"from": "gpt", "value": "It is brown."},
    ],
}


def labelled_runs(ids, labels):
    """Contiguous runs of labelled positions, as token lists."""
    runs, cur = [], []
    for t, l in zip(ids, labels):
        if l == IGNORE_INDEX:
            if cur:
                runs.append(cur)
            cur = []
        else:
            assert l == t
            cur.append(t)
    return runs + ([cur] if cur else [])


def test_labels_cover_exactly_the_assistant_turns_with_end_of_turn(tiny_vlm):
    proc = tiny_vlm.processor
    tok = proc.tokenizer
    n_img = tiny_vlm.model.config.image_seq_length
    ids, labels = tokenize_conversation(proc, to_messages(TWO_TURNS), n_img)
    assert len(ids) == len(labels)
    runs = labelled_runs(ids, labels)
    eot = tok.convert_ids_to_tokens(tok.eos_token_id)  # <|im_end|>, SmolLM2's end of turn
    assert [tok.decode(r) for r in runs] == [f"A dog runs on the beach.{eot}", f"It is brown.{eot}"]
    # the image is expanded to one token per patch and never labelled
    image_id = tok.convert_tokens_to_ids("<image>")
    assert ids.count(image_id) == n_img
    assert all(l == IGNORE_INDEX for t, l in zip(ids, labels) if t == image_id)
    # the unlabelled rest is the system prompt, the user turns and the assistant headers
    rest = tok.decode([t for t, l in zip(ids, labels) if l == IGNORE_INDEX and t != image_id])
    assert "What is in the picture?" in rest and "What colour is it?" in rest and "dog" not in rest


def test_masking_follows_any_template_not_chatml_strings(tiny_vlm):
    proc = copy.deepcopy(tiny_vlm.processor)
    proc.chat_template = multimodal_chat_template(
        "{% for m in messages %}[{{ m['role'] }}]: {{ m['content'] }} END\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant]:{% endif %}"
    )
    ids, labels = tokenize_conversation(proc, to_messages(TWO_TURNS), 4)
    runs = [proc.tokenizer.decode(r) for r in labelled_runs(ids, labels)]
    assert runs == [" A dog runs on the beach. END", " It is brown. END"]


def test_bad_records_are_skipped_and_counted(tiny_vlm, photo, tmp_path):
    good = {"image": str(photo), "conversations": TWO_TURNS["conversations"][:2]}
    records = [
        good,
        "not a record",
        {"image": str(tmp_path / "missing.jpg"), "conversations": good["conversations"]},
        {"image": str(photo), "conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "x"}]},
        {"image": str(photo), "conversations": [{"from": "human", "value": "no placeholder"},
                                                {"from": "gpt", "value": "ok"}]},
        {"image": str(photo), "conversations": [{"from": "human", "value": "<image>\n" + "word " * 400},
                                                {"from": "gpt", "value": "ok"}]},
    ]
    ds = TrainingSet(records, tiny_vlm.processor, 16, root=None, max_length=256)
    assert len(ds) == 1
    assert ds.skipped == {"malformed": 1, "missing_image": 1, "bad_role_order": 1,
                          "image_token_mismatch": 1, "too_long": 1}


def test_length_grouped_batches_cover_all_and_split_ranks():
    lengths = [((i * 37) % 101) + 1 for i in range(103)]
    per_rank = [LengthGroupedBatches(lengths, 4, world_size=2, rank=r, seed=3, grad_accum=3) for r in (0, 1)]
    e0 = [s.epoch(0) for s in per_rank]
    assert len(e0[0]) == len(e0[1]) == len(per_rank[0]) and len(e0[0]) % 3 == 0
    seen = {i for batches in e0 for b in batches for i in b}
    assert seen == set(range(103))
    assert e0[0] == per_rank[0].epoch(0)  # deterministic (what exact resume relies on)
    assert e0[0] != per_rank[0].epoch(1)  # reshuffled each epoch
    # grouping: batches are far more uniform in length than random ones
    spread = lambda batches: sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    ungrouped = LengthGroupedBatches(lengths, 4, 2, 0, seed=3, group_by_length=False, grad_accum=3).epoch(0)
    assert spread(e0[0]) < spread(ungrouped) / 3


def test_collator_pads_right_and_stacks_features():
    items = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "features": [torch.ones(4, 2)]},
        {"input_ids": [8], "labels": [8], "features": []},
    ]
    batch = Collator(pad_token_id=0)(items)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["image_features"].shape == (1, 4, 2)


@pytest.mark.real
def test_real_flickr_records_tokenise_with_real_template(real_vlm, data_dir):
    """The data_prep Flickr8k output format on real images, the real SmolLM2 tokenizer and template."""
    from vlm.records import load_records

    recs = [
        {"id": "a", "image": str(data_dir / "flickr8k" / "images" / "1000268201_693b08cb0e.jpg"),
         "conversations": [{"from": "human", "value": "<image>\nShare a brief description of the picture."},
                           {"from": "gpt", "value": "A little girl climbing the stairs to her playhouse."}]},
    ]
    ds = TrainingSet(recs, real_vlm.processor, real_vlm.model.config.image_seq_length, root=None)
    ex = ds.examples[0]
    runs = labelled_runs(ex.input_ids, ex.labels)
    assert [real_vlm.processor.tokenizer.decode(r) for r in runs] == [
        "A little girl climbing the stairs to her playhouse.<|im_end|>"]
    assert len(ds.images()) == 1 and callable(load_records)
