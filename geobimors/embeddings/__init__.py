"""The persisted features stage: chip embeddings in GeoParquet, and what is answered from them."""
