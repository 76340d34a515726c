"""Images as the sandbox receives them, on every wire format: read, checked, described.

The sandbox takes an image part in each provider's own shape:

- OpenAI and the compatible family, and Cencori's doors (its ``chat-vision-router.ts``
  takes OpenAI and Anthropic parts): ``{"type": "image_url", "image_url": {"url":
  "data:image/png;base64,…"}}`` (``image_url`` may also be the URL string itself);
- Anthropic: ``{"type": "image", "source": {"type": "base64", "media_type": …, "data": …}}``;
- Gemini: ``{"inlineData": {"mimeType": …, "data": …}}``, also spelled ``inline_data`` /
  ``mime_type`` (proto JSON accepts both names; google-genai sends ``inlineData`` with
  ``mime_type`` inside) with the standard or the URL-safe base64 alphabet (google-genai
  sends the URL-safe one).

Each image is decoded from base64 and opened with Pillow (the header only: nothing is
decoded, so a decompression bomb costs nothing here); its real type must be PNG, JPEG, GIF
or WebP and match the type the request declares. A bad one is the door's own 400. Images
by URL are refused: the sandbox never fetches anything.

The reply then names every image it got: ``Image 1: image/png 640x480, 22529 bytes, sha256
<64 hex digits>.``, so a test (or a person) can check that the bytes arrived unchanged.
Each image adds input tokens by its provider's documented rule (OpenAI 512-px tiles after
scaling into 2048 and 768, ``85 + 170`` per tile, gpt-4o-mini ``2833 + 5667``; Anthropic
``w × h / 750`` after scaling to 1568 px and 1.15 megapixels; Gemini 258 per 768-px tile,
258 for a small image). This module is the sandbox's own: it shares no code with the
client side (it plays the provider, which does its own counting).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
from dataclasses import dataclass, replace
from typing import Any

from .common import BadRequest
from .replies import Reply, split_tokens

__all__ = ["SeenImage", "find_images", "image_input_tokens", "with_images"]

_KINDS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}
MAX_IMAGE_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class SeenImage:
    """One image the sandbox received."""

    mime: str
    width: int
    height: int
    nbytes: int
    sha256: str

    def describe(self, n: int) -> str:
        return (
            f"Image {n}: {self.mime} {self.width}x{self.height}, {self.nbytes} bytes, "
            f"sha256 {self.sha256}."
        )


def _decode(data: Any, declared: Any, where: str) -> SeenImage:
    if not isinstance(data, str) or not data:
        raise BadRequest(f"{where}: the image data is missing.", param=where, code="invalid_image")
    text = data.strip().replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(
            f"{where}: the image data is not valid base64.", param=where, code="invalid_image"
        ) from None
    if len(raw) > MAX_IMAGE_BYTES:
        raise BadRequest(
            f"{where}: image exceeds {MAX_IMAGE_BYTES} bytes.", param=where, code="invalid_image"
        )
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as im:  # reads the header only
            kind, width, height = im.format, im.width, im.height
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise BadRequest(
            f"{where}: could not process image (not a PNG, JPEG, GIF or WebP image).",
            param=where,
            code="invalid_image",
        ) from None
    mime = _KINDS.get(str(kind))
    if mime is None:
        raise BadRequest(
            f"{where}: unsupported image type {kind}; use PNG, JPEG, GIF or WebP.",
            param=where,
            code="invalid_image",
        )
    if isinstance(declared, str) and declared.lower() != mime:
        raise BadRequest(
            f"{where}: image does not match the provided media type {declared}.",
            param=where,
            code="invalid_image",
        )
    return SeenImage(mime, width, height, len(raw), hashlib.sha256(raw).hexdigest())


def _from_url(url: Any, where: str) -> SeenImage:
    if not isinstance(url, str) or not url.startswith("data:"):
        raise BadRequest(
            f"{where}: the sandbox does not fetch image URLs; send the image inline (a data: URL).",
            param=where,
            code="invalid_image_url",
        )
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        raise BadRequest(
            f"{where}: a data URL image must be base64.", param=where, code="invalid_image_url"
        )
    declared = header[len("data:") :].split(";", 1)[0] or None
    return _decode(payload, declared, where)


def _part_image(part: Any, where: str) -> SeenImage | None:
    if not isinstance(part, dict):
        return None
    kind = part.get("type")
    if kind == "image_url":
        value = part.get("image_url")
        url = value.get("url") if isinstance(value, dict) else value
        return _from_url(url, where)
    if kind == "input_image":
        return _from_url(part.get("image_url") or part.get("image"), where)
    if kind == "image":
        source = part.get("source")
        if not isinstance(source, dict) or source.get("type") != "base64":
            raise BadRequest(
                f"{where}.source: the sandbox takes base64 image sources only.",
                param=where,
                code="invalid_image",
            )
        return _decode(source.get("data"), source.get("media_type"), f"{where}.source")
    inline = part.get("inlineData", part.get("inline_data"))
    if isinstance(inline, dict):
        declared = inline.get("mimeType", inline.get("mime_type"))
        return _decode(inline.get("data"), declared, f"{where}.inlineData")
    if "fileData" in part or "file_data" in part:
        raise BadRequest(
            f"{where}.fileData: the sandbox does not fetch files; send inlineData.",
            param=where,
            code="invalid_image",
        )
    return None


def find_images(items: Any, *, key: str = "messages") -> list[SeenImage]:
    """Every image in a request's ``messages`` (OpenAI, Anthropic, Cencori) or ``contents``
    (Gemini, ``key="contents"``), in order; a bad one raises the door's 400."""
    found: list[SeenImage] = []
    for i, item in enumerate(items if isinstance(items, list) else ()):
        if not isinstance(item, dict):
            continue
        parts = item.get("parts") if key == "contents" else item.get("content")
        for j, part in enumerate(parts if isinstance(parts, list) else ()):
            seen = _part_image(
                part, f"{key}[{i}].{'parts' if key == 'contents' else 'content'}[{j}]"
            )
            if seen is not None:
                found.append(seen)
    return found


