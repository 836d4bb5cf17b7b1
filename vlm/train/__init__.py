"""Training stages for vlm: stage 1 (projector alignment), stage 2 (instruction tuning), and a CLIP text tower
for the locked vision tower (LiT, ``vlm.train.lit``)."""
