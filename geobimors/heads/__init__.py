"""Label stage: heads that turn chips into class logits (zero-shot, CoOp, CoCoOp, BiMoRS)."""
