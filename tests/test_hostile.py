"""Hostile and absurd inputs (issue 16): no network reach from local files, bounded reads,
impossible georeferencing, absurd work, a race-free run lock, deterministic random models.

The catalogue cases reuse the harness of ``test_hardening.py`` (exit code, one ``Error:``
line, no traceback, nothing left behind); every hostile file is generated in a tmp dir.
A local HTTP server records whether anything contacted it.
"""

from __future__ import annotations

import http.server
import json
import math
import multiprocessing
import os
import re
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from safetensors.torch import save_file
from test_hardening import CASES as HARDENING_CASES
from test_hardening import Case, base, labels, no_files_left, scene

from geobimors.errors import InputError
from geobimors.files import read_regular_file
from geobimors.raster.safety import (
    NO_NETWORK_CONFIG,
    is_user_url,
    network_guard,
    network_reference,
)

from cli_helpers import assert_one_line_error, run_cli
from rasters import make_geotiff, random_rgb

ROOT = Path(__file__).resolve().parents[1]


# --- a local HTTP server that records every request ------------------------------------------


class Recorder(http.server.ThreadingHTTPServer):
    """Serves ``payload`` for ``*.tif`` (404 otherwise) and appends every request path to ``log``.

    It runs in a process of its own: GDAL reads from threads that may hold the GIL,
    so a server thread in the test process could deadlock with them.
    """

    def __init__(self, log: Path, payload: bytes = b"") -> None:
        self.log = log
        self.payload = payload
        super().__init__(("127.0.0.1", 0), Handler)

    def record(self, path: str) -> None:
        with open(self.log, "a") as f:
            f.write(path + "\n")


class Handler(http.server.BaseHTTPRequestHandler):
    server: Recorder

    def do_GET(self) -> None:
        self.server.record(self.path)
        if self.server.payload and self.path.endswith(".tif"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.server.payload)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(self.server.payload)
            return
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Server:
    url: str
    log: Path

    @property
    def hits(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def _serve(log: str, payload: bytes, port: Any) -> None:
    recorder = Recorder(Path(log), payload)
    port.value = recorder.server_address[1]
    recorder.serve_forever()


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[Server]:
    payload = make_geotiff(tmp_path / "served.tif", random_rgb(64, 64)).read_bytes()
    ctx = multiprocessing.get_context("fork")
    port = ctx.Value("i", 0)
    log = tmp_path / "requests.log"
    process = ctx.Process(target=_serve, args=(str(log), payload, port), daemon=True)
    process.start()
    while port.value == 0 and process.is_alive():
        time.sleep(0.01)
    yield Server(f"http://127.0.0.1:{port.value}", log)
    process.terminate()
    process.join(10)


def write_vrt(path: Path, source: str, relative: bool = False, size: int = 64, extra: str = "") -> str:
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource>'
        f'<SourceFilename relativeToVRT="{int(relative)}">{source}</SourceFilename><SourceBand>{b}</SourceBand>'
        f"</SimpleSource></VRTRasterBand>"
        for b in (1, 2, 3)
    )
    path.write_text(
        f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>EPSG:32632</SRS>'
        f"<GeoTransform>500000,10,0,5000000,0,-10</GeoTransform>{extra}{bands}</VRTDataset>"
    )
    return str(path)


# Remote sources a mailed VRT could name; {url} is the recording server.
REMOTE_SOURCES = {
    "vsicurl": "/vsicurl/{url}/a.tif",
    "http": "{url}/b.tif",
    "vsicurl_streaming": "/vsicurl_streaming/{url}/c.tif",
    "vsis3": "/vsis3/bucket/d.tif",
    "vsigs": "/vsigs/bucket/e.tif",
    "vsiaz": "/vsiaz/container/f.tif",
    "vsizip over vsicurl": "/vsizip//vsicurl/{url}/g.zip/g.tif",
    "vrt:// over vsicurl": "vrt:///vsicurl/{url}/h.tif?bands=1",
    "ftp": "ftp://127.0.0.1:9/i.tif",
}


