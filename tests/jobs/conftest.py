"""Fixtures for the provider batch jobs: the shared sandbox with the demo BYOK keys stored."""

from __future__ import annotations

import pytest

from cencori_nb import keys
from cencori_nb.egress import DEMO_KEYS


@pytest.fixture
def sbx(sandbox_env):
    """The shared sandbox (reset; CENCORI_NB_SANDBOX set) with OpenAI, Anthropic and Gemini
    BYOK keys stored (their demo keys, sent as they are) and a quick batch delay."""
    for provider in ("openai", "anthropic", "google"):
        keys.set(provider, DEMO_KEYS[provider])
    sandbox_env.batches.configure({"delay_s": 0.2})
    return sandbox_env
