"""Data preparation: turn the real data sets into LLaVA conversation JSON for training.

The training format is the one LLaVA and TinyLLaVA read::

    {"id": "...", "image": "path/to.jpg",
     "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}]}

Multi-turn records (human/gpt alternating) and text-only records (no ``image``) are allowed.
Image paths are written **relative to the folder of the JSON file that holds them** (absolute paths
are accepted too); :func:`data_prep.io.load_llava_dataset` resolves them to absolute paths.

- :mod:`data_prep.records`: record checks (:func:`validate_record`) and bad-record accounting.
- :mod:`data_prep.io`: reading and writing record files, the ``datasets`` loader.
- :mod:`data_prep.prompts`: the seeded prompt pools.
- :mod:`data_prep.flickr8k`, :mod:`data_prep.sroie`: the two preparations.
- :mod:`data_prep.qa` (with :mod:`~data_prep.qa_facts`, :mod:`~data_prep.qa_vocab`): short-answer questions
  from Flickr8k captions; :mod:`data_prep.textonly` (with :mod:`~data_prep.textonly_prompts`): text-only
  chats answered by the base LLM.
- :mod:`data_prep.cli`: ``vlm prep ...``.
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
