"""Data preparation: turn the real data sets into LLaVA conversation JSON for training.

The training format is the one LLaVA and TinyLLaVA read::

    {"id": "...", "image": "path/to.jpg",
     "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}]}

Multi-turn records (human/gpt alternating) and text-only records (no ``image``) are allowed.
Image paths are written **relative to the folder of the JSON file that holds them** (absolute paths
are accepted too); :func:`vlm.prep.io.load_llava_dataset` resolves them to absolute paths.

- :mod:`vlm.prep.records`: record checks (:func:`validate_record`) and bad-record accounting.
- :mod:`vlm.prep.io`: reading and writing record files, the ``datasets`` loader.
- :mod:`vlm.prep.prompts`: the seeded prompt pools.
- :mod:`vlm.prep.flickr8k`, :mod:`vlm.prep.sroie`: the two preparations.
- :mod:`vlm.prep.qa` (with :mod:`~vlm.prep.qa_facts`, :mod:`~vlm.prep.qa_vocab`): short-answer questions
  from Flickr8k captions; :mod:`vlm.prep.textonly` (with :mod:`~vlm.prep.textonly_prompts`): text-only
  chats answered by the base LLM.
- :mod:`vlm.prep.cli`: ``vlm prep ...``.
"""
from .io import load_llava_dataset, load_pairs_dataset, load_records, write_records
from .records import BadRecordError, RecordAccounting, validate_record

__all__ = [
    "BadRecordError",
    "RecordAccounting",
    "load_llava_dataset",
    "load_pairs_dataset",
    "load_records",
    "validate_record",
    "write_records",
]
