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

# Training phrasings of the aerial scene datasets the bundled model was fine-tuned on (stage 2,
# ``training/train_mini_joint.py``), class folder -> phrasings. The first of each is the readable
# name of :mod:`geobimors.class_names`, which evaluations use.
UC_MERCED_SYNONYMS: dict[str, list[str]] = {
    "agricultural": ["agricultural land", "farmland", "cropland", "crop fields"],
    "airplane": ["airplanes", "an airplane", "aircraft parked at an airport", "planes on the apron"],
    "baseballdiamond": ["baseball diamond", "a baseball field", "a ball field"],
    "beach": ["beach", "a sandy beach", "the shore with waves", "coastline"],
    "buildings": ["buildings", "large buildings", "city buildings", "rooftops of buildings"],
    "chaparral": ["chaparral shrubland", "chaparral", "dry scrub", "sparse shrubs on bare soil"],
    "denseresidential": ["dense residential area", "densely packed houses", "a crowded neighbourhood"],
    "forest": ["forest", "dense trees", "woods", "tree canopy"],
    "freeway": ["freeway", "a multi-lane highway", "a motorway", "an expressway"],
    "golfcourse": ["golf course", "a golf course with fairways", "golf greens", "fairways and sand bunkers"],
    "harbor": ["harbor", "a marina", "boats in a harbor", "docked boats"],
    "intersection": ["road intersection", "a crossroads", "crossing roads", "a street junction"],
    "mediumresidential": ["medium residential area", "suburban houses", "houses with gardens", "a neighbourhood"],
    "mobilehomepark": ["mobile home park", "trailer park", "rows of mobile homes", "a caravan park"],
    "overpass": ["overpass", "a highway overpass", "a flyover", "an interchange bridge"],
    "parkinglot": ["parking lot", "a car park", "parked cars", "a parking area"],
    "river": ["river", "a river with its banks", "a stream", "a waterway"],
    "runway": ["airport runway", "a runway", "an airstrip", "runway markings"],
    "sparseresidential": ["sparse residential area", "scattered houses", "a few houses among trees", "rural houses"],
    "storagetanks": ["storage tanks", "oil tanks", "round storage tanks", "fuel tanks"],
    "tenniscourt": ["tennis court", "tennis courts", "a sports court", "a tennis court among trees"],
}
AID_SYNONYMS: dict[str, list[str]] = {
    "Airport": ["airport", "an airport with runways", "airport terminal"],
    "BareLand": ["bare land", "barren land", "bare soil", "empty land"],
    "BaseballField": ["baseball field", "a baseball diamond", "a ball park"],
    "Beach": ["beach", "a sandy beach", "the seashore"],
    "Bridge": ["bridge", "a bridge over water", "a bridge across a river"],
    "Center": ["city center", "downtown", "a town centre", "dense city blocks"],
    "Church": ["church", "a church building", "a cathedral"],
    "Commercial": ["commercial area", "shops and offices", "a business district"],
    "DenseResidential": ["dense residential area", "densely packed houses", "crowded housing"],
    "Desert": ["desert", "sand dunes", "arid sand"],
    "Farmland": ["farmland", "agricultural fields", "crop fields"],
    "Forest": ["forest", "dense trees", "woodland canopy"],
    "Industrial": ["industrial area", "factories", "industrial buildings", "warehouses"],
    "Meadow": ["meadow", "grassland", "a green meadow"],
    "MediumResidential": ["medium residential area", "suburban houses", "houses with gardens"],
    "Mountain": ["mountain", "mountains", "a mountain range", "rugged terrain"],
    "Park": ["park", "a city park", "a public park with trees and paths"],
    "Parking": ["parking lot", "a car park", "parked cars"],
    "Playground": ["playground", "a sports ground with a running track", "an athletics field"],
    "Pond": ["pond", "a small lake", "ponds"],
    "Port": ["port", "a harbour with ships", "docks", "a seaport"],
    "RailwayStation": ["railway station", "a train station", "railway tracks at a station"],
    "Resort": ["resort", "a holiday resort", "a resort with swimming pools"],
    "River": ["river", "a river", "a waterway"],
    "School": ["school", "school buildings", "a campus"],
    "SparseResidential": ["sparse residential area", "scattered houses", "rural houses"],
    "Square": ["city square", "a plaza", "a public square"],
    "Stadium": ["stadium", "a sports stadium", "an arena"],
    "StorageTanks": ["storage tanks", "oil tanks", "round storage tanks"],
    "Viaduct": ["viaduct", "an elevated road", "a highway interchange"],
}

# Every phrasing group the bundled model's text projection was trained on (stage 2): one list per
# class of each dataset (a class name shared by two datasets is two groups). Zero-shot labels outside
# them are anchored to the nearest groups (geobimors.models.anchors).
TRAINED_CONCEPTS: list[list[str]] = [
    group for synonyms in (TRAIN_SYNONYMS, UC_MERCED_SYNONYMS, AID_SYNONYMS) for group in synonyms.values()
]
