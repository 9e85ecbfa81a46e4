"""Vector stage: chip polygons, dissolved regions, QGIS styles, atomic GeoPackage writes."""
