"""Data preparation: turn the real data sets into LLaVA conversation JSON for training.

The training format is the one LLaVA and TinyLLaVA read::

    {"id": "...", "image": "path/to.jpg",
     "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}]}

Multi-turn records (human/gpt alternating) and text-only records (no ``image``) are allowed.
Image paths are written **relative to the folder of the JSON file that holds them** (absolute paths
are accepted too). The format itself (reading, checks, bad-record accounting) is in the core,
:mod:`vlm.records`.

- :mod:`vlm.prep.io`: writing record files, reading them back with bad records counted.
- :mod:`vlm.prep.prompts`: the seeded prompt pools.
- :mod:`vlm.prep.flickr8k`, :mod:`vlm.prep.sroie`: the two preparations.
- :mod:`vlm.prep.qa` (with :mod:`~vlm.prep.qa_facts`, :mod:`~vlm.prep.qa_vocab`): short-answer questions
  from Flickr8k captions; :mod:`vlm.prep.textonly` (with :mod:`~vlm.prep.textonly_prompts`): text-only
  chats answered by the base LLM.
- :mod:`vlm.prep.cli`: ``vlm prep ...``.
"""
from vlm.records import BadRecordError, RecordAccounting, load_records, validate_record

from .io import write_records

__all__ = ["BadRecordError", "RecordAccounting", "load_records", "validate_record", "write_records"]
