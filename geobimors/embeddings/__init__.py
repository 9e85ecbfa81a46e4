"""The persisted features stage: raster -> chips -> features (the embeddings store) -> labels/search -> vectors.

* :mod:`geobimors.embeddings.store` -- the GeoParquet file format, its writer and reader;
* :mod:`geobimors.embeddings.embed` -- ``geobimors embed`` and ``map --embeddings`` (the only step reading pixels);
* :mod:`geobimors.embeddings.classify` -- re-labelling from the store (``map --from-embeddings``);
* :mod:`geobimors.embeddings.search` -- text and example search (``geobimors search``);
* :mod:`geobimors.embeddings.index` -- the approximate index sidecar (``geobimors index``).
"""
