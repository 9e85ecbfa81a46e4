"""Build the installable plugin zip: python3 qgis_plugin/build.py [-o dist/].

The zip holds the ``geobimors_qgis`` folder, as QGIS' "Install from ZIP" expects.
"""

from __future__ import annotations

import argparse
import configparser
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = HERE / "geobimors_qgis"


def build(out_dir: Path) -> Path:
    """Write ``geobimors_qgis-VERSION.zip`` into ``out_dir`` and return its path."""
    meta = configparser.ConfigParser()
    meta.read(PACKAGE / "metadata.txt")
    version = meta["general"]["version"]
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"geobimors_qgis-{version}.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(PACKAGE.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                archive.write(path, Path("geobimors_qgis") / path.relative_to(PACKAGE))
    return target


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-o", "--out", type=Path, default=HERE.parent / "dist")
    print(build(parser.parse_args().out))