def image_input_tokens(image: SeenImage, provider: str, model: str) -> int:
    """Input tokens one image costs on ``provider``'s ``model`` (see the module docstring)."""
    w, h = image.width, image.height
    if provider == "anthropic":
        scale = min(1.0, 1568 / max(w, h), math.sqrt(1092 * 1092 / (w * h)))
        return max(1, math.ceil(round(w * scale) * round(h * scale) / 750))
    if provider == "google":
        scale = min(1.0, 3072 / max(w, h))
        w, h = round(w * scale), round(h * scale)
        if w <= 384 and h <= 384:
            return 258
        return math.ceil(w / 768) * math.ceil(h / 768) * 258
    scale = min(1.0, 2048 / max(w, h))
    fw, fh = w * scale, h * scale
    scale = min(1.0, 768 / min(fw, fh))
    tiles = math.ceil(fw * scale / 512) * math.ceil(fh * scale / 512)
    if model.rsplit("/", 1)[-1].startswith("gpt-4o-mini"):
        return 2833 + 5667 * tiles
    return 85 + 170 * tiles


def with_images(
    reply: Reply, images: list[SeenImage], *, provider: str, model: str, max_tokens: int | None
) -> Reply:
    """``reply`` naming each image it got (cut at ``max_tokens`` like any reply), with the
    images' input tokens added."""
    if not images:
        return reply
    extra = " " + " ".join(img.describe(n) for n, img in enumerate(images, 1))
    pieces = [*reply.pieces, *split_tokens(extra)]
    truncated = reply.truncated or (max_tokens is not None and len(pieces) > max_tokens)
    if max_tokens is not None:
        pieces = pieces[: max(1, max_tokens)]
    tokens = sum(image_input_tokens(img, provider, model) for img in images)
    return replace(
        reply,
        text="".join(pieces),
        pieces=tuple(pieces),
        output_tokens=len(pieces),
        truncated=truncated,
        input_tokens=reply.input_tokens + tokens,
        image_tokens=reply.image_tokens + tokens,
    )
