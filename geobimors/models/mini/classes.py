"""The EuroSAT classes geobimors-mini was trained on, as plain names and phrasings.

The training script (``training/train_mini.py``) learns from ``TRAIN_SYNONYMS``;
evaluations, examples and tests label chips with ``PLAIN_CLASS_NAMES`` and probe new
wording with ``HELD_OUT_PARAPHRASES``, which training never sees.
"""

from __future__ import annotations

# Class folder -> training phrasings (the first is the plain class name used for evaluation).
TRAIN_SYNONYMS: dict[str, list[str]] = {
    "AnnualCrop": ["annual crop land", "annual crops", "cropland", "arable land", "cultivated fields", "crop fields"],
    "Forest": ["forest", "dense forest", "trees", "forested land", "tree cover"],
    "HerbaceousVegetation": [
        "herbaceous vegetation",
        "natural grassland",
        "shrubs and herbs",
        "wild vegetation",
        "herbaceous plants",
    ],
    "Highway": ["highway", "road", "a major road", "expressway", "freeway"],
    "Industrial": ["industrial buildings", "industrial area", "factories", "warehouses", "industrial zone"],
    "Pasture": ["pasture land", "pasture", "grazing land", "meadow for livestock", "grassland for grazing"],
    "PermanentCrop": ["permanent crop land", "permanent crops", "orchards", "vineyards", "plantation"],
    "Residential": ["residential buildings", "residential area", "houses", "housing", "a town"],
    "River": ["river", "a river", "stream", "river channel", "waterway"],
    "SeaLake": ["sea or lake", "sea", "lake", "open water", "body of water"],
}
# Class folder -> the plain class name that evaluations and the examples use.
PLAIN_CLASS_NAMES: dict[str, str] = {folder: names[0] for folder, names in TRAIN_SYNONYMS.items()}
# Never used in training: label phrasings to test generalisation to new wording.
HELD_OUT_PARAPHRASES: dict[str, str] = {
    "AnnualCrop": "agricultural fields",
    "Forest": "woodland",
    "HerbaceousVegetation": "scrubland",
    "Highway": "motorway",
    "Industrial": "manufacturing site",
    "Pasture": "rangeland",
    "PermanentCrop": "olive groves",
    "Residential": "suburban neighbourhood",
    "River": "watercourse",
    "SeaLake": "ocean",
}
