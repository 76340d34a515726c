"""The official SDKs send images to the sandbox unchanged; it answers with their size and
SHA-256, counts their tokens, and refuses a bad image with each provider's own 400.

The judges are openai, anthropic, google-genai and cencori, used as their docs show."""

from __future__ import annotations

import base64
import hashlib
import io

import anthropic
import openai
import pytest
from google import genai
from google.genai import types
from PIL import Image

from cencori_nb.sandbox.images import image_input_tokens

PNG_W, PNG_H = 1024, 768


def png(
    width: int = PNG_W, height: int = PNG_H, color: tuple[int, int, int] = (30, 90, 160)
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def described(data: bytes, mime: str = "image/png", n: int = 1) -> str:
    im = Image.open(io.BytesIO(data))
    return (
        f"Image {n}: {mime} {im.width}x{im.height}, {len(data)} bytes, "
        f"sha256 {hashlib.sha256(data).hexdigest()}."
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


QUESTION = "What does this chart show?"


# --------------------------------------------------------------------------- OpenAI


@pytest.fixture
def oai(sandbox) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=sandbox.url + "/openai/v1", api_key="sk-img-test-Ab12", max_retries=0
    )


def image_message(data: bytes, mime: str = "image/png") -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": QUESTION},
                {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{b64(data)}"}},
            ],
        }
    ]


def test_openai_sdk_image_is_named_by_size_and_hash(oai: openai.OpenAI) -> None:
    """The reply names the bytes it got; prompt tokens include the tiles (1024×768 → 4)."""
    data = png()
    text_only = oai.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": QUESTION}]
    )
    r = oai.chat.completions.create(model="gpt-4o", messages=image_message(data))
    assert described(data) in r.choices[0].message.content
    assert r.usage.prompt_tokens - text_only.usage.prompt_tokens == 85 + 170 * 4


def test_openai_sdk_stream_with_two_images(oai: openai.OpenAI) -> None:
    """Streamed deltas carry the same description, for each image in order."""
    a, b = png(64, 64), png(300, 200, (1, 2, 3))
    messages = image_message(a)
    messages[0]["content"].append(
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(b)}}
    )
    stream = oai.chat.completions.create(
        model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert described(a, n=1) in text and described(b, n=2) in text


@pytest.mark.parametrize(
    ("url", "words"),
    [
        (
            "data:image/png;base64," + b64(b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
            "could not process image",
        ),
        ("data:image/png;base64," + b64(png()[:40]), "could not process image"),
        (
            "data:image/jpeg;base64," + b64(png()),
            "does not match the provided media type image/jpeg",
        ),
        ("data:image/png;base64,%%%not-base64%%%", "not valid base64"),
        ("https://example.com/chart.png", "does not fetch image URLs"),
    ],
)
def test_openai_sdk_bad_images_are_400(oai: openai.OpenAI, url: str, words: str) -> None:
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="gpt-4o", messages=messages)
    assert words in str(info.value)


# --------------------------------------------------------------------------- Anthropic


def test_anthropic_sdk_image_block(sandbox) -> None:
    """An image block (base64 source): named, and input tokens grow by w×h/750."""
    client = anthropic.Anthropic(
        base_url=sandbox.url + "/anthropic", api_key="sk-ant-img-Qx4F", max_retries=0
    )
    data = png()
    base = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=300, messages=[{"role": "user", "content": QUESTION}]
    )
    r = client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=300,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": QUESTION},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": b64(data)},
                    },
                ],
            }
        ],
    )
    assert described(data) in r.content[0].text
    assert r.usage.input_tokens - base.usage.input_tokens == 1049  # 1024×768/750, rounded up


def test_anthropic_sdk_wrong_media_type_is_400(sandbox) -> None:
    client = anthropic.Anthropic(
        base_url=sandbox.url + "/anthropic", api_key="sk-ant-img-Qx4F", max_retries=0
    )
    with pytest.raises(anthropic.BadRequestError, match="does not match the provided media type"):
        client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=50,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/gif",
                                "data": b64(png()),
                            },
                        }
                    ],
                }
            ],
        )


# --------------------------------------------------------------------------- Gemini


def test_google_genai_inline_image(sandbox) -> None:
    """google-genai sends inlineData with mime_type and URL-safe base64; the sandbox reads it,
    names it, and reports the image's tokens under promptTokensDetails (IMAGE)."""
    client = genai.Client(
        api_key="AIzaImgTest-Gm3k",
        http_options={"base_url": sandbox.url + "/google", "api_version": "v1beta"},
    )
    data = png()
    r = client.models.generate_content(
        model="gemini-2.5-flash",
        contents=[types.Part.from_bytes(data=data, mime_type="image/png"), QUESTION],
    )
    assert described(data) in r.text
    details = {d.modality.name: d.token_count for d in r.usage_metadata.prompt_tokens_details}
    assert details["IMAGE"] == 2 * 258  # 1024×768: two 768-px tiles


def test_google_genai_stream_with_image(sandbox) -> None:
    client = genai.Client(
        api_key="AIzaImgTest-Gm3k",
        http_options={"base_url": sandbox.url + "/google", "api_version": "v1beta"},
    )
    data = png(200, 100)
    text = "".join(
        c.text or ""
        for c in client.models.generate_content_stream(
            model="gemini-2.5-flash",
            contents=[QUESTION, types.Part.from_bytes(data=data, mime_type="image/png")],
        )
    )
    assert described(data) in text


def test_google_genai_bad_image_is_400(sandbox) -> None:
    client = genai.Client(
        api_key="AIzaImgTest-Gm3k",
        http_options={"base_url": sandbox.url + "/google", "api_version": "v1beta"},
    )
    from google.genai import errors as genai_errors

    with pytest.raises(genai_errors.ClientError) as info:
        client.models.generate_content(
            model="gemini-2.5-flash",
            contents=[
                types.Part.from_bytes(data=b"<html>not an image</html>", mime_type="image/png")
            ],
        )
    assert info.value.code == 400


# --------------------------------------------------------------------------- Cencori


def test_cencori_sdk_image_is_upgraded_and_named(sandbox) -> None:
    """cencori's SDK passes content parts through; the gateway upgrades a text model."""
    import cencori

    client = cencori.Cencori(api_key="csk_sandbox_img_Ab12", base_url=sandbox.url)
    data = png(64, 48)
    r = client.ai.chat(messages=image_message(data), model="gpt-3.5-turbo")
    assert r.model == "gpt-4o-mini"
    assert described(data) in r.content


def test_the_counting_rule_is_the_documented_one() -> None:
    """The sandbox's own counts, on the sizes the providers' docs work through."""
    from cencori_nb.sandbox.images import SeenImage

    def seen(w: int, h: int) -> SeenImage:
        return SeenImage("image/png", w, h, 0, "")

    assert image_input_tokens(seen(1024, 1024), "openai", "gpt-4o") == 765
    assert image_input_tokens(seen(2048, 4096), "openai", "gpt-4o") == 1105
    assert image_input_tokens(seen(1000, 1000), "anthropic", "claude-sonnet-4-5") == 1334
    assert image_input_tokens(seen(300, 300), "google", "gemini-2.5-flash") == 258
    assert image_input_tokens(seen(3008, 2000), "anthropic", "claude-3-5-sonnet") == 1589