@pytest.fixture()
def s3_to_server(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point GDAL's S3 handler at the recording server, so a /vsis3/ request would show there."""
    monkeypatch.setenv("AWS_S3_ENDPOINT", server.url.removeprefix("http://"))
    monkeypatch.setenv("AWS_HTTPS", "NO")
    monkeypatch.setenv("AWS_NO_SIGN_REQUEST", "YES")
    monkeypatch.setenv("AWS_VIRTUAL_HOSTING", "FALSE")


def map_args(tmp: Path, model: str, scene_path: str, *extra: str) -> list[str]:
    return ["map", scene_path, "-l", labels(tmp), "-m", model, "--chip-size", "16", "-o", str(tmp / "out.gpkg"), *extra]


@pytest.mark.parametrize("kind", list(REMOTE_SOURCES))
def test_local_vrt_never_reaches_the_network(
    kind: str, server: Server, s3_to_server: None, capsys: pytest.CaptureFixture[str], tiny_model: str, tmp_path: Path
) -> None:
    source = REMOTE_SOURCES[kind].format(url=server.url)
    vrt = write_vrt(tmp_path / "mailed.vrt", source)
    before = {p.name for p in tmp_path.iterdir()}
    result = run_cli(capsys, *map_args(tmp_path, tiny_model, vrt))
    assert result.exit_code == 2 and "Traceback" not in result.err
    assert "would read from the network" in result.err and "--allow-network" in result.err
    assert server.hits == []
    no_files_left(tmp_path, before)


def test_nested_and_relative_vrts_are_inspected(
    server: Server, capsys: pytest.CaptureFixture[str], tiny_model: str, tmp_path: Path
) -> None:
    (tmp_path / "deep").mkdir()
    write_vrt(tmp_path / "deep" / "inner.vrt", f"/vsicurl/{server.url}/a.tif")
    write_vrt(tmp_path / "middle.vrt", "deep/inner.vrt", relative=True)
    outer = write_vrt(tmp_path / "outer.vrt", str(tmp_path / "middle.vrt"))
    result = run_cli(capsys, *map_args(tmp_path, tiny_model, outer))
    assert result.exit_code == 2 and "inner.vrt" in result.err and server.hits == []


def test_allow_network_opts_in(
    server: Server, capsys: pytest.CaptureFixture[str], tiny_model: str, tmp_path: Path
) -> None:
    """The control: with --allow-network the same VRT does reach the server (so the test above can fail)."""
    vrt = write_vrt(tmp_path / "mailed.vrt", f"/vsicurl/{server.url}/served.tif")
    result = run_cli(capsys, *map_args(tmp_path, tiny_model, vrt, "--allow-network", "-q"))
    assert server.hits, result.err
    assert result.exit_code == 0, result.err
    assert len(gpd.read_file(tmp_path / "out.gpkg", layer="chips")) == 16


def test_a_url_given_by_the_user_is_allowed(
    server: Server, capsys: pytest.CaptureFixture[str], tiny_model: str, tmp_path: Path
) -> None:
    result = run_cli(capsys, *map_args(tmp_path, tiny_model, f"{server.url}/served.tif", "-q"))
    assert result.exit_code == 0, result.err
    assert server.hits


def test_python_api_refuses_and_opts_in(server: Server, tiny_model: str, tmp_path: Path) -> None:
    import geobimors

    vrt = write_vrt(tmp_path / "mailed.vrt", f"/vsicurl/{server.url}/served.tif")
    with pytest.raises(InputError, match="would read from the network"):
        geobimors.map_scene(vrt, ["forest", "water"], model=tiny_model, chip_size=16, progress="none")
    assert server.hits == []
    chips = geobimors.map_scene(
        vrt, ["forest", "water"], model=tiny_model, chip_size=16, progress="none", allow_network=True
    )
    assert len(chips) == 16 and server.hits


@pytest.mark.parametrize("kind", ["vsicurl", "http", "vsis3", "vsizip over vsicurl", "vrt:// over vsicurl"])
def test_gdal_itself_refuses_network_io(
    kind: str, server: Server, s3_to_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: the GDAL configuration alone (no inspection) stops the request."""
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    source = REMOTE_SOURCES[kind].format(url=server.url)

    def read(guarded: bool, name: str) -> None:
        # Another file name per read: GDAL caches what it learnt about a URL.
        vrt = write_vrt(tmp_path / f"{name}.vrt", re.sub(r"/[a-z]\.(tif|zip)", rf"/{name}.\1", source))
        with network_guard(not guarded):
            try:
                with rasterio.open(vrt) as ds:
                    ds.read(1)
            except rasterio.errors.RasterioError:
                pass

    read(True, "guarded")
    assert server.hits == []
    read(False, "open")
    assert server.hits  # the same read without the guard does reach the server


def test_workers_read_with_the_guard(server: Server, tmp_path: Path) -> None:
    """A task (what a Dask worker runs) reads with GDAL's network lockdown from its ReadSpec."""
    import dataclasses

    from geobimors.raster.grid import GridSpec, build_grid
    from geobimors.raster.read import ChipReader, ReadSpec
    from geobimors.raster.scene import SceneInfo

    vrt = write_vrt(tmp_path / "w.vrt", f"/vsicurl/{server.url}/served.tif")
    info = SceneInfo(
        vrt, 64, 64, 3, "uint8", rasterio.crs.CRS.from_epsg(32632), Affine(10, 0, 5e5, 0, -10, 5e6), None, (), ()
    )
    grid = build_grid(info, GridSpec.parse(16))
    spec = ReadSpec(vrt, grid, (1, 2, 3), None)
    batch = ChipReader(spec).read_batch(list(grid.chips(0, 2)))
    assert server.hits == [] and batch.errors[0]  # (GDAL then gives up on the source: later reads are empty)
    # Another VRT file: a thread keeps its dataset handle per path, and GDAL gave up on that one's source.
    allowed = write_vrt(tmp_path / "w2.vrt", f"/vsicurl/{server.url}/served.tif")
    batch = ChipReader(dataclasses.replace(spec, path=allowed, allow_network=True)).read_batch(list(grid.chips(0, 2)))
    assert server.hits and not any(batch.errors)


def test_network_reference() -> None:
    assert network_reference("/vsizip//vsicurl/https://x/y.zip/a.tif")
    assert network_reference("WMS:http://host/wms")
    assert network_reference("/VSIS3/bucket/key")
    assert network_reference("EEDAI:projects/earthengine-public/assets/x")
    assert network_reference("http://www.opengis.net/def/crs/EPSG/0/4326") is None
    assert network_reference("vrt://local.tif?bands=1") is None
    assert network_reference("/data/scenes/http_mirror/a.tif") is None
    assert is_user_url("https://host/a.tif") and is_user_url("/vsis3/bucket/a.tif") and is_user_url("WMS:http://h")
    assert is_user_url("vrt:///vsicurl/http://h/a.tif") and not is_user_url("vrt://local.tif")
    assert not is_user_url("/data/vsicurl/http:/mailed.vrt") and not is_user_url("/vsizip/local.zip/a.tif")
    assert set(NO_NETWORK_CONFIG) >= {"CPL_VSIL_CURL_ALLOWED_EXTENSIONS", "GDAL_HTTP_PROXY"}


# --- hostile files for the catalogue ----------------------------------------------------------


def vrt_with(tmp: Path, source: str, name: str = "v.vrt", relative: bool = True, **kw: object) -> str:
    return write_vrt(tmp / name, source, relative=relative, **kw)  # type: ignore[arg-type]


def good_source(tmp: Path) -> str:
    scene(tmp, name="src.tif")
    return "src.tif"


def url_like_path(tmp: Path) -> str:
    """A mailed VRT saved under a folder named like a GDAL network handler: still a local file."""
    (tmp / "vsicurl" / "http:").mkdir(parents=True)
    return vrt_with(tmp, "/vsicurl/http://127.0.0.1:9/a.tif", "vsicurl/http:/x.vrt")


def fifo(tmp: Path, name: str) -> str:
    path = tmp / name
    os.mkfifo(path)
    return str(path)


def wms_description(tmp: Path) -> str:
    path = tmp / "layer.xml"
    path.write_text(
        "<GDAL_WMS><Service name='WMS'><ServerUrl>http://127.0.0.1:9/wms?</ServerUrl><Layers>x</Layers></Service>"
        "<DataWindow><UpperLeftX>0</UpperLeftX><UpperLeftY>1</UpperLeftY><LowerRightX>1</LowerRightX>"
        "<LowerRightY>0</LowerRightY><SizeX>64</SizeX><SizeY>64</SizeY></DataWindow></GDAL_WMS>"
    )
    return str(path)


def xml_bomb(tmp: Path) -> str:
    path = tmp / "bomb.vrt"
    entities = '<!ENTITY a "aaaaaaaaaa">'
    entities += "".join(f'<!ENTITY {c} "{("&" + p + ";") * 10}">' for p, c in zip("abcdefgh", "bcdefghi"))
    path.write_text(
        f'<?xml version="1.0"?><!DOCTYPE VRTDataset [{entities}]><VRTDataset rasterXSize="1" rasterYSize="1">'
        '<Metadata><MDI key="x">&i;</MDI></Metadata></VRTDataset>'
    )
    return str(path)


def external_entity(tmp: Path) -> str:
    path = tmp / "xxe.vrt"
    path.write_text(
        '<?xml version="1.0"?><!DOCTYPE VRTDataset [<!ENTITY src SYSTEM "http://127.0.0.1:9/x">]>'
        '<VRTDataset rasterXSize="64" rasterYSize="64"><VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
        "<SourceFilename>&src;</SourceFilename></SimpleSource></VRTRasterBand></VRTDataset>"
    )
    return str(path)


def python_pixel_function(tmp: Path) -> str:
    path = tmp / "code.vrt"
    path.write_text(
        '<VRTDataset rasterXSize="64" rasterYSize="64"><SRS>EPSG:32632</SRS>'
        "<GeoTransform>500000,10,0,5000000,0,-10</GeoTransform>"
        '<VRTRasterBand dataType="Byte" band="1" subClass="VRTDerivedRasterBand">'
        "<PixelFunctionType>f</PixelFunctionType><PixelFunctionLanguage>Python</PixelFunctionLanguage>"
        "<PixelFunctionCode><![CDATA[\nimport os\ndef f(*a, **k):\n    os.system('touch pwned')\n]]>"
        "</PixelFunctionCode>"
        "</VRTRasterBand></VRTDataset>"
    )
    return str(path)


def raw_dev_zero(tmp: Path) -> str:
    path = tmp / "raw.vrt"
    path.write_text(
        '<VRTDataset rasterXSize="64" rasterYSize="64"><SRS>EPSG:32632</SRS>'
        "<GeoTransform>500000,10,0,5000000,0,-10</GeoTransform>"
        '<VRTRasterBand dataType="Byte" band="1" subClass="VRTRawRasterBand">'
        '<SourceFilename relativeToVRT="0">/dev/zero</SourceFilename></VRTRasterBand></VRTDataset>'
    )
    return str(path)


def vrt_loop(tmp: Path) -> str:
    write_vrt(tmp / "b.vrt", "a.vrt", relative=True)
    return write_vrt(tmp / "a.vrt", "b.vrt", relative=True)


def no_band_vrt(tmp: Path) -> str:
    path = tmp / "empty.vrt"
    path.write_text('<VRTDataset rasterXSize="64" rasterYSize="64"><SRS>EPSG:32632</SRS></VRTDataset>')
    return str(path)


def zero_size_vrt(tmp: Path) -> str:
    return write_vrt(tmp / "zero.vrt", good_source(tmp), relative=True, size=0)


def huge_vrt(tmp: Path, size: int) -> str:
    return write_vrt(tmp / "huge.vrt", good_source(tmp), relative=True, size=size)


def zip_bomb(tmp: Path) -> str:
    """A zip whose central directory says a member inflates to 3.75 GB (patched: quick to make)."""
    path = tmp / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.tif", b"\0" * 1000)
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 24 : central + 28] = struct.pack("<I", 0xF0000000)
    path.write_bytes(bytes(data))
    return f"/vsizip/{path}/x.tif"


def geographic_beyond(tmp: Path, lon: float, lat: float) -> str:
    return scene(tmp, transform=Affine(0.01, 0, lon, 0, -0.01, lat), crs="EPSG:4326", name="geo.tif")


def crs_without_transform(tmp: Path) -> str:
    path = tmp / "notransform.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8", crs="EPSG:32632") as ds:
        ds.write(random_rgb(64, 64))
    return str(path)


