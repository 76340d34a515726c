"""Images in each wire format: our adapters' request bodies against the official SDKs'.

For the same image and text, each SDK's request is captured with an ``httpx2.MockTransport``
(openai, anthropic, google-genai send through httpx2 clients we hand them); our adapter's
request must carry the same messages. A fitted (scaled) image is checked by decoding what
the body carries."""

from __future__ import annotations

import base64
import io
import json
import re
from typing import Any

import httpx2
import pytest

from cencori_nb.images import ImagePart, as_image
from cencori_nb.keystore.secret import Secret
from cencori_nb.providers import get_provider
from cencori_nb.types import ChatRequest, Message

PIL = pytest.importorskip("PIL.Image")

BASE = "http://upstream.test"


def png(width: int, height: int) -> ImagePart:
    buf = io.BytesIO()
    PIL.new("RGB", (width, height), (40, 90, 200)).save(buf, format="PNG")
    return as_image(buf.getvalue())


def _reply(request: httpx2.Request) -> httpx2.Response:
    path = request.url.path
    if path.endswith("/chat/completions"):
        body: dict[str, Any] = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    elif path.endswith("/messages"):
        body = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "ok"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1},
        }
    else:
        body = {
            "candidates": [
                {"content": {"role": "model", "parts": [{"text": "ok"}]}, "finishReason": "STOP"}
            ],
            "usageMetadata": {
                "promptTokenCount": 1,
                "candidatesTokenCount": 1,
                "totalTokenCount": 2,
            },
        }
    return httpx2.Response(200, json=body)


class Captured:
    def __init__(self) -> None:
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        request.read()
        self.requests.append(request)
        return _reply(request)

    def client(self) -> httpx2.Client:
        return httpx2.Client(transport=httpx2.MockTransport(self))

    @property
    def body(self) -> dict[str, Any]:
        return json.loads(self.requests[-1].content)


def openai_sdk_body(text: str, image: ImagePart) -> dict[str, Any]:
    import openai

    cap = Captured()
    client = openai.OpenAI(api_key="sk-test", base_url=f"{BASE}/v1", http_client=cap.client())
    client.chat.completions.create(
        model="gpt-4o",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": text},
                    {"type": "image_url", "image_url": {"url": image.data_url()}},
                ],
            }
        ],
    )
    return cap.body


def anthropic_sdk_body(text: str, image: ImagePart) -> dict[str, Any]:
    import anthropic

    cap = Captured()
    client = anthropic.Anthropic(api_key="sk-ant-test", base_url=BASE, http_client=cap.client())
    client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=1024,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": text},
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": image.mime,
                            "data": image.base64(),
                        },
                    },
                ],
            }
        ],
    )
    return cap.body


def google_sdk_body(text: str, image: ImagePart) -> dict[str, Any]:
    from google import genai
    from google.genai import types

    cap = Captured()
    client = genai.Client(
        api_key="AIza-test",
        http_options=types.HttpOptions(
            base_url=BASE, api_version="v1beta", httpx_client=cap.client()
        ),
    )
    client.models.generate_content(
        model="gemini-2.5-flash",
        contents=[
            types.Content(
                role="user",
                parts=[
                    types.Part(text=text),
                    types.Part.from_bytes(data=image.data, mime_type=image.mime),
                ],
            )
        ],
    )
    return cap.body


def ours(provider: str, request: ChatRequest, model: str) -> dict[str, Any]:
    built = get_provider(provider).build_request(
        request, model=model, api_key=Secret("sk-test-key"), base_url=BASE
    )
    return json.loads(built.content)


def camel(obj: Any) -> Any:
    """Proto-JSON as the Gemini API reads it: names in lowerCamel (it accepts both spellings;
    google-genai sends ``inlineData`` with ``mime_type`` inside it), and bytes fields decoded
    (it accepts both base64 alphabets; google-genai sends the URL-safe one, the REST
    reference's examples the standard one, which we send)."""
    if isinstance(obj, dict):
        out = {
            re.sub(r"_([a-z])", lambda m: m.group(1).upper(), k): camel(v) for k, v in obj.items()
        }
        if "inlineData" in out:
            out["inlineData"]["data"] = base64.urlsafe_b64decode(
                out["inlineData"]["data"].replace("+", "-").replace("/", "_")
            )
        return out
    if isinstance(obj, list):
        return [camel(v) for v in obj]
    return obj


TEXT = "What does this chart show?"


def request_with(image: ImagePart, text: str = TEXT) -> ChatRequest:
    return ChatRequest(messages=(Message.from_parts("user", [text, image]),))


@pytest.mark.parametrize("provider", ["openai", "mistral", "groq", "openrouter"])
def test_openai_family_sends_what_the_openai_sdk_sends(provider: str) -> None:
    image = png(320, 200)
    assert (
        ours(provider, request_with(image), "gpt-4o")["messages"]
        == openai_sdk_body(TEXT, image)["messages"]
    )


def test_anthropic_sends_what_the_anthropic_sdk_sends() -> None:
    image = png(320, 200)
    assert (
        ours("anthropic", request_with(image), "claude-sonnet-4-5")["messages"]
        == anthropic_sdk_body(TEXT, image)["messages"]
    )


