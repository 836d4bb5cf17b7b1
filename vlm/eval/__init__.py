"""Evaluation helpers for vlm (retrieval metrics, embeddings)."""