def gcp_only(tmp: Path) -> str:
    path = tmp / "gcps.tif"
    gcps = [
        GroundControlPoint(r, c, 500000 + c * 10, 5000000 - r * 10) for r, c in ((0, 0), (0, 64), (64, 0), (64, 64))
    ]
    with rasterio.open(
        path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8", gcps=gcps, crs="EPSG:32632"
    ) as ds:
        ds.write(random_rgb(64, 64))
    return str(path)


def coarse(tmp: Path) -> str:
    return scene(tmp, random_rgb(256, 256), transform=Affine(300, 0, 500000, 0, -300, 5000000), name="coarse.tif")


def gpkg_raster(tmp: Path) -> str:
    path = tmp / "scene.gpkg"
    make_geotiff(path, random_rgb(64, 64), driver="GPKG")
    return str(path)


def output_linked_to_scene(tmp: Path, model: str) -> list[str]:
    args = base(tmp, model)
    (tmp / "link.gpkg").symlink_to(tmp / "default.tif")
    return [*base(tmp, model, scene=args[0], **{"-o": str(tmp / "link.gpkg")}), "--overwrite"]


def symlinked_store(tmp: Path, model: str) -> list[str]:
    (tmp / "elsewhere").mkdir()
    (tmp / "out.gpkg.partial").symlink_to(tmp / "elsewhere")
    return base(tmp, model)


