"""vlm benchmarks: vlm vs stock transformers, measured in one process with interleaved repeats.

Run ``vlm bench --help``. Results: ``vlm/bench/results/*.json`` and the table in ``vlm/bench/README.md``.
"""
