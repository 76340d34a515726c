"""Images in prompts: what may be sent, checked before anything leaves the machine.

:func:`as_image` turns what a notebook holds into an :class:`ImagePart` (the bytes, their
real type, width and height):

- a matplotlib ``Figure`` (or ``Axes``): rendered to PNG with ``savefig`` at its own dpi;
- a plotly figure: ``fig.to_image(format="png")``, which needs the ``kaleido`` package and a
  Chrome or Chromium it can start headless. Without them the figure is refused with an
  :class:`~cencori_nb.errors.ImageError` that says how (never a silent fallback);
- a PIL image: saved as PNG;
- an IPython ``Image``: its embedded bytes, or its file (by the path rules below); an
  ``Image(url=…)`` is refused: nothing is downloaded for you;
- a path (``pathlib.Path`` or any ``os.PathLike``; a plain ``str`` is text, never a file);
- raw ``bytes`` holding a PNG, JPEG, GIF or WebP image.

Rules, each failing closed with an ``ImageError`` that names the problem and never quotes the
file's contents:

- the type comes from the bytes' signature (magic numbers), never from a file name: an SVG,
  HTML page or text file called ``chart.png`` is refused;
- a path must resolve (symlinks followed) to a regular file inside the working folder, and
  never inside the toolkit's home (the key store, ledger and cache live there);
- files above :data:`MAX_FILE_BYTES` are refused before they are read whole;
- width × height is read from the header and refused above :data:`MAX_PIXELS` *before*
  anything is decoded (a decompression bomb: a 50 kB PNG can claim 100,000 × 100,000
  pixels); then the whole image is decoded once, so a truncated or corrupt file is refused
  here rather than by the provider;
- a GIF (possibly animated) is sent as a PNG of its first frame: Gemini takes no GIF, and
  OpenAI no animated one.

Sizes per provider, checked before sending (:func:`fit_for`): each provider scales large
images down on its side and charges for the scaled size, so we scale down first to the
same bound and send fewer bytes. OpenAI: within 2048 × 2048; Anthropic: 1568 px on the long
side and about 1.15 megapixels (1092 × 1092); Gemini: 3072 px on the long side. An image
still above the provider's byte limit after that (Anthropic 5 MB per image, OpenAI 20 MB)
is refused, and so is a request above its total (:func:`check_request`).

Tokens (:func:`image_tokens`), as each provider documents them, for the estimate before
sending (the bill itself uses the usage the provider returns):

- OpenAI (developers.openai.com, "Images and vision", *Calculating costs*): high detail
  scales into 2048 × 2048, then the short side to 768, counts 512-px tiles: ``85 + 170 ×
  tiles`` for GPT-4o / GPT-4.1 / o-series (``2833 + 5667 × tiles`` for gpt-4o-mini);
  GPT-4.1-mini/nano and o4-mini count 32-px patches (at most 1536) times 1.62 / 2.46 / 1.72;
- Anthropic (docs.anthropic.com, "Vision", *Calculate image costs*): ``width × height /
  750`` after scaling to 1568 px on the long side and 1.15 megapixels;
- Gemini (ai.google.dev, "Understand and count tokens"): 258 when both sides are ≤ 384 px,
  else 258 per 768 × 768 tile.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import os
import stat
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ImageError, ModelTakesNoImagesError

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_PIXELS",
    "ImagePart",
    "as_image",
    "check_request",
    "image",
    "fit_for",
    "image_tokens",
    "is_image_like",
    "sniff",
]

MAX_FILE_BYTES = 20 * 1024 * 1024  # the largest single image any of the providers takes
MAX_PIXELS = 50_000_000  # width × height; a 48-megapixel phone photo passes, a bomb does not
MAX_SIDE = 20_000

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
SUPPORTED = ("image/png", "image/jpeg", "image/gif", "image/webp")


@dataclass(frozen=True, slots=True, eq=False)
class ImagePart:
    """One image ready to be sent: ``mime`` (from its bytes), ``data``, ``width``,
    ``height`` in pixels, and ``source`` (what it was made from, for messages).

    Its ``repr`` shows the type, size and hash, never the bytes; in a notebook it displays
    as the image itself."""

    mime: str
    data: bytes = field(repr=False)
    width: int
    height: int
    source: str = "image"

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the bytes sent (the sandbox answers with the same hash)."""
        return _sha256(self.data)

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def base64(self) -> str:
        """The bytes as standard base64 (what every wire format carries)."""
        return base64.b64encode(self.data).decode("ascii")

    def data_url(self) -> str:
        """``data:<mime>;base64,…`` (OpenAI's and Cencori's ``image_url``)."""
        return f"data:{self.mime};base64,{self.base64()}"

    def describe(self) -> str:
        """``image/png 640×480, 12.3 kB`` (for footers and messages)."""
        return f"{self.mime} {self.width}×{self.height}, {_kb(self.nbytes)}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImagePart) and (self.mime, self.data) == (other.mime, other.data)

    def __hash__(self) -> int:
        return hash((self.mime, self.sha256))

    def __repr__(self) -> str:
        return f"ImagePart({self.describe()}, sha256 {self.sha256[:12]}…, from {self.source})"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle: dict[str, Any] = {"text/plain": repr(self)}
        if self.mime in ("image/png", "image/jpeg"):
            bundle[self.mime] = self.base64()
        return bundle


