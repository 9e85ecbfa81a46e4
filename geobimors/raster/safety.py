"""Guards against hostile or careless inputs: no network reach from local files, bounded reads.

A local file must never make geobimors contact a host: a VRT someone mails you
can name ``/vsicurl/http://internal-host/...`` (or ``/vsis3/``, ``http://``, a
WMS description, ...) as a source, and GDAL would fetch it while reading. Two
layers stop that unless the user gave a URL themselves or opted in
(``--allow-network``):

1. :func:`check_local_dataset` reads a local scene before GDAL opens it: VRTs
   are parsed (safely: no DTDs or entities, see ``defusedxml``) and every source
   is checked recursively; sources naming the network are refused, sources that
   cannot be opened (missing, not a raster, the VRT itself) fail here with GDAL's
   reason, and other dataset descriptions (WMS/WMTS XML, STAC JSON, ...) that
   name the network are refused too.
2. :func:`network_guard` wraps every GDAL open and read of such a scene in
   configuration that makes GDAL refuse network I/O itself (defence in depth):
   ``CPL_VSIL_CURL_ALLOWED_FILENAME`` / ``CPL_VSIL_CURL_ALLOWED_EXTENSIONS`` set
   to a name no file has make every ``/vsicurl/``-based handler (``/vsis3/``,
   ``/vsigs/``, ``/vsiaz/``, ...) refuse to open anything, and an unusable
   ``GDAL_HTTP_PROXY`` scheme makes libcurl fail GDAL's own HTTP fetches (HTTP
   and WMS drivers) before connecting. (libcurl still honours a ``NO_PROXY``
   environment variable for that last part, which is why layer 1 comes first.)

Bounded reads: :func:`read_regular_file` reads labels, config and list files
only when they are regular files below a size cap, so ``/dev/zero``, a FIFO or a
10 GB file fails at once with a clear message instead of filling memory.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geobimors.errors import InputError
from geobimors.files import describe_mode, describe_size, read_fd

# GDAL's network virtual file systems (each also has a ``_streaming`` variant).
NETWORK_HANDLERS = (
    "vsicurl",
    "vsicurl_streaming",
    "vsis3",
    "vsis3_streaming",
    "vsigs",
    "vsigs_streaming",
    "vsiaz",
    "vsiaz_streaming",
    "vsiadls",
    "vsioss",
    "vsioss_streaming",
    "vsiswift",
    "vsiswift_streaming",
    "vsihdfs",
    "vsiwebhdfs",
)
# GDAL drivers whose connection strings talk to servers (``WMS:http://...``, ``EEDAI:projects/...``).
NETWORK_DRIVER_PREFIXES = ("WMS", "WMTS", "WCS", "EEDA", "EEDAI", "DAAS", "PLMOSAIC", "PLSCENES", "NGW", "OGCAPI")
# Schemes that name local things: GDAL's ``vrt://`` connection syntax and ``file://``.
_LOCAL_SCHEMES = ("vrt", "file")
# URLs that only name a namespace or a CRS definition, resolved without a request.
_HARMLESS_URL = re.compile(r"^https?://(www\.)?(opengis\.net|w3\.org|isotc211\.org)/", re.IGNORECASE)

_NETWORK_RE = re.compile(
    r"/(?:" + "|".join(NETWORK_HANDLERS) + r")/"  # /vsicurl/..., anywhere (also inside /vsizip/)
    r"|(?<![A-Za-z0-9+.\-])([A-Za-z][A-Za-z0-9+.\-]+)://"  # scheme://
    r"|(?:^|[\"':(])(?:" + "|".join(NETWORK_DRIVER_PREFIXES) + r"):",
    re.IGNORECASE,
)
_URLISH = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]+://[^\s\"'<>]*")

# Bounds of the inspection: deeper or larger VRTs are refused (a VRT is a small text file).
MAX_VRT_DEPTH = 16
MAX_VRT_BYTES = 64 * 1024 * 1024
MAX_SOURCES = 100_000
MAX_DESCRIPTOR_BYTES = 16 * 1024 * 1024
# A zip member that inflates more than this many times, to more than a gigabyte, is a zip bomb.
MAX_COMPRESSION_RATIO = 1000

# Configuration that makes GDAL itself refuse network I/O (see the module docs).
_NO_SUCH_NAME = ".geobimors-network-disabled"
NO_NETWORK_CONFIG: dict[str, str] = {
    "CPL_VSIL_CURL_ALLOWED_FILENAME": _NO_SUCH_NAME,
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": _NO_SUCH_NAME,
    "GDAL_HTTP_PROXY": "geobimors-network-disabled://",
    "GDAL_HTTPS_PROXY": "geobimors-network-disabled://",
    "GDAL_HTTP_MAX_RETRY": "0",
    # Python pixel functions in a VRT would run code from the file.
    "GDAL_VRT_ENABLE_PYTHON": "NO",
}


def network_reference(text: str) -> str | None:
    """The part of ``text`` that names a network resource, or ``None``.

    Finds URLs (``https://``, ``s3://``, ``ftp://``, any ``scheme://`` but
    ``vrt://`` and ``file://``), GDAL's network file systems anywhere in a path
    (``/vsicurl/``, ``/vsis3/``, ``/vsizip//vsicurl/...``, ...) and network
    driver connection strings (``WMS:``, ``EEDAI:``, ...).
    """
    for match in _NETWORK_RE.finditer(text):
        scheme = match.group(1)
        if scheme is not None:
            if scheme.lower() in _LOCAL_SCHEMES:
                continue
            url = _URLISH.match(text, match.start()) or match
            if _HARMLESS_URL.match(url.group(0)):
                continue
        return text.strip()
    return None


def is_network(text: str) -> bool:
    """True when a dataset name reaches the network (a URL or a network ``/vsi`` path anywhere in it)."""
    return network_reference(text) is not None


def is_user_url(text: str) -> bool:
    """True when a scene name given by the user is itself remote.

    Remote: a URL, a ``/vsi...`` chain that names the network, or a network
    driver connection string (``WMS:...``). A local path is never remote, even
    one with ``/vsicurl/`` or ``http:`` in a folder name.
    """
    name = text.strip()
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]+)://", name)
    if scheme:
        return scheme.group(1).lower() not in _LOCAL_SCHEMES or is_network(name[scheme.end() :])
    if name.startswith("/vsi"):
        return is_network(name)
    return bool(re.match(r"^(?:" + "|".join(NETWORK_DRIVER_PREFIXES) + r"):", name, re.IGNORECASE))


_guard_state = threading.local()


def network_guard(allow_network: bool) -> contextlib.AbstractContextManager[Any]:
    """Context in which GDAL refuses network I/O, unless ``allow_network``.

    Wrap every open *and read* of a scene that came from a local file: GDAL
    opens VRT sources lazily, at the first read. Nested guards in one thread
    cost nothing (a batch of chip reads enters it once).
    """
    if allow_network or getattr(_guard_state, "active", False):
        return contextlib.nullcontext()
    return _no_network()


@contextlib.contextmanager
def _no_network() -> Iterator[None]:
    import rasterio

    with rasterio.Env(**NO_NETWORK_CONFIG):
        _guard_state.active = True
        try:
            yield
        finally:
            _guard_state.active = False


@dataclass
class _Inspection:
    """State of one recursive inspection."""

    scene: str
    allow_network: bool
    checked: set[str] = field(default_factory=set)
    n_sources: int = 0


def check_local_dataset(path: str, allow_network: bool = False, scene: str | None = None) -> None:
    """Inspect a local dataset before GDAL opens it; refuse network sources and unopenable VRT sources.

    Args:
        path: absolute path of a local file (a VRT, a GeoTIFF, a dataset description).
        allow_network: accept sources that name the network (``--allow-network``).
        scene: the name the user gave, for messages.

    Raises:
        InputError: a source names the network (without ``allow_network``), a
            VRT cannot be parsed, is too deep or too large, refers to itself, has
            a Python pixel function, or a source cannot be opened (GDAL's reason).
    """
    state = _Inspection(scene or path, allow_network)
    with network_guard(allow_network):  # entered once: the source opens below nest in it
        _inspect_file(Path(path), state, chain=())


def _inspect_file(path: Path, state: _Inspection, chain: tuple[str, ...]) -> None:
    head = _peek(path)
    text_start = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text_start[:1] == b"<" and b"<vrtdataset" in head.lower():  # also after <?xml ...?> and a DOCTYPE
        _inspect_vrt(path, _read_capped(path, MAX_VRT_BYTES, "VRT"), state, chain)
    elif text_start[:1] in (b"<", b"{", b"["):
        # A dataset description (WMS/WMTS/WCS XML, STACTA/STACIT JSON, MRF, KML, ...): it may name servers.
        text = _read_capped(path, MAX_DESCRIPTOR_BYTES, "dataset description").decode("utf-8", "replace")
        for reference in _references_in_text(text):
            _refuse_network(reference, path, state)


def _peek(path: Path, size: int = 4096) -> bytes:
    fd = _open_regular(path, f"scene source {path}")
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def _read_capped(path: Path, limit: int, what: str) -> bytes:
    fd = _open_regular(path, f"{what} {path}")
    try:
        data = read_fd(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise InputError(
            f"{what} {path} is larger than {describe_size(limit)}; geobimors refuses descriptions this large"
        )
    return data


def _references_in_text(text: str) -> Iterator[str]:
    for match in _URLISH.finditer(text):
        if network_reference(match.group(0)):
            yield match.group(0)
    for match in re.finditer(r"/(?:" + "|".join(NETWORK_HANDLERS) + r")/[^\s\"'<>]*", text, re.IGNORECASE):
        yield match.group(0)


def _refuse_network(reference: str, where: Path, state: _Inspection) -> None:
    if state.allow_network:
        return
    shown = reference if len(reference) <= 120 else reference[:117] + "..."
    raise InputError(
        f"scene {state.scene} would read from the network ({shown}, named in {where}); geobimors does not "
        "contact hosts named by a local file. Pass --allow-network (allow_network=True) if you trust it, "
        "or download the data and point the file at the local copy"
    )


def _inspect_vrt(path: Path, data: bytes, state: _Inspection, chain: tuple[str, ...]) -> None:
    import defusedxml.ElementTree as SafeET
    from defusedxml import DefusedXmlException

    key = os.path.realpath(path)
    if key in chain:
        loop = " -> ".join(Path(p).name for p in (*chain[chain.index(key) :], key))
        raise InputError(f"VRT {path} refers to itself ({loop}); fix its SourceFilename")
    if len(chain) >= MAX_VRT_DEPTH:
        raise InputError(f"VRT {path} nests VRTs more than {MAX_VRT_DEPTH} deep; flatten it (gdal_translate)")
    chain = (*chain, key)
    try:
        root = SafeET.fromstring(data)
    except DefusedXmlException:
        raise InputError(
            f"VRT {path} declares an XML DTD or entities, which geobimors refuses to expand (XML bombs, "
            "file inclusion); remove the <!DOCTYPE>"
        ) from None
    except SafeET.ParseError as exc:
        raise InputError(f"VRT {path} is not valid XML ({exc}); fix or regenerate it (gdalbuildvrt)") from None
    _inspect_vrt_tree(root, path, state, chain)


def _inspect_vrt_tree(root: Any, path: Path, state: _Inspection, chain: tuple[str, ...]) -> None:
    for element in _elements_outside_metadata(root):
        tag = str(element.tag)
        text = (element.text or "").strip()
        if tag == "PixelFunctionLanguage" and text.lower() == "python":
            raise InputError(f"VRT {path} has a Python pixel function; geobimors never runs code from a scene file")
        if tag in ("SourceFilename", "SourceDataset") and text:
            state.n_sources += 1
            if state.n_sources > MAX_SOURCES:
                raise InputError(f"VRT {path} has more than {MAX_SOURCES:,} sources; build a smaller mosaic")
            relative = element.get("relativeToVRT", "0").strip() == "1"
            _inspect_source(text, path, relative, state, chain)
            continue
        for value in [text, *element.attrib.values()]:
            if value and network_reference(value):
                _refuse_network(value, path, state)


def _elements_outside_metadata(root: Any) -> Iterator[Any]:
    """Every element except those inside ``<Metadata>`` (free text that GDAL never opens)."""
    stack = [root]
    while stack:
        element = stack.pop()
        yield element
        stack.extend(child for child in element if str(child.tag) != "Metadata")


def _inspect_source(name: str, vrt: Path, relative: bool, state: _Inspection, chain: tuple[str, ...]) -> None:
    if name.lstrip().startswith("<"):  # an inline VRT as the source
        import defusedxml.ElementTree as SafeET
        from defusedxml import DefusedXmlException

        try:
            _inspect_vrt_tree(SafeET.fromstring(name), vrt, state, chain)
        except (DefusedXmlException, SafeET.ParseError):
            raise InputError(f"VRT {vrt} has an inline source that is not valid, safe XML") from None
        return
    if network_reference(name):
        _refuse_network(name, vrt, state)
        return  # allowed: not ours to inspect
    local = _local_file_of(name, vrt.parent if relative else None)
    check_archive(name, vrt.parent if relative else None)
    if local is not None and not name.startswith("/vsi"):
        if not local.exists():
            raise InputError(f"VRT {vrt}: source {name} cannot be opened (no such file); fix its SourceFilename")
        os.close(_open_regular(local, f"VRT {vrt}: source {name}"))  # not /dev/zero, a FIFO or a directory
        _inspect_file(local, state, chain)
    target = str(vrt.parent / name) if relative and not os.path.isabs(name) and not name.startswith("/vsi") else name
    if target in state.checked:
        return
    state.checked.add(target)
    _check_opens(target, name, vrt, state)


def check_archive(name: str, base: Path | None = None) -> None:
    """Refuse a ``/vsizip/`` dataset whose local archive holds a zip bomb (an absurd inflation ratio).

    Raises:
        InputError: a member inflates more than ``MAX_COMPRESSION_RATIO`` times to over 1 GB.
    """
    if not name.startswith("/vsizip/"):
        return
    archive = _local_file_of(name, base)
    if archive is None:
        return
    import zipfile

    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not a zip GDAL can read either: GDAL says why when it opens it
    for member in members:
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size > 1 << 30 and ratio > MAX_COMPRESSION_RATIO:
            raise InputError(
                f"archive {archive} holds {member.filename}, which inflates {ratio:,.0f}x to "
                f"{member.file_size / 1e9:,.1f} GB (a zip bomb?); unpack it yourself if it is genuine"
            )


def _local_file_of(name: str, base: Path | None) -> Path | None:
    """The local file a source name reads (a plain path, ``vrt://PATH?...``, ``/vsizip/PATH/...``), or ``None``."""
    text = name
    if text.lower().startswith("vrt://"):
        text = text[len("vrt://") :].split("?", 1)[0]
    for prefix in ("/vsizip/", "/vsigzip/", "/vsitar/", "/vsi7z/", "/vsirar/", "/vsisubfile/"):
        if text.startswith(prefix):
            rest = text[len(prefix) :]
            if prefix == "/vsisubfile/":
                rest = rest.split(",", 1)[-1]
            parts = Path(rest).parts
            for i in range(len(parts), 0, -1):  # the longest existing prefix is the archive
                candidate = Path(*parts[:i])
                candidate = candidate if candidate.is_absolute() or base is None else base / candidate
                if candidate.is_file():
                    return candidate
            return None
    if text.startswith("/vsi") or re.match(r"^[A-Za-z0-9_]+:", text):  # /vsimem/, GTIFF_DIR:..., NETCDF:...
        return None
    path = Path(text)
    return path if path.is_absolute() or base is None else base / path


def _check_opens(target: str, name: str, vrt: Path, state: _Inspection) -> None:
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with network_guard(state.allow_network), rasterio.open(target) as ds:
            if ds.count == 0:
                raise InputError(f"VRT {vrt}: source {name} has no raster bands; fix its SourceFilename")
    except RasterioIOError as exc:
        reason = " ".join(str(exc).split())[:300]
        raise InputError(f"VRT {vrt}: source {name} cannot be opened ({reason}); fix its SourceFilename") from None


def _open_regular(path: Path, what: str) -> int:
    """Open ``path`` read-only (never blocking on a FIFO) and check it is a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except IsADirectoryError:
        raise InputError(f"{what} is a directory; pass a file") from None
    except FileNotFoundError:
        raise InputError(f"{what} does not exist") from None
    except PermissionError:
        raise InputError(f"{what} is not readable; check its permissions") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise InputError(f"{what} is {describe_mode(mode)}, not a regular file; pass a file")
    return fd