def big_labels(tmp: Path) -> str:
    path = tmp / "big.txt"
    with open(path, "wb") as f:
        f.truncate(5 * 1024 * 1024)  # sparse: 5 MB of NULs without writing them
    return str(path)


def head_nested_metadata(tmp: Path) -> str:
    import torch

    from geobimors.heads.checkpoint import FORMAT

    path = tmp / "nested.safetensors"
    save_file({"ctx": torch.zeros(2, 2)}, str(path), metadata={FORMAT: "[" * 100_000})
    return str(path)


def head_huge_header(tmp: Path) -> str:
    path = tmp / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    return str(path)


def geographic_pole(tmp: Path) -> str:
    return scene(tmp, transform=Affine(0.0001, 0, 10.0, 0, -0.0001, 90.0), crs="EPSG:4326", name="pole.tif")


def warned(text: str) -> dict:
    return {"warning": text}


def l(tmp: Path, text: str | bytes) -> dict[str, str]:  # noqa: E743
    return {"-l": labels(tmp, text, "hostile.txt")}


HOSTILE_CASES = [
    # Network reach from local files (each also tried against a live server above)
    Case(
        "VRT source on /vsicurl/",
        lambda t, m: base(t, m, scene=vrt_with(t, "/vsicurl/http://127.0.0.1:9/a.tif")),
        2,
        ("would read from the network", "--allow-network"),
    ),
    Case(
        "VRT source is an http:// URL",
        lambda t, m: base(t, m, scene=vrt_with(t, "http://127.0.0.1:9/a.tif")),
        2,
        ("would read from the network",),
    ),
    Case(
        "VRT source on /vsis3/",
        lambda t, m: base(t, m, scene=vrt_with(t, "/vsis3/bucket/a.tif")),
        2,
        ("would read from the network",),
    ),
    Case(
        "VRT source on /vsiaz/, /vsigs/, /vsiadls/, /vsioss/, /vsiswift/, /vsihdfs/, /vsiwebhdfs/",
        lambda t, m: base(t, m, scene=vrt_with(t, "/vsiwebhdfs/http://h/a.tif")),
        2,
        ("would read from the network",),
    ),
    Case(
        "VRT source /vsizip/ over /vsicurl/",
        lambda t, m: base(t, m, scene=vrt_with(t, "/vsizip//vsicurl/http://127.0.0.1:9/a.zip/a.tif")),
        2,
        ("would read from the network",),
    ),
    Case(
        "VRT source vrt:// over /vsicurl/",
        lambda t, m: base(t, m, scene=vrt_with(t, "vrt:///vsicurl/http://127.0.0.1:9/a.tif?bands=1")),
        2,
        ("would read from the network",),
    ),
    Case(
        "VRT source is a WMS connection string",
        lambda t, m: base(t, m, scene=vrt_with(t, "WMS:http://127.0.0.1:9/wms")),
        2,
        ("would read from the network",),
    ),
    Case(
        "nested VRT with a remote source",
        lambda t, m: base(
            t,
            m,
            scene=vrt_with(
                t, vrt_with(t, "/vsicurl/http://127.0.0.1:9/a.tif", "inner.vrt"), "outer.vrt", relative=False
            ),
        ),
        2,
        ("would read from the network", "inner.vrt"),
    ),
    Case(
        "inline VRT source with a remote source",
        lambda t, m: base(
            t,
            m,
            scene=vrt_with(
                t,
                '&lt;VRTDataset rasterXSize="64" rasterYSize="64"&gt;&lt;VRTRasterBand band="1"&gt;&lt;SimpleSource&gt;&lt;SourceFilename&gt;/vsicurl/http://127.0.0.1:9/a.tif&lt;/SourceFilename&gt;&lt;/SimpleSource&gt;&lt;/VRTRasterBand&gt;&lt;/VRTDataset&gt;',
            ),
        ),
        2,
        ("would read from the network",),
    ),
    Case(
        "remote URL elsewhere in a VRT",
        lambda t, m: base(
            t,
            m,
            scene=vrt_with(t, good_source(t), extra="<OverviewList resampling='http://127.0.0.1:9/x'>2</OverviewList>"),
        ),
        2,
        ("would read from the network",),
    ),
    Case(
        "local WMS description file",
        lambda t, m: base(t, m, scene=wms_description(t)),
        2,
        ("would read from the network",),
    ),
    # Broken VRTs fail at open, before any output
    Case(
        "VRT source missing",
        lambda t, m: base(t, m, scene=vrt_with(t, "missing.tif")),
        2,
        ("source missing.tif cannot be opened",),
    ),
    Case(
        "VRT source not a raster",
        lambda t, m: base(t, m, scene=vrt_with(t, Path(labels(t, "x", "notes.tif")).name)),
        2,
        ("cannot be opened", "not recognized"),
    ),
    Case("VRT refers to itself", lambda t, m: base(t, m, scene=vrt_with(t, "v.vrt")), 2, ("refers to itself",)),
    Case(
        "VRTs refer to each other",
        lambda t, m: base(t, m, scene=vrt_loop(t)),
        2,
        ("refers to itself", "a.vrt -> b.vrt -> a.vrt"),
    ),
    Case("VRT source is /dev/zero", lambda t, m: base(t, m, scene=raw_dev_zero(t)), 2, ("character device",)),
    Case(
        "VRT source is a FIFO",
        lambda t, m: base(t, m, scene=vrt_with(t, Path(fifo(t, "pipe.tif")).name)),
        2,
        ("named pipe",),
    ),
    Case("VRT XML bomb", lambda t, m: base(t, m, scene=xml_bomb(t)), 2, ("DTD or entities",)),
    Case("VRT external entity", lambda t, m: base(t, m, scene=external_entity(t)), 2, ("DTD or entities",)),
    Case(
        "VRT Python pixel function",
        lambda t, m: base(t, m, scene=python_pixel_function(t)),
        2,
        ("Python pixel function",),
        check=lambda t, r: None if not Path("pwned").exists() else pytest.fail("code ran"),
    ),
    Case(
        "VRT not valid XML",
        lambda t, m: base(t, m, scene=labels(t, "<VRTDataset><oops></VRTDataset>", "bad.vrt")),
        2,
        ("not valid XML",),
    ),
    Case("VRT without bands", lambda t, m: base(t, m, scene=no_band_vrt(t)), 2, ("GDAL can read", "bands")),
    Case("VRT of 0 x 0 pixels", lambda t, m: base(t, m, scene=zero_size_vrt(t)), 2, ("not a raster GDAL can read",)),
    Case(
        "local path that looks like a URL",
        lambda t, m: base(t, m, scene=url_like_path(t)),
        2,
        ("would read from the network",),
    ),
    Case("scene is a FIFO", lambda t, m: base(t, m, scene=fifo(t, "scene.tif")), 2, ("named pipe",)),
    Case("zip bomb via /vsizip/", lambda t, m: base(t, m, scene=zip_bomb(t)), 2, ("zip bomb",)),
    Case(
        "complex-valued SAR bands",
        lambda t, m: base(t, m, scene=scene(t, random_rgb(64, 64).astype(np.complex64) * (1 + 1j), name="slc.tif")),
        2,
        ("complex-valued bands (complex64)", "abs(A)"),
    ),
    # Bounded reads and labels
    Case(
        "labels file is /dev/zero",
        lambda t, m: base(t, m, **{"-l": "/dev/zero"}),
        2,
        ("character device", "not a regular file"),
    ),
    Case("labels file is a FIFO", lambda t, m: base(t, m, **{"-l": fifo(t, "labels.fifo")}), 2, ("named pipe",)),
    Case("labels file too large", lambda t, m: base(t, m, **{"-l": big_labels(t)}), 2, ("more than the 4 MB",)),
    Case("labels file is binary", lambda t, m: base(t, m, **l(t, b"forest\nwa\0ter\n")), 2, ("binary", "NUL byte")),
    Case(
        "labels file is one huge line",
        lambda t, m: base(t, m, **l(t, "forest water " * 20000)),
        2,
        ("line 1 is", "characters long"),
    ),
    Case(
        "label of invisible characters only",
        lambda t, m: base(t, m, **l(t, "forest\n\u200b\u200d\nwater\n")),
        2,
        ("line 2", "empty once invisible characters"),
    ),
    Case(
        "labels differing only by invisible characters",
        lambda t, m: base(t, m, **l(t, "forest\nwater\nfor\u200best\n")),
        2,
        ("line 3", "duplicate label", "invisible"),
    ),
    Case(
        "NFKC duplicates", lambda t, m: base(t, m, **l(t, "ﬁelds\nwater\nfields\n")), 2, ("line 3", "duplicate label")
    ),
    Case(
        "terminal escape in a label",
        lambda t, m: base(t, m, **l(t, "forest\n\x1b[2Jwater\n")),
        2,
        ("line 2", "control character U+001B"),
    ),
    Case("bidi override in a label", lambda t, m: base(t, m, **l(t, "forest\nwat\u202eer\n")), 2, ("line 2", "U+202E")),
    Case(
        "label longer than the context is shortened in the summary",
        lambda t, m: base(t, m, **l(t, "forest\n" + "extremely " * 90 + "long\n")),
        0,
        (),
        output_expected=True,
        extra=warned("tokens with the prompt template"),
        check=lambda t, r: (
            None
            if "extremely extremely extremely extreme..." in r.out and "long  " not in r.out
            else pytest.fail(r.out)
        ),
    ),
    # Absurd work
    Case(
        "2M x 2M px VRT",
        lambda t, m: base(t, m, scene=huge_vrt(t, 2_000_000)),
        2,
        ("more than --max-chips 2,000,000", "raise --max-chips"),
    ),
    Case(
        "more chips than --max-chips",
        lambda t, m: [*base(t, m), "--max-chips", "10"],
        2,
        ("makes 16 chips", "--max-chips 10"),
    ),
    Case(
        "--max-chips raised",
        lambda t, m: [*base(t, m), "--max-chips", "16"],
        0,
        (),
        output_expected=True,
        check=lambda t, r: None if "Work: 16 chips (4 x 4) in 1 batches" in r.err else pytest.fail(r.err),
    ),
    Case("--max-chips 0", lambda t, m: [*base(t, m), "--max-chips", "0"], 2, ("--max-chips must be at least 1",)),
    Case(
        "coarse scene beyond the model's trained GSD range",
        lambda t, m: base(t, "mini", scene=coarse(t), **{"--chip-size": "64"}),
        0,
        ("coarser than model mini was trained on (0.6-30 m/px)", "upsampled 4x to 75 m/px"),
        output_expected=True,
    ),
    Case(
        "coarse scene with --gsd scene",
        lambda t, m: base(t, "mini", scene=coarse(t), **{"--chip-size": "64", "--gsd": "scene"}),
        0,
        (),
        output_expected=True,
    ),
    Case(
        "upsampling asked for with --gsd",
        lambda t, m: base(t, m, scene=coarse(t), **{"--chip-size": "64", "--gsd": "30"}),
        0,
        (),
        output_expected=True,
        extra=warned("upsampled 10.7x"),
    ),
    Case(
        "chip size larger than any model input",
        lambda t, m: base(t, m, scene=huge_vrt(t, 40_000), **{"--chip-size": "20000"}),
        2,
        ("larger than 16,384 px",),
    ),
    Case("absurd batch size", lambda t, m: base(t, m, **{"--batch-size": "1000000"}), 2, ("more than 4,096 chips",)),
    Case(
        "absurd worker count", lambda t, m: base(t, m, **{"--workers": "100000"}), 2, ("--workers 100000 is far more",)
    ),
    Case(
        "percentiles out of range",
        lambda t, m: base(t, m, **{"--percentiles": "200,300"}),
        2,
        ("0 <= LOW < HIGH <= 100",),
    ),
    Case("negative band", lambda t, m: base(t, m, **{"--bands": "-1,2,3"}), 2, ("band -1 is out of range",)),
    Case("huge top-k", lambda t, m: base(t, m, **{"--top-k": "1000000000"}), 0, (), output_expected=True),
    # Georeferencing
    Case(
        "latitude beyond 90", lambda t, m: base(t, m, scene=geographic_beyond(t, 10.0, 120.0)), 2, ("latitudes", "120")
    ),
    Case(
        "longitude beyond 360",
        lambda t, m: base(t, m, scene=geographic_beyond(t, 500.0, 45.0)),
        2,
        ("longitudes", "500"),
    ),
    Case(
        "ground units at a pole",
        lambda t, m: base(t, m, scene=geographic_pole(t), **{"--chip-size": "100m"}),
        2,
        ("too close to a pole",),
    ),
    Case(
        "CRS without a geotransform",
        lambda t, m: base(t, m, scene=crs_without_transform(t)),
        2,
        ("no geotransform", "--allow-no-geotransform"),
    ),
    Case(
        "CRS without a geotransform, allowed",
        lambda t, m: [*base(t, m, scene=crs_without_transform(t)), "--allow-no-geotransform"],
        0,
        (),
        output_expected=True,
        extra=warned("no geotransform"),
    ),
    Case("GCP-only raster", lambda t, m: base(t, m, scene=gcp_only(t)), 2, ("ground control points", "gdalwarp")),
    # Outputs and checkpoints
    Case(
        "output is the input scene",
        lambda t, m: [*base(t, m, scene=gpkg_raster(t), **{"-o": str(t / "scene.gpkg")}), "--overwrite"],
        2,
        ("is the input scene",),
        check=lambda t, r: None if (t / "scene.gpkg").stat().st_size > 0 else pytest.fail("input lost"),
    ),
    Case(
        "output file name too long", lambda t, m: base(t, m, **{"-o": str(t / ("x" * 240 + ".gpkg"))}), 2, ("too long",)
    ),
    Case(
        "output is a symlink to the input scene",
        output_linked_to_scene,
        2,
        ("is the input scene",),
        check=lambda t, r: None if rasterio.open(t / "default.tif").count == 3 else pytest.fail("scene lost"),
    ),
    Case("run store is a symlink", lambda t, m: symlinked_store(t, m), 2, ("symbolic link",)),
    Case(
        "head with a huge header", lambda t, m: [*base(t, m), "--head", head_huge_header(t)], 2, ("header too large",)
    ),
    Case(
        "head metadata nested 100,000 deep",
        lambda t, m: [*base(t, m), "--head", head_nested_metadata(t)],
        2,
        ("no geobimors metadata",),
    ),
]