_hash_lock = threading.Lock()
_hashes: dict[int, tuple[bytes, str]] = {}


def _sha256(data: bytes) -> str:
    # Hashing a few MB per request is cheap, but the cache key, the footer and the adapters
    # each ask: remember the last few by identity (bytes are immutable).
    with _hash_lock:
        hit = _hashes.get(id(data))
        if hit is not None and hit[0] is data:
            return hit[1]
    digest = hashlib.sha256(data).hexdigest()
    with _hash_lock:
        if len(_hashes) > 64:
            _hashes.clear()
        _hashes[id(data)] = (data, digest)
    return digest


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} kB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MB"


# --------------------------------------------------------------------------- detection


def sniff(data: bytes) -> str | None:
    """The image type ``data`` really is, from its first bytes (None: not one we send)."""
    head = bytes(data[:16])
    for signature, mime in _SIGNATURES:
        if head.startswith(signature):
            return mime
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def _what_it_looks_like(data: bytes) -> str:
    """A few words on what refused bytes seem to be (never their content)."""
    head = bytes(data[:512]).lstrip().lower()
    if head.startswith((b"<svg", b"<?xml")) or b"<svg" in head:
        return "SVG (vector) text"
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "an HTML page"
    if head.startswith(b"%pdf"):
        return "a PDF document"
    if not data:
        return "empty"
    try:
        bytes(data[:512]).decode("utf-8")
    except UnicodeDecodeError:
        return "binary data of an unknown type"
    return "text"


def is_image_like(value: Any) -> bool:
    """True when ``value`` is something :func:`as_image` takes (without importing anything):
    bytes with an image signature, a path, a matplotlib/plotly figure, a PIL or IPython
    image, or an ImagePart."""
    if isinstance(value, ImagePart):
        return True
    if isinstance(value, (bytes, bytearray, memoryview)):
        return sniff(bytes(value[:16])) is not None
    if isinstance(value, os.PathLike):
        return True
    return _kind(value) is not None


def _kind(value: Any) -> str | None:
    for klass in type(value).__mro__:
        module = klass.__module__ or ""
        name = klass.__name__
        if module.startswith("matplotlib.") and name in ("Figure", "SubFigure", "Axes"):
            return "matplotlib"
        if module.startswith("plotly.") and name in ("Figure", "FigureWidget", "BaseFigure"):
            return "plotly"
        if module.startswith("PIL.") and name == "Image":
            return "pil"
        if module.startswith("IPython.") and name == "Image":
            return "ipython"
    return None


# --------------------------------------------------------------------------- conversion


def as_image(value: Any, *, root: str | os.PathLike[str] | None = None) -> ImagePart:
    """``value`` as a checked :class:`ImagePart` (see the module docstring for what is taken
    and what is refused). ``root`` is the folder paths must stay inside (default: the
    working folder). Raises :class:`~cencori_nb.errors.ImageError`."""
    if isinstance(value, ImagePart):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return from_bytes(bytes(value), source="bytes")
    if isinstance(value, os.PathLike):
        return from_path(value, root=root)
    kind = _kind(value)
    if kind == "matplotlib":
        return _from_matplotlib(value)
    if kind == "plotly":
        return _from_plotly(value)
    if kind == "pil":
        return _from_pil(value, source="PIL image")
    if kind == "ipython":
        return _from_ipython(value, root=root)
    if isinstance(value, str):
        raise ImageError(
            "A string is text, not an image.",
            hint="Pass pathlib.Path('chart.png') for a file, or the figure itself.",
        )
    raise ImageError(
        f"Cannot send a {type(value).__name__} as an image.",
        hint="Give a matplotlib or plotly figure, a PIL image, an IPython Image, a "
        "pathlib.Path to a PNG/JPEG/GIF/WebP file, or the image's bytes.",
    )


