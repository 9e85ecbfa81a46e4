"""Which scenes a run maps: paths, folders, globs, list files and STAC catalogs, resolved to a list.

People who map a region hold a folder of tiles, a list of URLs or a STAC catalog rather
than one GeoTIFF. :func:`resolve_scenes` turns the arguments of ``geobimors map`` /
``geobimors embed`` into an ordered, de-duplicated list of :class:`SceneSource`, each
one a raster GDAL opens on its own pixel grid (a VRT mosaic counts as one scene).

Accepted, in any mix:

- a raster file path or a URL (``https://``, ``s3://``, ``/vsicurl/...``);
- a folder: every raster inside, sub-folders included, in sorted order;
- a glob pattern (``"tiles/*.tif"``, ``"**/*.jp2"``; quote it so the shell leaves it);
- ``@list.txt``: one path or URL per line (``#`` comments; relative paths are
  relative to the list file);
- a local STAC file: an Item, an ItemCollection, or a Collection/Catalog tree, read
  with pystac (remote links and assets only with ``allow_network``). The asset is
  ``asset`` when given, else the asset whose bands are red, green and blue
  (``eo:bands`` or STAC 1.1 ``bands`` common names), else one called ``visual``;
  the item's datetime is kept.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geobimors.errors import InputError, warn
from geobimors.files import read_regular_file
from geobimors.raster.scene import is_remote

#: Suffixes of the files a folder or glob contributes as scenes.
RASTER_SUFFIXES = frozenset({".tif", ".tiff", ".vrt", ".jp2", ".img", ".ntf", ".nitf", ".hdf", ".h5", ".nc"})
#: Largest list or STAC file read: a catalog of a whole country's items is a few MB.
MAX_INDEX_FILE_BYTES = 64 * 1024 * 1024
_STAC_TYPES = ("Feature", "FeatureCollection", "Collection", "Catalog")
_RGB = ("red", "green", "blue")


@dataclass(frozen=True)
class SceneSource:
    """One scene of a run.

    Attributes:
        path: what GDAL opens: a local path (absolute) or a URL / ``/vsi`` path.
        name: a short, unique name of the scene in the run (the ``scene`` column).
        datetime: acquisition time (ISO 8601) when known (STAC items), else ``None``.
        origin: the argument it came from (for messages).
    """

    path: str
    name: str
    datetime: str | None = None
    origin: str = ""

    @property
    def remote(self) -> bool:
        """True when reading the scene needs the network."""
        return is_remote(self.path)


def read_index_file(path: Path, what: str) -> str:
    """Text of a small regular file (a list of scenes, a STAC document), bounded in size.

    Raises:
        InputError: missing, not a regular file (a folder, a device such as /dev/zero, a FIFO),
            larger than :data:`MAX_INDEX_FILE_BYTES`, or not UTF-8 text.
    """
    try:
        data = read_regular_file(path, what, MAX_INDEX_FILE_BYTES)
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{what} {path} is a directory, not a regular file; pass a file") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{what} {path} is not UTF-8 text") from None


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _rasters_in(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in RASTER_SUFFIXES]
    return sorted(found)


def _stac_kind(path: Path) -> str | None:
    """The STAC object type of a .json file, or ``None`` when it is not STAC."""
    if path.suffix.lower() not in (".json", ".geojson"):
        return None
    try:
        data = json.loads(read_index_file(path, "STAC file"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); give a STAC file") from None
    kind = data.get("type") if isinstance(data, dict) else None
    if kind not in _STAC_TYPES:
        raise InputError(f"{path} is JSON but not a STAC Item, ItemCollection, Collection or Catalog (type {kind!r})")
    return str(kind)


def _band_names(asset: Any) -> list[str]:
    fields = asset.extra_fields
    bands = fields.get("eo:bands") or fields.get("bands") or []
    names = []
    for band in bands if isinstance(bands, list) else []:
        if isinstance(band, dict):
            names.append(str(band.get("common_name") or band.get("eo:common_name") or band.get("name") or "").lower())
    return names


def _pick_asset(item: Any, asset_key: str | None, origin: str) -> Any:
    assets = item.assets
    if asset_key is not None:
        if asset_key not in assets:
            raise InputError(
                f"STAC item {item.id} in {origin} has no asset {asset_key!r}; its assets: {', '.join(sorted(assets))}"
            )
        return assets[asset_key]
    for asset in assets.values():
        names = _band_names(asset)
        if all(colour in names for colour in _RGB):
            return asset
    if "visual" in assets:
        return assets["visual"]
    raise InputError(
        f"STAC item {item.id} in {origin} has no asset with red, green and blue bands and none called 'visual'; "
        f"choose one with --asset (its assets: {', '.join(sorted(assets))})"
    )


def _item_datetime(item: Any) -> str | None:
    when = item.datetime or item.common_metadata.start_datetime
    return when.isoformat() if when is not None else None


def _local_stac_io(allow_network: bool) -> Any:
    """A pystac reader that follows only local links unless the network is allowed."""
    from pystac.stac_io import DefaultStacIO

    class LocalStacIO(DefaultStacIO):
        refused: InputError | None = None  # pystac wraps reader errors: keep ours to re-raise

        def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
            href = os.fspath(source)
            if is_remote(href) and not allow_network:
                self.refused = InputError(
                    f"the STAC catalog links to {href}, a remote document; pass --allow-network to follow it"
                )
                raise self.refused
            local = Path(href.removeprefix("file://"))
            if not is_remote(href):
                return read_index_file(local, "STAC file")
            return str(super().read_text(source, *args, **kwargs))

    return LocalStacIO()


def _stac_items(path: Path, kind: str, allow_network: bool) -> Iterable[Any]:
    import pystac

    io = _local_stac_io(allow_network)
    try:
        if kind == "Feature":
            return [pystac.Item.from_file(str(path), stac_io=io)]
        if kind == "FeatureCollection":
            return list(pystac.ItemCollection.from_file(str(path), stac_io=io))
        catalog = pystac.read_file(str(path), stac_io=io)
        if not isinstance(catalog, pystac.Catalog):
            raise InputError(f"{path} is a STAC {type(catalog).__name__}, not a Catalog or Collection")
        return list(catalog.get_items(recursive=True))
    except InputError:
        raise
    except Exception as exc:  # pystac raises many types for malformed documents and broken links
        if io.refused is not None:
            raise io.refused from None
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read STAC {kind} {path}: {text}") from None


def _from_stac(path: Path, kind: str, asset_key: str | None, allow_network: bool) -> list[SceneSource]:
    out = []
    for item in _stac_items(path, kind, allow_network):
        asset = _pick_asset(item, asset_key, str(path))
        href = str(asset.get_absolute_href() or asset.href).removeprefix("file://")
        if is_remote(href) and not allow_network:
            raise InputError(
                f"STAC item {item.id} in {path}: its asset is remote ({href}); pass --allow-network to read it"
            )
        # Items of an ItemCollection have no self link: their relative hrefs are relative to the file.
        target = href if is_remote(href) else str((path.parent / href).absolute())
        out.append(SceneSource(target, str(item.id), _item_datetime(item), str(path)))
    if not out:
        raise InputError(f"STAC {kind} {path} holds no items")
    return out


def _from_list(path: Path) -> list[str]:
    entries = []
    for line in read_index_file(path, "scene list").splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if is_remote(text) or Path(text).expanduser().is_absolute():
            entries.append(text)
        else:
            entries.append(str(path.parent / text))
    if not entries:
        raise InputError(f"scene list {path} names no scenes (one path or URL per line, # for comments)")
    return entries


def _expand(
    argument: str, asset_key: str | None, allow_network: bool, depth: int = 0, missing_ok: bool = False
) -> list[SceneSource]:
    if is_remote(argument):
        return [SceneSource(argument, "", None, argument)]
    if argument.startswith("@"):
        if depth > 0:
            raise InputError(f"scene list {argument[1:]} names another list ({argument}); lists do not nest")
        listed = Path(argument[1:]).expanduser()
        entries = _from_list(listed)
        return [s for entry in entries for s in _expand(entry, asset_key, allow_network, depth + 1, missing_ok)]
    path = Path(argument).expanduser()
    if path.is_dir():
        rasters = _rasters_in(path)
        if not rasters:
            raise InputError(
                f"folder {path} holds no rasters ({', '.join(sorted(RASTER_SUFFIXES))}); give files or a glob"
            )
        return [SceneSource(str(p.absolute()), "", None, argument) for p in rasters]
    if not path.exists() and _is_glob(argument):
        matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(argument), recursive=True))
        rasters = [m for m in matches if m.is_file() and m.suffix.lower() in RASTER_SUFFIXES]
        if not rasters:
            raise InputError(f"the pattern {argument!r} matches no raster files ({len(matches)} paths in all)")
        return [SceneSource(str(p.absolute()), "", None, argument) for p in rasters]
    if not path.exists():
        if missing_ok:  # reported when the scene is planned, without stopping the others
            return [SceneSource(str(path.absolute()), "", None, argument)]
        raise InputError(f"scene {argument} does not exist")
    kind = _stac_kind(path)
    if kind is not None:
        return _from_stac(path, kind, asset_key, allow_network)
    return [SceneSource(str(path.absolute()), "", None, argument)]


def _unique_names(sources: list[SceneSource]) -> list[SceneSource]:
    """Give every scene a short unique name: the STAC id, else the file stem, else parent/stem."""
    stems = [s.name or Path(s.path.split("?")[0].rstrip("/")).stem or "scene" for s in sources]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    named = []
    seen: dict[str, int] = {}
    for source, stem in zip(sources, stems):
        name = stem
        if counts[stem] > 1 and not source.name:
            parent = Path(source.path.split("?")[0]).parent.name
            name = f"{parent}/{stem}" if parent else stem
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}~{seen[name]}"
        named.append(SceneSource(source.path, name, source.datetime, source.origin))
    return named


def resolve_scenes(
    arguments: Sequence[str], asset: str | None = None, allow_network: bool = False, missing_ok: bool = False
) -> list[SceneSource]:
    """The scenes named by ``arguments`` (paths, folders, globs, ``@lists``, STAC files, URLs).

    Args:
        arguments: what the user gave, in order.
        asset: STAC asset key to map (default: the RGB asset, else ``visual``).
        allow_network: follow remote links and assets of STAC files. URLs given as arguments or
            in a ``@list`` (the user's own choice) are kept either way; a STAC file, often made
            by someone else, reaches the network only when allowed.
        missing_ok: keep a file path that does not exist (given directly or in a ``@list``) as a
            scene, so that a run of many scenes reports it as a failed scene instead of refusing.

    Returns:
        Scenes in argument order (sorted within a folder or glob), each once, with unique names.

    Raises:
        InputError: an argument that names no scene (missing path, empty folder, a glob that
            matches nothing, a STAC file without a usable asset, an unreadable list).
    """
    if not arguments:
        raise InputError("no scenes given: pass raster paths, folders, globs, @list.txt files or STAC files")
    sources: list[SceneSource] = []
    seen: set[str] = set()
    duplicates = []
    for argument in arguments:
        for source in _expand(str(argument), asset, allow_network, missing_ok=missing_ok):
            key = source.path if source.remote else os.path.realpath(source.path)
            if key in seen:
                duplicates.append(source.path)
                continue
            seen.add(key)
            sources.append(source)
    if duplicates:
        more = f" and {len(duplicates) - 1} more" if len(duplicates) > 1 else ""
        warn(f"scene {duplicates[0]}{more} named more than once: each scene is mapped once")
    return _unique_names(sources)


def check_output_not_input(output: str | os.PathLike[str], sources: Sequence[SceneSource]) -> None:
    """Refuse an output path that is one of the scenes (it would be overwritten, then read).

    Raises:
        InputError: the output is among the inputs.
    """
    target = os.path.realpath(os.fspath(output))
    for source in sources:
        if not source.remote and os.path.realpath(source.path) == target:
            raise InputError(f"the output {output} is also an input scene; choose another -o path")