@pytest.mark.parametrize("case", HOSTILE_CASES, ids=[c.name for c in HOSTILE_CASES])
def test_hostile_catalogue(
    case: Case, capsys: pytest.CaptureFixture[str], tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = case.build(tmp_path, tiny_model)
    before = {p.name for p in tmp_path.iterdir()}
    result = run_cli(capsys, "map", *args)
    assert "Traceback" not in result.err
    assert result.exit_code == case.code, (result.exit_code, result.err)
    if case.code:
        assert_one_line_error(result, case.code, *case.fragments)
    if "warning" in case.extra:
        assert any(line.startswith("Warning:") and case.extra["warning"] in line for line in result.err.splitlines()), (
            result.err
        )
    if case.output_expected:
        assert (tmp_path / "out.gpkg").exists()
    else:
        no_files_left(tmp_path, before)
    if case.check is not None:
        case.check(tmp_path, result)


def test_catalogue_counts_and_is_documented() -> None:
    """docs/errors.md lists every case of both tables, and the catalogue holds at least 60 tried cases."""
    text = (ROOT / "docs" / "errors.md").read_text()
    cases = [*HARDENING_CASES, *HOSTILE_CASES]
    names = [case.name for case in cases]
    assert len(names) == len(set(names))
    missing = [name for name in names if f"| {name} |" not in text]
    assert not missing, missing
    documented = re.findall(r"^\| (?!case |---)([^|]+?) \| (?:\d|—)", text, re.MULTILINE)
    assert len(cases) >= 60 and len(documented) >= len(cases), (len(cases), len(documented))
    stated = re.search(r"it holds (\d+): (\d+) above, (\d+) below", text)
    assert stated is not None
    assert [int(n) for n in stated.groups()] == [len(cases), len(HARDENING_CASES), len(HOSTILE_CASES)]


# --- bounded reads (API) ------------------------------------------------------------------------


def test_read_regular_file_bounds(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="character device"):
        read_regular_file("/dev/zero", "list file", 1024)
    with pytest.raises(InputError, match="named pipe"):
        read_regular_file(fifo(tmp_path, "p"), "config file", 1024)  # returns at once: never blocks
    with pytest.raises(IsADirectoryError):
        read_regular_file(tmp_path, "STAC item", 1024)
    big = tmp_path / "big.json"
    big.write_bytes(b"x" * 2048)
    with pytest.raises(InputError, match="more than the 1 kB"):
        read_regular_file(big, "STAC item", 1024)
    assert read_regular_file(big, "STAC item", 4096) == b"x" * 2048


def test_train_labels_file_is_bounded(tmp_path: Path) -> None:
    from geobimors.train.data import folder_labels

    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
    with pytest.raises(InputError, match="character device"):
        folder_labels(tmp_path / "data", "/dev/zero")


# --- georeferencing -----------------------------------------------------------------------------


def test_metres_per_degree_is_geodesic() -> None:
    from rasterio.crs import CRS

    from geobimors.raster.grid import metres_per_degree

    wgs84 = CRS.from_epsg(4326)
    a, f = 6_378_137.0, 1 / 298.257223563
    e2 = f * (2 - f)
    for lat in (0.0, 30.0, 60.0, 80.0):
        phi = math.radians(lat)
        w = math.sqrt(1 - e2 * math.sin(phi) ** 2)
        parallel = math.pi / 180 * a * math.cos(phi) / w  # arc of a degree along the parallel
        meridian = math.pi / 180 * a * (1 - e2) / w**3  # arc of a degree along the meridian
        per_x, per_y = metres_per_degree(wgs84, 10.0, lat)
        assert per_x == pytest.approx(parallel, rel=2e-5) and per_y == pytest.approx(meridian, rel=2e-5)
    # the old fixed figure was 0.6% off along the meridian at 60 degrees
    assert abs(metres_per_degree(wgs84, 0.0, 60.0)[1] - 111_320.0) > 50


def test_no_clamp_to_89_left() -> None:
    source = (ROOT / "geobimors" / "raster" / "grid.py").read_text()
    assert "89.0" not in source and "METRES_PER_DEGREE" not in source


# --- the run lock --------------------------------------------------------------------------------


def _contend(path: str, barrier: object, inside: object, results: object, rounds: int) -> None:
    from geobimors.errors import InputError
    from geobimors.run.store import RunLock

    barrier.wait()  # type: ignore[attr-defined]
    won = lost = 0
    for _ in range(rounds):
        try:
            with RunLock(path):
                with inside.get_lock():  # type: ignore[attr-defined]
                    inside.value += 1  # type: ignore[attr-defined]
                    overlap = inside.value  # type: ignore[attr-defined]
                if overlap != 1:
                    results.put("overlap")  # type: ignore[attr-defined]
                with inside.get_lock():  # type: ignore[attr-defined]
                    inside.value -= 1  # type: ignore[attr-defined]
            won += 1
        except InputError as exc:
            assert "another geobimors run" in str(exc)
            lost += 1
    results.put((won, lost))  # type: ignore[attr-defined]


def test_run_lock_is_exclusive_under_contention(tmp_path: Path) -> None:
    """16 processes take and release the lock in a tight loop: never two holders at once."""
    ctx = multiprocessing.get_context("fork")
    n = 16
    barrier, inside, results = ctx.Barrier(n), ctx.Value("i", 0), ctx.Queue()
    procs = [
        ctx.Process(target=_contend, args=(str(tmp_path / "o.gpkg"), barrier, inside, results, 200)) for _ in range(n)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in range(n)]
    for p in procs:
        p.join(timeout=60)
    assert "overlap" not in outcomes
    assert sum(won for won, _ in outcomes) > 0 and all(p.exitcode == 0 for p in procs)
    assert not (tmp_path / "o.gpkg.lock").exists()


LOCK_RUNNER = """
import sys, io, contextlib
from multiprocessing import Barrier
from geobimors.cli import main
import geobimors.run.pipeline, geobimors.models.clip, geobimors.vector.gpkg  # imports before the barrier
args = sys.argv[1:]
open(args[0] + ".ready", "w").close()
import time, os
while not os.path.exists(args[1]):
    time.sleep(0.001)
main(args[2:])
"""


def test_many_runs_on_one_output(tiny_model: str, tmp_path: Path) -> None:
    """4 CLI runs released at the same instant on one output: one runs, the others exit with the lock error."""
    source = make_geotiff(tmp_path / "big.tif", random_rgb(512, 512))
    label_file = labels(tmp_path)
    out = tmp_path / "out.gpkg"
    go = tmp_path / "go"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = []
    runs = 4  # each process costs about 5 s of CPU to start; 4 contend as 8 did
    for i in range(runs):
        args = [
            sys.executable,
            "-c",
            LOCK_RUNNER,
            str(tmp_path / f"p{i}"),
            str(go),
            "map",
            str(source),
            "-l",
            label_file,
            "-m",
            tiny_model,
            "--chip-size",
            "16",
            "--device",
            "cpu",
            "-o",
            str(out),
            "-q",
        ]
        procs.append(subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env))
    deadline = 300
    start = time.monotonic()
    while sum((tmp_path / f"p{i}.ready").exists() for i in range(runs)) < runs and time.monotonic() - start < deadline:
        time.sleep(0.05)
    go.touch()  # the barrier: every process is waiting for this file
    done = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(code for code, _ in done)
    assert codes == [0] + [2] * (runs - 1), done
    for code, err in done:
        assert "Traceback" not in err
        if code:
            lines = [line for line in err.splitlines() if line.startswith("Error:")]
            assert len(lines) == 1 and re.search(r"another geobimors run \(pid \d+\) is writing", lines[0]), err
    assert len(gpd.read_file(out, layer="chips")) == 32 * 32
    assert not (tmp_path / "out.gpkg.lock").exists() and not (tmp_path / "out.gpkg.partial").exists()