image = as_image  # the public name: ``cencori_nb.image(fig)``


def from_bytes(data: bytes, *, source: str) -> ImagePart:
    """Check ``data`` (type from its signature, size, pixel count, full decode)."""
    from .redact import remove_stored_keys

    # the source (a file's name) is kept on the part and shown (repr, describe, a chat's
    # display): a file named after a stored key must not carry it there
    source = remove_stored_keys(source)
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(
            f"The image ({source}) is {_kb(len(data))}, above the {_kb(MAX_FILE_BYTES)} "
            "any provider takes.",
            hint="Save it smaller (lower dpi, or JPEG).",
            source=source,
        )
    mime = sniff(data)
    if mime is None:
        raise ImageError(
            f"Not an image we can send ({source}): it is {_what_it_looks_like(data)}, "
            "not PNG, JPEG, GIF or WebP.",
            hint="Export it as PNG (an SVG: render it first, e.g. with cairosvg).",
            source=source,
        )
    _refuse_stored_keys(data, source)
    width, height = _header_size(data, mime, source)
    _check_pixels(width, height, source)
    return _decode_check(data, mime, width, height, source)


def _refuse_stored_keys(data: bytes, source: str) -> None:
    """An image is not a secret, but its bytes may carry one: a PNG text chunk or EXIF
    comment holding a stored API key would leave, base64-encoded, inside the request
    (where no text check looks). Refused, naming neither the key nor the bytes."""
    from .redact import registered_secrets

    for secret in registered_secrets():
        if secret.encode() in data:
            raise ImageError(
                f"Refused: the image ({source}) holds one of your stored API keys in its "
                "bytes (in its metadata or text), which would be sent with it.",
                hint="Save the image again without metadata (e.g. re-export the figure).",
                source=source,
            )


def _check_pixels(width: int, height: int, source: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"The image ({source}) says it is {width}×{height} pixels.", source=source)
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise ImageError(
            f"The image ({source}) claims {width}×{height} pixels, above the "
            f"{MAX_PIXELS // 1_000_000}-megapixel limit; it was not decoded (a "
            "decompression bomb looks like this).",
            hint="Resize it first.",
            source=source,
        )


def _truncated(source: str) -> ImageError:
    return ImageError(
        f"The image ({source}) is truncated or corrupt: its header is incomplete.",
        hint="Save it again.",
        source=source,
    )


def _header_size(data: bytes, mime: str, source: str) -> tuple[int, int]:
    """Width and height from the header alone (nothing decoded)."""
    try:
        if mime == "image/png":
            if data[12:16] != b"IHDR":
                raise _truncated(source)
            return struct.unpack(">II", data[16:24])
        if mime == "image/gif":
            w, h = struct.unpack("<HH", data[6:10])
            return w, h
        if mime == "image/webp":
            chunk = data[12:16]
            if chunk == b"VP8X":
                w = int.from_bytes(data[24:27], "little") + 1
                h = int.from_bytes(data[27:30], "little") + 1
                return w, h
            if chunk == b"VP8L":
                bits = int.from_bytes(data[21:25], "little")
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return w & 0x3FFF, h & 0x3FFF
            raise _truncated(source)
        return _jpeg_size(data, source)
    except struct.error:
        raise _truncated(source) from None


def _jpeg_size(data: bytes, source: str) -> tuple[int, int]:
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise _truncated(source)
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        if length < 2:
            raise _truncated(source)
        i += 2 + length
    raise _truncated(source)


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        raise ImageError("Images need the Pillow package.", hint="pip install pillow") from None
    return Image


def _decode_check(data: bytes, mime: str, width: int, height: int, source: str) -> ImagePart:
    """Decode the whole image once: truncated or corrupt data is refused here. A GIF becomes
    a PNG of its first frame."""
    pil = _pil()
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pil.DecompressionBombWarning)
            im = pil.open(io.BytesIO(data))
            if (im.width, im.height) != (width, height):
                raise _truncated(source)
            im.load()
    except ImageError:
        raise
    except (pil.DecompressionBombError, pil.DecompressionBombWarning):
        _check_pixels(MAX_SIDE + 1, MAX_SIDE + 1, source)
        raise  # pragma: no cover - _check_pixels raised
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError):
        raise ImageError(
            f"The image ({source}) is truncated or corrupt: it does not decode as "
            f"{mime.removeprefix('image/').upper()}.",
            hint="Save it again.",
            source=source,
        ) from None
    if mime == "image/gif":
        return _encode(im, source=f"{source}, first GIF frame")
    return ImagePart(mime, data, width, height, source)