def test_google_sends_what_google_genai_sends() -> None:
    image = png(320, 200)
    body = ours("google", request_with(image), "gemini-2.5-flash")
    assert camel(body["contents"]) == camel(google_sdk_body(TEXT, image)["contents"])
    assert "inlineData" in body["contents"][0]["parts"][1]  # the REST reference's spelling


def test_cencori_sends_openai_parts_the_gateway_detects() -> None:
    """Cencori's chat-vision-router.ts detects ``image_url`` parts (OpenAI's shape)."""
    image = png(320, 200)
    body = ours("cencori", request_with(image), "gpt-4o-mini")
    assert body["messages"] == openai_sdk_body(TEXT, image)["messages"]


def _carried(url_or_b64: str) -> tuple[int, int, str]:
    data = base64.b64decode(url_or_b64.split(",", 1)[-1])
    im = PIL.open(io.BytesIO(data))
    return im.width, im.height, PIL.MIME[im.format]


def test_large_images_are_scaled_to_each_providers_bound_in_the_body() -> None:
    """A 3000×1200 chart: OpenAI gets 2048×819, Anthropic and Cencori 1568×627 (the
    strictest rules: the gateway may answer with any provider), Gemini the original."""
    image = png(3000, 1200)
    req = request_with(image)
    openai_url = ours("openai", req, "gpt-4o")["messages"][0]["content"][1]["image_url"]["url"]
    assert _carried(openai_url) == (2048, 819, "image/png")
    source = ours("anthropic", req, "claude-sonnet-4-5")["messages"][0]["content"][1]["source"]
    assert _carried(source["data"]) == (1568, 627, "image/png")
    cencori_url = ours("cencori", req, "gpt-4o")["messages"][0]["content"][1]["image_url"]["url"]
    assert _carried(cencori_url) == (1568, 627, "image/png")
    inline = ours("google", req, "gemini-2.5-flash")["contents"][0]["parts"][1]["inlineData"]
    assert base64.b64decode(inline["data"]) == image.data


def test_text_prompts_keep_their_plain_string_bodies() -> None:
    """No images: ``content`` stays a string (text requests are unchanged)."""
    req = ChatRequest.from_prompt("hello")
    assert ours("openai", req, "gpt-4o")["messages"] == [{"role": "user", "content": "hello"}]
    assert ours("anthropic", req, "claude-sonnet-4-5")["messages"] == [
        {"role": "user", "content": "hello"}
    ]
    assert ours("google", req, "gemini-2.5-flash")["contents"] == [
        {"role": "user", "parts": [{"text": "hello"}]}
    ]


def test_order_is_kept_and_blank_text_is_left_out() -> None:
    """``"Compare {a} with {b}"`` keeps its order; the empty text between images goes."""
    a, b = png(10, 10), png(20, 20)
    req = ChatRequest(messages=(Message.from_parts("user", ["Compare ", a, " ", b, " please"]),))
    content = ours("anthropic", req, "claude-sonnet-4-5")["messages"][0]["content"]
    assert [c["type"] for c in content] == ["text", "image", "image", "text"]
    assert content[0]["text"] == "Compare " and content[3]["text"] == " please"


def test_chat_prompt_forms_with_images() -> None:
    """``["text", fig]`` is one user message; dict messages may carry a content list."""
    image = png(8, 8)
    one = ChatRequest.from_prompt(["Describe", image], system="Be brief")
    assert [m.role for m in one.messages] == ["system", "user"]
    assert one.messages[1].content == "Describe" and one.images == (image,)
    two = ChatRequest.from_prompt(
        [{"role": "user", "content": [{"type": "text", "text": "Hi "}, image.data]}]
    )
    assert two.messages[0].content == "Hi " and two.images[0].sha256 == image.sha256
    plain = ChatRequest.from_prompt([{"role": "user", "content": ["just ", "text"]}])
    assert plain.messages[0] == Message("user", "just text")


def test_cencori_vision_stream_in_openai_chunks_is_read() -> None:
    """Cencori's vision path streams OpenAI chunk lines (chat-vision-router.ts:
    chatStreamChunkShape, chatStreamFinalShape, then [DONE]) with no usage or cost line;
    the native parser reads their text and finish reason, and reports no usage."""
    frames = [
        {
            "id": "chatcmpl-vision-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [
                {"index": 0, "delta": {"content": "A bar chart of totals."}, "finish_reason": None}
            ],
        },
        {
            "id": "chatcmpl-vision-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        },
    ]
    body = "".join(f"data: {json.dumps(f)}\n\n" for f in frames) + "data: [DONE]\n\n"
    response = httpx2.Response(
        200,
        headers={
            "content-type": "text/event-stream",
            "x-model-upgraded": "true",
            "x-model-original": "gpt-3.5-turbo",
        },
        content=body.encode(),
    )
    parser = get_provider("cencori").stream_parser(response)
    from httpx2 import ServerSentEvent

    deltas = [parser.feed(ServerSentEvent(data=json.dumps(f))) for f in frames]
    parser.feed(ServerSentEvent(data="[DONE]"))
    result = parser.result()
    assert deltas == ["A bar chart of totals.", None]
    assert (result.text, result.finish_reason, result.usage) == (
        "A bar chart of totals.",
        "stop",
        None,
    )
    assert (
        parser.done and result.model == "gpt-4o-mini" and result.model_original == "gpt-3.5-turbo"
    )