# --- determinism -------------------------------------------------------------------------------------


DETERMINISM_RUNNER = """
import sys, json, torch, random
torch.manual_seed(int(sys.argv[2]))  # the global RNG must not matter
random.seed(int(sys.argv[2]))
import geobimors
chips = geobimors.map_scene(sys.argv[1], ["forest", "water", "fields"], model="ViT-S-32:random", chip_size=32,
                            device="cpu", progress="none")
print(json.dumps([chips.label.tolist(), [round(float(s), 5) for s in chips.score]]))
"""


def test_random_models_are_the_same_in_every_process(tmp_path: Path) -> None:
    source = make_geotiff(tmp_path / "s.tif", random_rgb(64, 64))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [  # two processes at once: each spends its seconds building the model
        subprocess.Popen(
            [sys.executable, "-c", DETERMINISM_RUNNER, str(source), seed],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**env, "PYTHONHASHSEED": seed},
        )
        for seed in ("1", "2")
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    first, second = (json.loads(out.strip().splitlines()[-1]) for out, _ in outs)
    assert first == second and len(first[0]) == 4


def test_model_seed_depends_on_the_name() -> None:
    from geobimors.models.clip import model_seed

    assert model_seed("ViT-B-32:random") == model_seed("ViT-B-32:random") != model_seed("ViT-B-16:random")


def test_train_from_polygons_on_a_remote_vrt_is_refused_and_offers_the_opt_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import geopandas as gpd
    from shapely.geometry import box

    vrt = tmp_path / "v.vrt"
    vrt.write_text(
        '<VRTDataset rasterXSize="64" rasterYSize="64"><VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
        "<SourceFilename>/vsicurl/http://127.0.0.1:9/a.tif</SourceFilename><SourceBand>1</SourceBand>"
        "</SimpleSource></VRTRasterBand></VRTDataset>"
    )
    polygons = tmp_path / "areas.gpkg"
    gpd.GeoDataFrame({"label": ["a", "b"]}, geometry=[box(0, 0, 10, 10), box(20, 20, 30, 30)]).to_file(polygons)
    result = run_cli(capsys, "train", polygons, "--scene", vrt, "-o", tmp_path / "h.safetensors")
    assert result.exit_code == 2, result.err
    errors = [line for line in result.err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--allow-network" in errors[0] and "vsicurl" in errors[0]
    assert "Traceback" not in result.err and not (tmp_path / "h.safetensors").exists()
    help_text = run_cli(capsys, "train", "--help").out
    assert "--allow-network" in help_text
