"""The sandbox against the corpus of real responses, field by field.

For every file in ``tests/corpus/`` the sandbox is put in the same situation (the same
model, the same fault, a revoked key, an unknown model, …; the table :data:`TRIGGERS`) and
its answer is compared with the recording:

- the status code;
- every header the recording has (names, case-insensitive), except :data:`IGNORED_HEADERS`;
  and for Cencori, whose recordings carry its full header set, the reverse: the
  conditional headers the sandbox sends (``X-RateLimit-*``, ``Retry-After``,
  ``X-Cencori-Cache``) must be in the recording too;
- the JSON body's structure: the same keys at every level, the same JSON types, and the
  same values except where :data:`NATURAL` says a value naturally differs (ids, text,
  token counts, times, …); lists element by element up to the shorter length (the text
  differs, so a reply's piece count does too);
- for streams, each distinct kind of frame (SSE event name, or the frame's key set) of the
  recording must have a structural twin in the sandbox's stream; an error frame after a
  200 is compared the same way.

A corpus file the sandbox cannot be put in the situation of is listed in
:data:`NOT_SIMULATED` with why; a new corpus file must go in one table or the other. Every
remaining difference is listed in :data:`KNOWN_DIFFERENCES`, with why, and the test fails
if one of them disappears (so the list stays true) or a new one appears.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from cencori_nb.sandbox.server import SandboxServer
from cencori_nb.schemas import as_schema

CORPUS = Path(__file__).parents[1] / "corpus"
FILES = sorted(p.relative_to(CORPUS).as_posix() for p in CORPUS.glob("*/*.json"))
HTTP = httpx2.Client(timeout=60)
LONG_PROMPT = "word " * 128_001  # over gpt-4o's 128k-token context window
LONGER_PROMPT = "word " * 262_145  # over grok-3's 131072 and Claude's 200k
GEMINI_PROMPT = "word " * 1_048_577  # over Gemini 2.5's 1048576

# Values that differ by nature between two answers to two requests, by JSON key: compared
# for type only. Anything else (object names, roles, error types and codes, statuses,
# finish reasons, the model id an alias is answered with, …) must be equal.
NATURAL = frozenset(
    {
        # ids and times: new for every request
        "id",
        "created",
        "request_id",
        "responseId",
        "system_fingerprint",
        # the answer itself and its measure: the sandbox's text is not the model's
        "content",
        "refusal",  # a refusal's words, like an answer's text
        "text",
        "thinking",
        "delta",
        "message",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "reasoning_tokens",
        "cached_tokens",
        "input_tokens",
        "output_tokens",
        "promptTokenCount",
        "candidatesTokenCount",
        "thoughtsTokenCount",
        "totalTokenCount",
        "tokenCount",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "reasoning_content",
        "prompt_cache_hit_tokens",
        "prompt_cache_miss_tokens",
        "text_tokens",
        "image_tokens",
        "audio_tokens",
        "ephemeral_5m_input_tokens",
        "ephemeral_1h_input_tokens",
        "queue_time",
        "prompt_time",
        "completion_time",
        "total_time",
        # money and waits: depend on the tokens and on the moment
        # stream padding against length side channels (OpenAI "obfuscation", Mistral "p")
        "obfuscation",
        "p",
        "cost_usd",
        "cost",
        "balance",
        "retry_after_ms",
        "retry_after",
        "retryDelay",
        "current",
        "cap",
        # which recorded prompt hit a limit or cut a stream is the recording's, not a format
        "stop_reason",
        "finish_reason",
        "finishReason",
        "native_finish_reason",
    }
)

# Headers a recording may carry that are about the recording's transport or account, not
# the format the toolkit reads: not required of the sandbox.
IGNORED_HEADERS = frozenset(
    {
        "vary",
        "cache-control",
        "access-control-allow-origin",
        "access-control-expose-headers",
        "server-timing",  # Google's timing line (the sandbox sends one, not compared)
        "mistral-correlation-id",  # Mistral's trace id (the toolkit reads none)
        # browser-facing and download headers: nothing an API client reads
        "content-security-policy",
        "referrer-policy",
        "access-control-allow-credentials",
        "content-disposition",
    }
)
# Cencori's recordings carry the gateway's whole header set (built from its source): these
# conditional headers must not appear in the sandbox's answer unless the recording has them.
CENCORI_CONDITIONAL = (
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "retry-after",
    "x-cencori-cache",
    "x-model-upgraded",
    "x-model-original",
)

DOORS = {
    "openai": "/openai/v1/chat/completions",
    "groq": "/groq/v1/chat/completions",
    "local": "/local/v1/chat/completions",
    "mistral": "/mistral/v1/chat/completions",
    "xai": "/xai/v1/chat/completions",
    "deepseek": "/deepseek/v1/chat/completions",
    "openrouter": "/openrouter/v1/chat/completions",
    "anthropic": "/anthropic/v1/messages",
    "cencori": "/api/ai/chat",
}
KEYS = {
    "google": "AIza-fidelity-key-0000",
    "anthropic": "sk-ant-fidelity-0000",
    "cencori": "csk_fidelity_key_0000",
}

# corpus file -> how to put the sandbox in the same situation:
#   fault: X-Sandbox-Fault; key: "revoked" | "missing"; model/prompt/stream: the request;
#   balance: the gateway wallet before the request
TRIGGERS: dict[str, dict[str, Any]] = {
    "anthropic/error_400_invalid_request.json": {"prompt": LONGER_PROMPT},
    "anthropic/error_400_credit_balance_too_low.json": {"fault": "402"},
    "anthropic/error_401_invalid_x_api_key.json": {"key": "revoked"},
    "anthropic/error_404_model_not_found.json": {},  # its model id has a trailing space
    "anthropic/error_429_spend_limit_should_retry_false.json": {"fault": "402"},
    "anthropic/error_500_api_error.json": {"fault": "500"},
    "anthropic/messages_sonnet45_cache_write_and_read.json": {},
    "deepseek/chat_reasoner_reasoning_content.json": {},
    "deepseek/error_402_insufficient_balance.json": {"fault": "402"},
    "google/error_403_key_reported_leaked.json": {"fault": "403"},
    "google/error_503_high_demand.json": {"fault": "503"},
    "google/error_503_overloaded.json": {"fault": "503"},
    "google/stream_15flash_usage_every_frame.json": {},
    "google/stream_25flash_one_frame.json": {},
    "groq/error_404_model_not_found.json": {},
    "groq/error_429_tokens_per_minute.json": {"fault": "429"},
    "local/error_404_model_not_found.json": {"model": "llama-does-not-exist"},
    "local/stream_ollama_qwen_one_chunk.json": {},
    "mistral/chat_magistral_small_high_thinking_list.json": {},
    "mistral/chat_magistral_small_reasoning_omitted.json": {},
    "mistral/stream_magistral_small.json": {},
    "openai/stream_gpt4omini_include_usage.json": {"include_usage": True},
    "mistral/chat_large_basic.json": {},
    "mistral/error_401_detail_unauthorized.json": {"key": "revoked"},
    "mistral/error_401_message_unauthorized.json": {"key": "revoked"},
    "openai/chat_prompt_cache_hit.json": {"model": "gpt-5"},  # gpt-5.6-sol: not priced
    "openai/error_404_model_not_found.json": {"model": "gpt-does-not-exist"},
    "openai/error_500_server_error.json": {"fault": "500"},
    "openrouter/chat_gemini_flash_lite.json": {},
    "openrouter/error_402_insufficient_credits.json": {"fault": "402"},
    "xai/chat_grok4_reasoning_beside_completion.json": {},
    "xai/error_400_context_length.json": {"prompt": LONGER_PROMPT},
    "xai/error_400_incorrect_api_key.json": {"key": "revoked"},
    "anthropic/error_529_overloaded.json": {"fault": "529"},
    "anthropic/messages_opus_basic.json": {},
    "anthropic/stream_error_overloaded_after_200.json": {"fault": "stream-error"},
    "anthropic/stream_hello_docs.json": {},
    "anthropic/stream_sonnet46_cache_write_1h.json": {},
    "cencori/native_200_chat.json": {"temperature": 0},
    "cencori/native_200_stream.json": {},
    "cencori/native_200_stream_blocked.json": {"fault": "stream-error"},
    "cencori/native_400_provider_invalid_request.json": {"prompt": LONG_PROMPT},
    "cencori/native_401_invalid_api_key.json": {"key": "revoked"},
    "cencori/native_401_missing_api_key.json": {"key": "missing"},
    "cencori/native_402_spend_cap_reached.json": {"fault": "402"},
    "cencori/native_403_credit_balance_exhausted.json": {"balance": "0"},
    "cencori/native_404_provider_model_not_found.json": {"model": "gpt-does-not-exist"},
    "cencori/native_429_rate_limit_exceeded.json": {"fault": "429"},
    "cencori/native_502_provider_error.json": {"model": "mystery-model"},
    "cencori/native_503_pricing_unavailable.json": {"model": "qwen-max"},
    "cencori/native_503_provider_unavailable.json": {"fault": "503"},
    "google/error_400_api_key_invalid.json": {"key": "revoked"},
    "google/error_400_api_key_not_found.json": {"key": "revoked"},
    "google/error_400_api_key_expired.json": {"key": "revoked"},
    "google/error_429_retryinfo.json": {"fault": "429"},
    "google/generate_25pro_thinking.json": {},
    "google/error_400_input_token_count.json": {"prompt": GEMINI_PROMPT},
    "google/generate_25pro_max_tokens_thinking_empty.json": {"max_tokens": 5},
    "anthropic/error_400_prompt_too_long.json": {"prompt": LONGER_PROMPT},
    "google/generate_blocked_prompt_prohibited_content.json": {"fault": "prompt-blocked"},
    "google/stream_blocked_prompt_prohibited_content.json": {"fault": "prompt-blocked"},
    "google/generate_25flash_safety_stop.json": {"fault": "content-filter"},
    "groq/chat_llama33_basic.json": {},
    "mistral/chat_magistral_thinking_list_content.json": {},
    "openai/chat_gpt4o_basic.json": {},
    "openai/chat_o3mini_reasoning.json": {},
    "openai/chat_content_filter_empty.json": {"fault": "content-filter"},
    "openai/error_401_invalid_api_key.json": {"key": "revoked"},
    "openai/error_400_invalid_prompt.json": {"fault": "prompt-blocked"},
    "openai/error_429_insufficient_quota.json": {"fault": "402"},
    "openai/error_429_insufficient_quota_code_null.json": {"fault": "402"},
    "openrouter/stream_error_in_200.json": {"fault": "stream-error"},
    # structured output (issue 15): the recorded schema, sent in the provider's native form
    "openai/structured_parse_location.json": {"schema": True},
    "openai/structured_refusal.json": {"schema": True, "fault": "refusal"},
    "openai/structured_length_cut.json": {"schema": True, "max_tokens": 1},
    "openai/stream_structured_refusal.json": {
        "schema": True,
        "fault": "refusal",
        "include_usage": True,
    },
    "anthropic/structured_output_config.json": {"schema": True},
    "google/structured_native_output.json": {"schema": True},
    # images in prompts (issue 15.2): a 3008 x 2000 PNG, as in the recordings, in each
    # provider's own part shape
    "openai/chat_gpt4o_image_input.json": {"image": True},
    "anthropic/messages_sonnet35_image_input.json": {"image": True},
    "google/generate_20flash_image_input.json": {"image": True},
}

# corpus file -> why the sandbox has no way to produce it
NOT_SIMULATED: dict[str, str] = {
    "cencori/native_401_provider_auth_error.json": "Cencori's own upstream key being rejected "
    "is a gateway-side failure no request can cause; the sandbox has no fault for it",
    "cencori/v1_401_provider_auth_error.json": "the same failure on the /v1 door",
    "cencori/native_403_security_violation.json": "the gateway's security filter "
    "(PII/jailbreak rules) is not simulated",
    "cencori/native_429_provider_rate_limited.json": "an upstream provider's 429 seen through "
    "the gateway; the sandbox's 429 fault is the gateway's own project limit "
    "(rate_limit_exceeded)",
}

# (corpus file, where) -> why the sandbox still differs there ("place: …" stands for any
# value difference at that place). The test fails when an entry no longer matches a
# difference (remove it) or a difference is not listed (fix it, or list it with why).
_WHY_DOCS = (
    "Anthropic's streaming docs example (2024) predates the cache fields the API "
    "now sends in usage; the sandbox follows the newer recording "
    "(messages_opus_basic, which has them)"
)
_WHY_DELTA = (
    "the same docs example's message_delta has output_tokens only; the API now "
    "repeats the input and cache counts there"
)
_WHY_REASONING = (
    "the recorded model (MiniMax M2) is a reasoning model, whose deltas carry "
    "reasoning and reasoning_details; the sandbox's models do not reason"
)

_WHY_REQUEST_ID = (
    "Anthropic puts request_id in some error bodies (401, 500, 529 recordings) "
    "and not in others; the sandbox always sends it"
)
_WHY_SPEND_LIMIT = (
    "the recording is a workspace spend limit (429 billing_error with "
    "x-should-retry: false); the sandbox's 402 fault is an account without credit, "
    "which Anthropic answers with a 400 invalid_request_error "
    "(error_400_credit_balance_too_low)"
)
_WHY_GEO = (
    "usage.inference_geo is in the newest recording (Sonnet 4.5) only; the sandbox "
    "follows the older ones (Opus), which lack it"
)
_WHY_GEMINI_15 = (
    "the recording is Gemini 1.5 Flash (2024): frames then had no responseId "
    "or candidate index, usage before the last frame had no candidatesTokenCount "
    "and the last had candidatesTokensDetails; the sandbox follows the 2.5 "
    "recordings"
)
_WHY_GROQ_TPM = (
    "which limit was hit is the recording's: tokens per minute there, requests "
    "per minute for the sandbox's 429 fault"
)
_WHY_MISTRAL_USAGE = (
    "Mistral's newer answers add usage.prompt_tokens_details; the sandbox "
    "follows the older Magistral recording, which has none"
)
_WHY_MISTRAL_401 = (
    "Mistral's 401 came as {detail} in the older recording and as {message, "
    "request_id} in the newer; the sandbox sends the newer"
)
_WHY_GPT56 = (
    "the recorded model (gpt-5.6-sol) has no price in the catalogue, so the sandbox "
    "answers gpt-5 instead; its newer usage also reports cache_write_tokens, and it "
    "leaves out the null logprobs (see chat_o3mini_reasoning)"
)
_WHY_OPENROUTER_USAGE = (
    "OpenRouter's 2025 non-streamed recording has a bare usage; its newer "
    "stream recording (stream_error_in_200) has cost, is_byok, "
    "cost_details and audio_tokens, which the sandbox sends everywhere"
)
_WHY_XAI_TEXT = (
    'xAI\'s error text is in its "error" field, compared as a value there: the '
    "token count and the key hint naturally differ"
)

_WHY_MAGISTRAL_PLAIN = (
    "Magistral answers with a plain string when its reasoning is "
    "omitted, and this newer recording's usage has prompt_tokens_details and "
    "service_tier; the sandbox always sends the thinking list and the older "
    "bare usage"
)
_WHY_MISTRAL_STREAM = (
    'Mistral leaves the "p" padding out of the first (role) chunk and '
    "sends the last text with the usage in one chunk; the sandbox pads every "
    "chunk and puts the usage on a separate finish chunk"
)

_WHY_SERVICE_TIER = (
    "Gemini answers recorded in 2026 (vercel/ai fixtures) carry usageMetadata.serviceTier "
    "'standard'; the 2025 recordings the sandbox's usage follows (pydantic-ai cassettes) do "
    "not. The toolkit reads no service tier"
)

KNOWN_DIFFERENCES: dict[tuple[str, str], str] = {
    (
        "google/generate_blocked_prompt_prohibited_content.json",
        "body.usageMetadata.serviceTier: missing",
    ): _WHY_SERVICE_TIER,
    (
        "google/stream_blocked_prompt_prohibited_content.json",
        "frame[0].usageMetadata.serviceTier: missing",
    ): _WHY_SERVICE_TIER,
    (
        "google/generate_25pro_max_tokens_thinking_empty.json",
        "body.usageMetadata.serviceTier: missing",
    ): _WHY_SERVICE_TIER,
    (
        "anthropic/stream_hello_docs.json",
        "frame[0].message.usage.cache_creation_input_tokens: extra",
    ): _WHY_DOCS,
    (
        "anthropic/stream_hello_docs.json",
        "frame[0].message.usage.cache_read_input_tokens: extra",
    ): _WHY_DOCS,
    ("anthropic/stream_hello_docs.json", "frame[0].message.usage.cache_creation: extra"): _WHY_DOCS,
    ("anthropic/stream_hello_docs.json", "frame[0].message.usage.service_tier: extra"): _WHY_DOCS,
    ("anthropic/stream_hello_docs.json", "frame[6].usage.input_tokens: extra"): _WHY_DELTA,
    (
        "anthropic/stream_hello_docs.json",
        "frame[6].usage.cache_creation_input_tokens: extra",
    ): _WHY_DELTA,
    (
        "anthropic/stream_hello_docs.json",
        "frame[6].usage.cache_read_input_tokens: extra",
    ): _WHY_DELTA,
    (
        "cencori/native_200_stream_blocked.json",
        "frame[1].error: 'Response blocked' vs 'Provider stream failed [cencori-nb sandbox]'",
    ): (
        "the recording is the security filter blocking a reply; the sandbox's stream-error fault "
        "is a provider failing mid-stream, which the engine reports on the same {error} line with"
        " its own message"
    ),
    ("google/error_429_retryinfo.json", "body.error.details[QuotaFailure]: extra"): (
        "the reporter abridged the recording to its RetryInfo; other public reports of the same "
        "429 carry QuotaFailure, Help and RetryInfo, which the sandbox sends"
    ),
    (
        "google/error_429_retryinfo.json",
        "body.error.details[Help]: extra",
    ): "as above: Help is in the full answer, not in the abridged recording",
    ("openai/chat_o3mini_reasoning.json", "body.choices[0].logprobs: extra"): (
        "OpenAI's newer answers (this 2026 recording) leave out the null logprobs that older ones"
        " (chat_gpt4o_basic, 2025) carry; the sandbox keeps it, so clients are tested against the"
        " field being present"
    ),
    ("openai/error_429_insufficient_quota_code_null.json", "body.error.code: type null vs str"): (
        "the older recording has code null, the newer one (error_429_insufficient_quota) "
        "'insufficient_quota'; the sandbox sends the newer"
    ),
    ("openrouter/stream_error_in_200.json", "frame[3].error.code: 400 vs 502"): (
        "the code is the upstream failure's HTTP status: the recording hit a token limit (400), "
        "the sandbox's stream-error fault is an upstream failure (502)"
    ),
    (
        "openrouter/stream_error_in_200.json",
        "frame[0].choices[0].delta.reasoning: missing",
    ): _WHY_REASONING,
    (
        "openrouter/stream_error_in_200.json",
        "frame[0].choices[0].delta.reasoning_details: missing",
    ): _WHY_REASONING,
    (
        "openrouter/stream_error_in_200.json",
        "frame[1].choices[0].delta.reasoning: missing",
    ): _WHY_REASONING,
    (
        "openrouter/stream_error_in_200.json",
        "frame[1].choices[0].delta.reasoning_details: missing",
    ): _WHY_REASONING,
    (
        "openrouter/stream_error_in_200.json",
        "frame[2].choices[0].delta.reasoning: missing",
    ): _WHY_REASONING,
    (
        "openrouter/stream_error_in_200.json",
        "frame[2].choices[0].delta.reasoning_details: missing",
    ): _WHY_REASONING,
    ("anthropic/error_404_model_not_found.json", "body.request_id: extra"): _WHY_REQUEST_ID,
    (
        "anthropic/error_429_spend_limit_should_retry_false.json",
        "status: 429 vs 400",
    ): _WHY_SPEND_LIMIT,
    (
        "anthropic/error_429_spend_limit_should_retry_false.json",
        "body.error.type: 'billing_error' vs 'invalid_request_error'",
    ): _WHY_SPEND_LIMIT,
    ("anthropic/error_400_credit_balance_too_low.json", "body.request_id: extra"): (
        "the published body has no request_id (the SDK printed the body without it), other "
        "public quotes of the same 400 carry one ('req_011CZuavCSeNQTJad3jfHbUj'); the "
        "sandbox always sends it"
    ),
    (
        "anthropic/error_429_spend_limit_should_retry_false.json",
        "header x-should-retry: missing",
    ): _WHY_SPEND_LIMIT,
    (
        "anthropic/error_429_spend_limit_should_retry_false.json",
        "body.request_id: extra",
    ): _WHY_SPEND_LIMIT,
    (
        "anthropic/messages_sonnet45_cache_write_and_read.json",
        "body.usage.inference_geo: missing",
    ): _WHY_GEO,
    ("google/stream_15flash_usage_every_frame.json", "frame[0].responseId: extra"): _WHY_GEMINI_15,
    (
        "google/stream_15flash_usage_every_frame.json",
        "frame[0].candidates[0].index: extra",
    ): _WHY_GEMINI_15,
    (
        "google/stream_15flash_usage_every_frame.json",
        "frame[0].usageMetadata.candidatesTokenCount: extra",
    ): _WHY_GEMINI_15,
    ("google/stream_15flash_usage_every_frame.json", "frame[1].responseId: extra"): _WHY_GEMINI_15,
    (
        "google/stream_15flash_usage_every_frame.json",
        "frame[1].candidates[0].index: extra",
    ): _WHY_GEMINI_15,
    (
        "google/stream_15flash_usage_every_frame.json",
        "frame[1].usageMetadata.candidatesTokensDetails: missing",
    ): _WHY_GEMINI_15,
    (
        "groq/error_429_tokens_per_minute.json",
        "body.error.type: 'tokens' vs 'requests'",
    ): _WHY_GROQ_TPM,
    (
        "mistral/chat_large_basic.json",
        "body.usage.prompt_tokens_details: missing",
    ): _WHY_MISTRAL_USAGE,
    ("mistral/error_401_detail_unauthorized.json", "body.detail: missing"): _WHY_MISTRAL_401,
    ("mistral/error_401_detail_unauthorized.json", "body.message: extra"): _WHY_MISTRAL_401,
    ("mistral/error_401_detail_unauthorized.json", "body.request_id: extra"): _WHY_MISTRAL_401,
    ("openai/chat_prompt_cache_hit.json", "body.choices[0].logprobs: extra"): _WHY_GPT56,
    (
        "openai/chat_prompt_cache_hit.json",
        "body.model: 'gpt-5.6-sol' vs 'gpt-5-2025-08-07'",
    ): _WHY_GPT56,
    (
        "openai/chat_prompt_cache_hit.json",
        "body.usage.prompt_tokens_details.cache_write_tokens: missing",
    ): _WHY_GPT56,
    ("openrouter/chat_gemini_flash_lite.json", "body.usage.cost: extra"): _WHY_OPENROUTER_USAGE,
    ("openrouter/chat_gemini_flash_lite.json", "body.usage.is_byok: extra"): _WHY_OPENROUTER_USAGE,
    (
        "openrouter/chat_gemini_flash_lite.json",
        "body.usage.cost_details: extra",
    ): _WHY_OPENROUTER_USAGE,
    (
        "openrouter/chat_gemini_flash_lite.json",
        "body.usage.prompt_tokens_details.audio_tokens: extra",
    ): _WHY_OPENROUTER_USAGE,
    ("xai/error_400_context_length.json", "body.error: …"): _WHY_XAI_TEXT,
    ("xai/error_400_incorrect_api_key.json", "body.error: …"): _WHY_XAI_TEXT,
    (
        "mistral/chat_magistral_small_reasoning_omitted.json",
        "body.usage.prompt_tokens_details: missing",
    ): _WHY_MAGISTRAL_PLAIN,
    (
        "mistral/chat_magistral_small_reasoning_omitted.json",
        "body.usage.service_tier: missing",
    ): _WHY_MAGISTRAL_PLAIN,
    (
        "mistral/chat_magistral_small_reasoning_omitted.json",
        "body.choices[0].message.content: type str vs list",
    ): _WHY_MAGISTRAL_PLAIN,
    ("mistral/stream_magistral_small.json", "frame[0].p: extra"): _WHY_MISTRAL_STREAM,
    ("mistral/stream_magistral_small.json", "frame[3].usage: missing"): _WHY_MISTRAL_STREAM,
}

_WHY_2024_CHUNKS = (
    "recorded in 2024: OpenAI's chunks then had no service_tier, no obfuscation padding "
    "and no per-chunk usage: null; the sandbox follows the 2025 recording "
    "(stream_gpt4omini_include_usage)"
)
_WHY_2024_BODY = (
    "recorded in 2024 (openai-python's parse tests): answers then had no service_tier, no "
    "message.annotations, no prompt_tokens_details and only reasoning_tokens in "
    "completion_tokens_details; the sandbox follows the 2025 recordings"
)
KNOWN_DIFFERENCES.update(
    {
        (f"openai/{name}.json", where): _WHY_2024_BODY
        for name in ("structured_parse_location", "structured_refusal", "structured_length_cut")
        for where in (
            "body.service_tier: extra",
            "body.choices[0].message.annotations: extra",
            "body.usage.prompt_tokens_details: extra",
            "body.usage.completion_tokens_details.audio_tokens: extra",
            "body.usage.completion_tokens_details.accepted_prediction_tokens: extra",
            "body.usage.completion_tokens_details.rejected_prediction_tokens: extra",
        )
    }
)
_WHY_GEMINI_20 = (
    "the recording is Gemini 2.0 Flash, which sent avgLogprobs and candidatesTokensDetails "
    "and no candidate index; the sandbox follows the 2.5 recordings"
)
KNOWN_DIFFERENCES.update(
    {
        ("openai/stream_structured_refusal.json", f"frame[{i}].{key}: extra"): _WHY_2024_CHUNKS
        for i in range(12)
        for key in ("service_tier", "obfuscation", "usage")
    }
)
KNOWN_DIFFERENCES.update(
    {
        ("openai/stream_structured_refusal.json", "frame[12].service_tier: extra"): (
            _WHY_2024_CHUNKS
        ),
        ("openai/stream_structured_refusal.json", "frame[12].obfuscation: extra"): (
            _WHY_2024_CHUNKS
        ),
        ("openai/stream_structured_refusal.json", "frame[12].choices: 0 items vs 1"): (
            _WHY_2024_CHUNKS
        ),
        ("openai/stream_structured_refusal.json", "frame[12].usage: type dict vs null"): (
            _WHY_2024_CHUNKS
        ),
        ("anthropic/structured_output_config.json", "body.usage.inference_geo: missing"): (
            _WHY_GEO
        ),
        ("google/structured_native_output.json", "body.candidates[0].avgLogprobs: missing"): (
            _WHY_GEMINI_20
        ),
        ("google/structured_native_output.json", "body.candidates[0].index: extra"): (
            _WHY_GEMINI_20
        ),
        (
            "google/structured_native_output.json",
            "body.usageMetadata.candidatesTokensDetails: missing",
        ): _WHY_GEMINI_20,
    }
)


_WHY_SONNET46 = (
    "the newest Anthropic recording (October 2026, claude-sonnet-4-6) adds container, "
    "stop_details and diagnostics (all null) to message_start and message_delta, "
    "usage.inference_geo, and a traceresponse header; the sandbox follows the older "
    "recordings, which lack them, and the toolkit reads none of them. What this recording "
    "is in the corpus for, the 1-hour cache-write split, is read by the adapter "
    "(tests/providers/test_corpus_replay.py prices it); the sandbox never caches"
)
KNOWN_DIFFERENCES.update(
    {
        ("anthropic/stream_sonnet46_cache_write_1h.json", where): _WHY_SONNET46
        for where in (
            "header traceresponse: missing",
            "frame[0].message.container: missing",
            "frame[0].message.stop_details: missing",
            "frame[0].message.diagnostics: missing",
            "frame[0].message.usage.inference_geo: missing",
            "frame[5].delta.stop_details: missing",
            "frame[5].delta.container: missing",
        )
    }
)


_WHY_EARLY_2025 = (
    "recorded in February 2025 (pydantic-ai's image tests): answers then had no "
    "message.annotations (OpenAI) and no usage.cache_creation or service_tier (Anthropic); "
    "the sandbox follows the newer recordings"
)
KNOWN_DIFFERENCES.update(
    {
        ("openai/chat_gpt4o_image_input.json", "body.choices[0].message.annotations: extra"): (
            _WHY_EARLY_2025
        ),
        ("anthropic/messages_sonnet35_image_input.json", "body.usage.cache_creation: extra"): (
            _WHY_EARLY_2025
        ),
        ("anthropic/messages_sonnet35_image_input.json", "body.usage.service_tier: extra"): (
            _WHY_EARLY_2025
        ),
        ("google/generate_20flash_image_input.json", "body.candidates[0].avgLogprobs: missing"): (
            _WHY_GEMINI_20
        ),
        ("google/generate_20flash_image_input.json", "body.candidates[0].index: extra"): (
            _WHY_GEMINI_20
        ),
        (
            "google/generate_20flash_image_input.json",
            "body.usageMetadata.candidatesTokensDetails: missing",
        ): _WHY_GEMINI_20,
    }
)


# --------------------------------------------------------------------------- the diff


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__


def _typed(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "@type" in i for i in items)


def diff(recorded: Any, ours: Any, where: str = "body") -> list[str]:
    """Structural and value differences of ``ours`` against ``recorded`` (see module doc)."""
    key = where.rsplit(".", 1)[-1].split("[", 1)[0]
    if _kind(recorded) != _kind(ours):
        if key in NATURAL and None in (recorded, ours):
            return []  # a natural value may be null in one answer (a finish reason mid-stream)
        return [f"{where}: type {_kind(recorded)} vs {_kind(ours)}"]
    if isinstance(recorded, dict):
        out = [f"{where}.{k}: missing" for k in recorded if k not in ours]
        out += [f"{where}.{k}: extra" for k in ours if k not in recorded]
        for k in recorded:
            if k in ours:
                out += diff(recorded[k], ours[k], f"{where}.{k}")
        return out
    if isinstance(recorded, list) and _typed(recorded) and _typed(ours):
        # Google's error details are a set of typed messages: matched by "@type"
        by_type = {item["@type"]: item for item in ours}
        out = []
        for item in recorded:
            name = item["@type"].rsplit(".", 1)[-1]
            if item["@type"] not in by_type:
                out.append(f"{where}[{name}]: missing")
            else:
                out += diff(item, by_type[item["@type"]], f"{where}[{name}]")
        recorded_types = {item["@type"] for item in recorded}
        out += [
            f"{where}[{t.rsplit('.', 1)[-1]}]: extra" for t in by_type if t not in recorded_types
        ]
        return out
    if isinstance(recorded, list):
        out = []
        for i, (a, b) in enumerate(zip(recorded, ours, strict=False)):
            out += diff(a, b, f"{where}[{i}]")
        if bool(recorded) != bool(ours):
            out.append(f"{where}: {len(recorded)} items vs {len(ours)}")
        return out
    if key in NATURAL or recorded == ours:
        return []
    return [f"{where}: {recorded!r} vs {ours!r}"]


def frames(text: str) -> list[tuple[str | None, Any]]:
    """``(event name, parsed data)`` of each SSE frame (comments and [DONE] kept as text)."""
    out: list[tuple[str | None, Any]] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        event, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if not data:
            continue
        raw = "\n".join(data)
        try:
            out.append((event, json.loads(raw)))
        except ValueError:
            out.append((event, raw))
    return out


def _shape(frame: tuple[str | None, Any]) -> tuple[Any, ...]:
    event, data = frame
    if isinstance(data, dict):
        return (
            event,
            data.get("type"),
            "error" in data,
            tuple(sorted(data)) if event is None else (),
        )
    return (event, data)


def stream_diff(recorded: str, ours: str) -> list[str]:
    """Each kind of recorded frame must have a structural twin among ours."""
    mine = frames(ours)
    out = []
    for i, frame in enumerate(frames(recorded)):
        event, data = frame
        twins = [
            f
            for f in mine
            if f[0] == event
            and (
                not isinstance(data, dict)
                or (
                    isinstance(f[1], dict)
                    and (f[1].get("type") == data.get("type"))
                    and ("error" in f[1]) == ("error" in data)
                )
            )
        ]
        if not twins:
            out.append(f"frame[{i}] ({event or 'data'} {str(data)[:60]}): no such frame")
            continue
        best = min((diff(data, t[1], f"frame[{i}]") for t in twins), key=len)
        out += best
    return out


# --------------------------------------------------------------------------- requests


_SERVER: list[SandboxServer] = []


@pytest.fixture(scope="module", autouse=True)
def _one_server() -> Iterator[None]:
    sandbox = SandboxServer()
    sandbox.start_in_thread()
    _SERVER.append(sandbox)
    yield
    sandbox.stop()
    _SERVER.clear()


def ask(name: str) -> httpx2.Response:
    """Send the sandbox the request that puts it where the recording ``name`` was."""
    sandbox = _SERVER[0]
    sandbox.reset()
    record = json.loads((CORPUS / name).read_text())
    trigger = TRIGGERS[name]
    provider = record["provider"]
    model = trigger.get("model") or record["request"].get("model")
    stream = bool(record["request"].get("stream")) or trigger.get("fault") == "stream-error"
    prompt = trigger.get("prompt", "What is the capital of France?")
    key = KEYS.get(provider, "sk-fidelity-key-0000")
    if trigger.get("key") == "revoked":
        key = key.replace("fidelity", "revoked")
    if "balance" in trigger:
        sandbox.set_balance(trigger["balance"])
    headers: dict[str, str] = {}
    if trigger.get("fault"):
        headers["X-Sandbox-Fault"] = trigger["fault"]
    schema = as_schema(record["request"]["schema"]) if trigger.get("schema") else None
    image = _kiwi_sized_png() if trigger.get("image") else None
    if provider == "google":
        verb = "streamGenerateContent?alt=sse" if stream else "generateContent"
        path = f"/google/v1beta/models/{model}:{verb}"
        body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
        if image is not None:
            body["contents"][0]["parts"].append(
                {"inlineData": {"mimeType": "image/png", "data": image}}
            )
        if schema is not None:
            body["generationConfig"] = {
                "responseMimeType": "application/json",
                "responseJsonSchema": schema.gemini_json_schema(),
            }
        if trigger.get("max_tokens"):
            body.setdefault("generationConfig", {})["maxOutputTokens"] = trigger["max_tokens"]
        if trigger.get("key") != "missing":
            headers["x-goog-api-key"] = key
    elif provider == "anthropic":
        path = DOORS[provider]
        body = {
            "model": model,
            "max_tokens": 200,
            "stream": stream,
            "messages": [{"role": "user", "content": prompt}],
        }
        if image is not None:
            body["messages"][0]["content"] = [
                {"type": "text", "text": prompt},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": image},
                },
            ]
        if schema is not None:
            body["output_config"] = {
                "format": {"type": "json_schema", "schema": schema.anthropic_json_schema()}
            }
        headers["anthropic-version"] = "2023-06-01"
        if trigger.get("key") != "missing":
            headers["x-api-key"] = key
    else:
        path = DOORS[provider]
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream}
        if image is not None:
            body["messages"][0]["content"] = [
                {"type": "text", "text": prompt},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + image}},
            ]
        if "temperature" in trigger:
            body["temperature"] = trigger["temperature"]
        if trigger.get("include_usage"):
            body["stream_options"] = {"include_usage": True}
        if trigger.get("max_tokens"):
            body["max_completion_tokens"] = trigger["max_tokens"]
        if schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": schema.name,
                    "schema": schema.strict_json_schema(),
                    "strict": True,
                },
            }
        if trigger.get("key") != "missing":
            if provider == "cencori":
                headers["CENCORI_API_KEY"] = key
            else:
                headers["Authorization"] = f"Bearer {key}"
    return HTTP.post(sandbox.url + path, json=body, headers=headers)  # type: ignore[operator]


def _kiwi_sized_png() -> str:
    """A 3008 × 2000 PNG, the size of the image in the recordings, as base64."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (3008, 2000), (120, 170, 60)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def differences(name: str) -> list[str]:
    """Every way the sandbox's answer differs from the recording ``name``."""
    record = json.loads((CORPUS / name).read_text())
    response = ask(name)
    out = []
    if response.status_code != record["status"]:
        out.append(f"status: {record['status']} vs {response.status_code}")
    for header in record.get("headers", {}):
        if header.lower() not in IGNORED_HEADERS and header.lower() not in response.headers:
            out.append(f"header {header}: missing")
    if record["provider"] == "cencori":
        recorded = {h.lower() for h in record.get("headers", {})}
        out += [
            f"header {h}: extra"
            for h in CENCORI_CONDITIONAL
            if h in response.headers and h not in recorded
        ]
    if "body_text" in record:
        out += stream_diff(record["body_text"], response.text)
    else:
        out += diff(record["body"], response.json())
    return out


