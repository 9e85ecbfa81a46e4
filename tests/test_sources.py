"""Resolving the scenes of a run: paths, folders, globs, @lists, STAC files."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from geobimors.errors import GeobimorsWarning, InputError
from geobimors.raster.sources import check_output_not_input, resolve_scenes

from rasters import make_geotiff, random_rgb


def _tiles(folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [make_geotiff(folder / name, random_rgb(8, 8)) for name in names]


def test_paths_folders_globs_and_lists_in_argument_order(tmp_path: Path):
    b, a = _tiles(tmp_path / "d", ["b.tif", "a.tif"])
    (nested,) = _tiles(tmp_path / "d" / "sub", ["c.TIF"])
    (tmp_path / "d" / "notes.txt").write_text("not a raster")
    (tmp_path / "d" / "a.tif.aux.xml").write_text("<PAMDataset/>")
    (x,) = _tiles(tmp_path / "e", ["x.tif"])
    listing = tmp_path / "scenes.txt"
    listing.write_text("# my scenes\n\ne/x.tif\n   \nhttps://example.com/y.tif\n")
    scenes = resolve_scenes([str(tmp_path / "d"), f"@{listing}"])
    assert [s.path for s in scenes] == [str(a), str(b), str(nested), str(x), "https://example.com/y.tif"]
    assert [s.name for s in scenes] == ["a", "b", "c", "x", "y"]
    assert scenes[-1].remote and not scenes[0].remote
    globbed = resolve_scenes([str(tmp_path / "**" / "*.tif")])
    assert sorted(s.path for s in globbed) == sorted(map(str, [a, b, x]))


def test_duplicates_are_mapped_once_with_a_warning(tmp_path: Path):
    (a,) = _tiles(tmp_path, ["a.tif"])
    with pytest.warns(GeobimorsWarning, match="named more than once"):
        scenes = resolve_scenes([str(a), str(tmp_path), str(tmp_path / "." / "a.tif")])
    assert [s.path for s in scenes] == [str(a)]


def test_same_stem_in_two_folders_gets_distinct_names(tmp_path: Path):
    _tiles(tmp_path / "north", ["tile.tif"])
    _tiles(tmp_path / "south", ["tile.tif"])
    names = [s.name for s in resolve_scenes([str(tmp_path)])]
    assert names == ["north/tile", "south/tile"]


@pytest.mark.parametrize(
    ("argument", "fragment"),
    [
        ("missing.tif", "does not exist"),
        ("empty", "holds no rasters"),
        ("*.jp2", "matches no raster files"),
        ("@missing.txt", "does not exist"),
        ("@empty.txt", "names no scenes"),
        ("@nested.txt", "do not nest"),
        ("bad.json", "not valid JSON"),
        ("other.json", "not a STAC Item"),
    ],
)
def test_arguments_that_name_no_scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argument: str, fragment: str):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.txt").write_text("# nothing\n")
    (tmp_path / "nested.txt").write_text("@empty.txt\n")
    (tmp_path / "bad.json").write_text("{oops")
    (tmp_path / "other.json").write_text(json.dumps({"type": "Topology"}))
    with pytest.raises(InputError, match=fragment):
        resolve_scenes([argument])


def test_list_file_must_be_a_regular_bounded_file(tmp_path: Path):
    with pytest.raises(InputError, match="not a regular file"):
        resolve_scenes(["@/dev/zero"])
    with pytest.raises(InputError, match="not a regular file"):
        resolve_scenes([f"@{tmp_path}"])


def test_no_arguments():
    with pytest.raises(InputError, match="no scenes given"):
        resolve_scenes([])


def _item(item_id: str, href: str, assets: dict | None = None, when: str = "2024-05-01T10:00:00Z") -> dict:
    rgb = {
        "href": href,
        "type": "image/tiff; application=geotiff",
        "eo:bands": [
            {"name": "B4", "common_name": "red"},
            {"name": "B3", "common_name": "green"},
            {"name": "B2", "common_name": "blue"},
        ],
    }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": item_id,
        "geometry": {"type": "Point", "coordinates": [9.0, 45.0]},
        "bbox": [9.0, 45.0, 9.0, 45.0],
        "properties": {"datetime": when},
        "links": [],
        "assets": assets if assets is not None else {"thumbnail": {"href": "thumb.png"}, "rgb": rgb},
    }


def test_stac_item_collection_picks_the_rgb_asset_and_keeps_datetime(tmp_path: Path):
    _tiles(tmp_path, ["s1.tif", "s2.tif"])
    collection = {"type": "FeatureCollection", "features": [_item("S1", "./s1.tif"), _item("S2", "s2.tif")]}
    (tmp_path / "items.json").write_text(json.dumps(collection))
    scenes = resolve_scenes([str(tmp_path / "items.json")])
    assert [(s.name, Path(s.path).name) for s in scenes] == [("S1", "s1.tif"), ("S2", "s2.tif")]
    assert all(Path(s.path).parent == tmp_path.absolute() and Path(s.path).is_file() for s in scenes)
    assert scenes[0].datetime == "2024-05-01T10:00:00+00:00"


def test_stac_catalog_tree_and_asset_choice(tmp_path: Path):
    _tiles(tmp_path / "items", ["a.tif", "b.tif"])
    item = _item("A", "./a.tif", assets={"visual": {"href": "./a.tif"}, "nir": {"href": "./b.tif"}})
    item["links"] = [{"rel": "root", "href": "../catalog.json"}, {"rel": "parent", "href": "../catalog.json"}]
    (tmp_path / "items" / "A.json").write_text(json.dumps(item))
    catalog = {
        "type": "Catalog",
        "stac_version": "1.0.0",
        "id": "region",
        "description": "tiles",
        "links": [{"rel": "root", "href": "./catalog.json"}, {"rel": "item", "href": "./items/A.json"}],
    }
    (tmp_path / "catalog.json").write_text(json.dumps(catalog))
    (visual,) = resolve_scenes([str(tmp_path / "catalog.json")])
    assert Path(visual.path) == tmp_path / "items" / "a.tif"
    (nir,) = resolve_scenes([str(tmp_path / "catalog.json")], asset="nir")
    assert Path(nir.path) == tmp_path / "items" / "b.tif"
    with pytest.raises(InputError, match=r"no asset 'swir'.*nir, visual"):
        resolve_scenes([str(tmp_path / "catalog.json")], asset="swir")


def test_stac_item_without_a_usable_asset(tmp_path: Path):
    (tmp_path / "item.json").write_text(json.dumps(_item("X", "", assets={"thumbnail": {"href": "t.png"}})))
    with pytest.raises(InputError, match="choose one with --asset"):
        resolve_scenes([str(tmp_path / "item.json")])


class _Recorder(BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _Recorder.hits.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def http_server():
    _Recorder.hits = []
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.hits
    server.shutdown()
    server.server_close()


def test_stac_file_does_not_reach_the_network(tmp_path: Path, http_server):
    url, hits = http_server
    (tmp_path / "item.json").write_text(json.dumps(_item("R", f"{url}/scene.tif")))
    with pytest.raises(InputError, match=r"remote.*--allow-network"):
        resolve_scenes([str(tmp_path / "item.json")])
    catalog = {
        "type": "Catalog",
        "stac_version": "1.0.0",
        "id": "c",
        "description": "remote child",
        "links": [{"rel": "child", "href": f"{url}/child.json"}],
    }
    (tmp_path / "catalog.json").write_text(json.dumps(catalog))
    with pytest.raises(InputError, match=r"remote document.*--allow-network"):
        resolve_scenes([str(tmp_path / "catalog.json")])
    assert hits == []
    (remote,) = resolve_scenes([str(tmp_path / "item.json")], allow_network=True)
    assert remote.path == f"{url}/scene.tif" and remote.remote
    assert hits == []  # resolving never reads the asset itself


def test_output_among_inputs_is_refused(tmp_path: Path):
    (a,) = _tiles(tmp_path, ["a.tif"])
    scenes = resolve_scenes([str(a)])
    check_output_not_input(tmp_path / "out.gpkg", scenes)
    with pytest.raises(InputError, match="also an input scene"):
        check_output_not_input(tmp_path / "." / "a.tif", scenes)