def _encode(im: Any, *, source: str, fmt: str = "PNG") -> ImagePart:
    buf = io.BytesIO()
    if fmt == "JPEG" and im.mode not in ("RGB", "L"):
        im = im.convert("RGB")
    elif fmt == "PNG" and im.mode not in ("RGB", "RGBA", "L", "LA", "P", "1", "I;16", "I"):
        im = im.convert("RGBA")
    im.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    data = buf.getvalue()
    return ImagePart(f"image/{fmt.lower()}", data, im.width, im.height, source)


def _from_pil(im: Any, *, source: str) -> ImagePart:
    _check_pixels(im.width, im.height, source)
    try:
        part = _encode(im, source=source)
    except (OSError, ValueError) as exc:
        raise ImageError(
            f"Could not save the {source} as PNG ({type(exc).__name__}).", source=source
        ) from None
    return from_bytes(part.data, source=source)


def _from_matplotlib(value: Any) -> ImagePart:
    fig = getattr(value, "figure", None) if type(value).__name__ == "Axes" else value
    fig = value if fig is None else fig
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return from_bytes(buf.getvalue(), source="matplotlib figure")


def _from_plotly(fig: Any) -> ImagePart:
    try:
        data = fig.to_image(format="png")
    except (ValueError, RuntimeError, ImportError, OSError) as exc:
        said = " ".join(str(exc).split())[:160]  # kaleido's own words, for the diagnosis
        raise ImageError(
            "A plotly figure needs the kaleido package and a Chrome or Chromium to become "
            f"an image, and it failed here ({type(exc).__name__}: {said}).",
            hint="pip install kaleido, then install Chrome (plotly_get_chrome) or Chromium "
            "(apt install chromium); or save it yourself with fig.write_image('chart.png') "
            "and pass pathlib.Path('chart.png').",
            source="plotly figure",
        ) from None
    return from_bytes(bytes(data), source="plotly figure")


def _from_ipython(img: Any, *, root: str | os.PathLike[str] | None) -> ImagePart:
    data = getattr(img, "data", None)
    if isinstance(data, (bytes, bytearray)) and data:
        return from_bytes(bytes(data), source="IPython Image")
    filename = getattr(img, "filename", None)
    if filename:
        return from_path(Path(filename), root=root)
    raise ImageError(
        "This IPython Image points at a URL; nothing is downloaded for you.",
        hint="Download the file, then pass pathlib.Path to it.",
        source="IPython Image",
    )


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def from_path(
    path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None
) -> ImagePart:
    """The image file at ``path``: inside ``root`` (default the working folder) once
    symlinks are followed, never inside the toolkit's home, a regular file."""
    from .home import home_dir

    shown = os.fspath(path)
    try:
        resolved = Path(path).expanduser().resolve(strict=True)
    except FileNotFoundError:
        raise ImageError(f"No image file at {shown!r}.", source=shown) from None
    except (OSError, RuntimeError) as exc:  # a symlink loop, a permission error
        raise ImageError(f"Cannot open {shown!r} ({type(exc).__name__}).", source=shown) from None
    except ValueError:  # a NUL in the path: no file can have that name
        raise ImageError(f"No image file at {shown!r}.", source=shown) from None
    folder = Path(os.getcwd() if root is None else root).resolve()
    home = home_dir().expanduser().resolve()
    if _inside(resolved, home):
        raise ImageError(
            f"Refused: {shown!r} is inside the cencori-nb home (the key store, ledger and "
            "cache live there); nothing in it is sent.",
            source=shown,
        )
    if not _inside(resolved, folder):
        raise ImageError(
            f"Refused: {shown!r} is outside the working folder {str(folder)!r}"
            + (" (it is a symlink that points out of it)." if resolved != Path(path) else "."),
            hint="Copy the image into the notebook's folder first.",
            source=shown,
        )
    try:
        # O_NOFOLLOW: the checked path has no symlink left; one swapped in since is refused
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(resolved, flags)
    except OSError as exc:
        raise ImageError(
            f"Cannot read {shown!r} ({exc.strerror or type(exc).__name__}).", source=shown
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"Refused: {shown!r} is not a regular file.", source=shown)
        if info.st_size > MAX_FILE_BYTES:
            raise ImageError(
                f"{shown!r} is {_kb(info.st_size)}, above the {_kb(MAX_FILE_BYTES)} any "
                "provider takes.",
                hint="Save it smaller (lower resolution, or JPEG).",
                source=shown,
            )
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    return from_bytes(data, source=f"file {resolved.name}")