# --------------------------------------------------------------------------- the tests


def test_every_corpus_file_is_simulated_or_says_why_not() -> None:
    assert FILES, "no corpus files found"
    assert not set(TRIGGERS) & set(NOT_SIMULATED)
    assert set(FILES) == set(TRIGGERS) | set(NOT_SIMULATED), (
        "new corpus files need a trigger (or a reason in NOT_SIMULATED): "
        f"{sorted(set(FILES) - set(TRIGGERS) - set(NOT_SIMULATED))}"
    )


def _matches(found: str, listed: str) -> bool:
    """A listed difference ending in "…" stands for every value difference at that place."""
    return found == listed or (listed.endswith("…") and found.startswith(listed[:-1]))


@pytest.mark.parametrize("name", sorted(TRIGGERS))
def test_sandbox_matches_the_recording(name: str) -> None:
    found = differences(name)
    listed = {where for (file, where) in KNOWN_DIFFERENCES if file == name}
    unlisted = [d for d in found if not any(_matches(d, e) for e in listed)]
    gone = sorted(e for e in listed if not any(_matches(d, e) for d in found))
    assert not unlisted, f"{name}: the sandbox differs from the recording:\n" + "\n".join(unlisted)
    assert not gone, f"{name}: listed differences that no longer occur: {gone}"
