"""Model stage: CLIP models (open_clip), prompt templates, captioners, caption encoders."""