# --------------------------------------------------------------------------- per provider

# The long-side bound each provider scales to on its side (OpenAI's is a 2048 square).
_MAX_SIDE: dict[str, int] = {"openai": 2048, "anthropic": 1568, "google": 3072}
_MAX_BYTES: dict[str, int] = {
    "openai": 20 * 1024 * 1024,
    "anthropic": 5 * 1024 * 1024,
    "google": 20 * 1024 * 1024,
}


def wire_of(provider: str) -> str:
    """The image rules a provider follows: its own, else OpenAI's (the compatible family)."""
    return provider if provider in _MAX_SIDE else "openai"


# Anthropic also scales anything above ~1.15 megapixels (its table of the largest sizes sent
# unscaled: 1092 × 1092 for 1:1 … 784 × 1568 for 1:2).
_MAX_AREA: dict[str, int] = {"anthropic": 1092 * 1092}


def fitted_size(width: int, height: int, provider: str) -> tuple[int, int]:
    """The size :func:`fit_for` sends for a ``width`` × ``height`` image."""
    wire = wire_of(provider)
    scale = min(1.0, _MAX_SIDE[wire] / max(width, height))
    if wire in _MAX_AREA:
        scale = min(scale, math.sqrt(_MAX_AREA[wire] / (width * height)))
    if scale >= 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


_fit_lock = threading.Lock()
_fitted: dict[tuple[str, str], ImagePart] = {}


def fit_for(part: ImagePart, provider: str) -> ImagePart:
    """``part`` as sent to ``provider``: scaled down to its bound (see module docstring),
    re-encoded in its own type; refused if still above the provider's byte limit."""
    wire = wire_of(provider)
    size = fitted_size(part.width, part.height, wire)
    if size == (part.width, part.height):
        fitted = part
    else:
        key = (part.sha256, wire)
        with _fit_lock:
            cached = _fitted.get(key)
        if cached is not None:
            fitted = cached
        else:
            pil = _pil()
            im = pil.open(io.BytesIO(part.data))
            im = im.resize(size, pil.Resampling.LANCZOS)
            fmt = "JPEG" if part.mime == "image/jpeg" else "PNG"
            fitted = _encode(im, source=f"{part.source}, scaled to {size[0]}×{size[1]}", fmt=fmt)
            if part.mime == "image/webp":
                fitted = _encode(im, source=fitted.source, fmt="WEBP")
            with _fit_lock:
                if len(_fitted) > 32:
                    _fitted.clear()
                _fitted[key] = fitted
    limit = _MAX_BYTES[wire]
    if fitted.nbytes > limit:
        raise ImageError(
            f"The image ({part.source}) is {_kb(fitted.nbytes)} at {fitted.width}×"
            f"{fitted.height}, above the {_kb(limit)} {provider} takes per image.",
            hint="Save it as JPEG or at a lower resolution.",
            source=part.source,
            provider=provider,
        )
    return fitted


def image_tokens(width: int, height: int, provider: str, model: str = "") -> int:
    """Input tokens one ``width`` × ``height`` image costs on ``provider``'s ``model``, by the
    provider's documented formula (see the module docstring), after :func:`fit_for`."""
    wire = wire_of(provider)
    w, h = fitted_size(width, height, wire)
    if wire == "anthropic":
        return max(1, math.ceil(w * h / 750))
    if wire == "google":
        if w <= 384 and h <= 384:
            return 258
        return math.ceil(w / 768) * math.ceil(h / 768) * 258
    return _openai_tokens(w, h, model)


_PATCH_MULTIPLIER = (("gpt-4.1-mini", 1.62), ("gpt-4.1-nano", 2.46), ("o4-mini", 1.72))


