"""Readable names of the class folders of common remote-sensing scene datasets.

Dataset folders run words together (UC Merced's ``denseresidential``) or use
CamelCase (AID's ``DenseResidential``, EuroSAT's ``SeaLake``). A text encoder
reads "dense residential area" far better than either, so class folders that
are known here are labelled with their readable name; others are split into
words (:func:`geobimors.labels.camel_to_words`). One table for every use:
training data, evaluation, benchmarks and the bundled model's prompts.
"""

from __future__ import annotations

import re

from geobimors.labels import camel_to_words

# EuroSAT (Helber et al., 2019): the plain names the bundled mini model was trained with.
EUROSAT: dict[str, str] = {
    "AnnualCrop": "annual crop land",
    "Forest": "forest",
    "HerbaceousVegetation": "herbaceous vegetation",
    "Highway": "highway",
    "Industrial": "industrial buildings",
    "Pasture": "pasture land",
    "PermanentCrop": "permanent crop land",
    "Residential": "residential buildings",
    "River": "river",
    "SeaLake": "sea or lake",
}

# UC Merced Land Use (Yang & Newsam, 2010), 21 classes, 0.3 m aerial.
UC_MERCED: dict[str, str] = {
    "agricultural": "agricultural land",
    "airplane": "airplanes",
    "baseballdiamond": "baseball diamond",
    "beach": "beach",
    "buildings": "buildings",
    "chaparral": "chaparral shrubland",
    "denseresidential": "dense residential area",
    "forest": "forest",
    "freeway": "freeway",
    "golfcourse": "golf course",
    "harbor": "harbor",
    "intersection": "road intersection",
    "mediumresidential": "medium residential area",
    "mobilehomepark": "mobile home park",
    "overpass": "overpass",
    "parkinglot": "parking lot",
    "river": "river",
    "runway": "airport runway",
    "sparseresidential": "sparse residential area",
    "storagetanks": "storage tanks",
    "tenniscourt": "tennis court",
}

# AID (Xia et al., 2017), 30 classes, aerial 0.5-8 m (2-32 m in the 4x downsampled copy).
AID: dict[str, str] = {
    "Airport": "airport",
    "BareLand": "bare land",
    "BaseballField": "baseball field",
    "Beach": "beach",
    "Bridge": "bridge",
    "Center": "city center",
    "Church": "church",
    "Commercial": "commercial area",
    "DenseResidential": "dense residential area",
    "Desert": "desert",
    "Farmland": "farmland",
    "Forest": "forest",
    "Industrial": "industrial area",
    "Meadow": "meadow",
    "MediumResidential": "medium residential area",
    "Mountain": "mountain",
    "Park": "park",
    "Parking": "parking lot",
    "Playground": "playground",
    "Pond": "pond",
    "Port": "port",
    "RailwayStation": "railway station",
    "Resort": "resort",
    "River": "river",
    "School": "school",
    "SparseResidential": "sparse residential area",
    "Square": "city square",
    "Stadium": "stadium",
    "StorageTanks": "storage tanks",
    "Viaduct": "viaduct",
}

DATASETS: dict[str, dict[str, str]] = {"eurosat": EUROSAT, "ucmerced": UC_MERCED, "aid": AID}


def _key(folder: str) -> str:
    return re.sub(r"[^0-9a-z]", "", folder.casefold())


# Folder spelling does not matter (``DenseResidential``, ``denseresidential``, ``dense_residential``).
# Where datasets name one class differently, the first table wins (EuroSAT, then UC Merced, then AID).
_READABLE: dict[str, str] = {}
for _table in DATASETS.values():
    for _folder, _name in _table.items():
        _READABLE.setdefault(_key(_folder), _name)


def readable_class_name(folder: str) -> str:
    """The readable name of a class folder (``denseresidential`` -> ``dense residential area``).

    Known dataset folders get their written name; others are split into words
    (``SnowField`` -> ``snow field``).
    """
    return _READABLE.get(_key(folder)) or camel_to_words(folder)
