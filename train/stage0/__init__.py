"""Stage 0: train vlm's own CLIP ViT vision tower (teacher distillation + contrastive captions)."""