def _openai_tokens(w: int, h: int, model: str) -> int:
    name = model.rsplit("/", 1)[-1].lower()
    for prefix, multiplier in _PATCH_MULTIPLIER:
        if name.startswith(prefix):
            patches = math.ceil(w / 32) * math.ceil(h / 32)
            if patches > 1536:
                shrink = math.sqrt(32 * 32 * 1536 / (w * h))
                # whole patches on the tighter side, as the documented example does
                shrink *= min(
                    math.floor(w * shrink / 32) / (w * shrink / 32),
                    math.floor(h * shrink / 32) / (h * shrink / 32),
                )
                patches = min(1536, math.ceil(w * shrink / 32) * math.ceil(h * shrink / 32))
            return math.ceil(patches * multiplier)
    scale = min(1.0, 768 / min(w, h))
    tw, th = w * scale, h * scale
    tiles = math.ceil(tw / 512) * math.ceil(th / 512)
    if name.startswith("gpt-4o-mini"):
        return 2833 + 5667 * tiles
    return 85 + 170 * tiles


def parts_tokens(parts: Iterable[Any], provider: str, model: str) -> int:
    """Image tokens of the :class:`ImagePart` items among ``parts``."""
    return sum(
        image_tokens(p.width, p.height, provider, model) for p in parts if isinstance(p, ImagePart)
    )


# Images per request and bytes per request, by each API's documented limits (OpenAI 500
# images / 50 MB; Anthropic 100 images / a 32 MB request; Gemini 3,600 images / 20 MB of
# inline data), and Cencori's gateway, which reads one image (chat-vision-router.ts keeps
# the last one and drops the others).
_MAX_COUNT = {"openai": 500, "anthropic": 100, "google": 3600}
_MAX_TOTAL = {"openai": 50 * 1024 * 1024, "anthropic": 32 * 1024 * 1024, "google": 20 * 1024 * 1024}


def check_request(request: Any, *, provider: str, model: str, route: str) -> None:
    """Refuse, before anything is sent, a request whose images cannot go where it is
    routed: an image outside a user message, a model that reads no images (by
    :func:`cencori_nb.catalog.takes_images`; unknown counts as no) on a route that will not
    upgrade it, more images or bytes than the API takes, more than one image through
    Cencori. The managed route goes through Cencori's gateway, which answers an image
    request to a text model with a vision model (``X-Model-Upgraded``), so it is let
    through. ``request`` is a :class:`~cencori_nb.types.ChatRequest`."""
    from .catalog import takes_images

    found = [(m.role, p) for m in request.messages for p in m.images]
    if not found:
        return
    if any(role != "user" for role, _ in found):
        raise ImageError(
            "Images can only be sent in user messages (not system or assistant ones).",
            provider=provider,
            model=model,
        )
    parts = [p for _, p in found]
    for part in parts:  # again: routing has opened the store, so every key is known now
        _refuse_stored_keys(part.data, part.source)
    if route == "managed":
        if len(parts) > 1:
            raise ImageError(
                f"Cencori's gateway reads one image per request; this one has {len(parts)}.",
                hint="Send one image per request, or use your own key for the provider "
                "(route='byok').",
                provider=provider,
                model=model,
            )
        rules = "anthropic"  # the gateway may answer with any provider's model
    else:
        reads = takes_images(provider, model)
        if not reads:
            known = "reads only text" if reads is False else "is not known to read images"
            raise ModelTakesNoImagesError(
                f"{provider}/{model} {known}; the prompt holds "
                f"{len(parts)} image{'s' if len(parts) > 1 else ''}. Nothing was sent.",
                hint="Pick a vision model (e.g. gpt-4o-mini, claude-sonnet-4-5, "
                "gemini-2.5-flash), or route through Cencori (route='managed'), which "
                "upgrades the model to one that sees.",
                provider=provider,
                model=model,
            )
        rules = wire_of(provider)
    if len(parts) > _MAX_COUNT[rules]:
        raise ImageError(
            f"{len(parts)} images in one request; {provider} takes at most {_MAX_COUNT[rules]}.",
            provider=provider,
            model=model,
        )
    total = sum(fit_for(p, rules).nbytes for p in parts) * 4 // 3  # as base64
    if total > _MAX_TOTAL[rules]:
        raise ImageError(
            f"The images come to {_kb(total)} as sent, above the {_kb(_MAX_TOTAL[rules])} "
            f"{provider} takes in one request.",
            hint="Send fewer or smaller images per request.",
            provider=provider,
            model=model,
        )
