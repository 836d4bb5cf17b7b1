"""Training stages for vlm: stage 0 (vision tower), stage 1 (projector alignment), stage 2 (instruction tuning)."""
