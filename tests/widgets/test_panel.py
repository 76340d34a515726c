"""The providers panel, driven in plain Python: set values, click buttons, read the store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import comm
import ipywidgets
import pytest
from comm import DummyComm

from cencori_nb import keys
from cencori_nb.keystore.secret import Secret
from cencori_nb.widgets import setup
from cencori_nb.widgets.controller import (
    DISABLED,
    ENABLED,
    MANAGED,
    NOT_CONFIGURED,
    TEST_MAX_TOKENS,
    ProvidersController,
    provider_rows,
)

CENCORI_KEY = "csk_live_panel_000000Zz99"


class RecordingComm(DummyComm):
    """A comm that keeps every message the kernel would send to the browser."""

    sent: list[dict[str, Any]] = []

    def publish_msg(
        self,
        msg_type: str,
        data: Any = None,
        metadata: Any = None,
        buffers: Any = None,
        **keys: Any,
    ) -> None:
        RecordingComm.sent.append({"type": msg_type, "comm": self.comm_id, "data": data})


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Record the kernel→browser widget messages of the widgets created in this test."""
    RecordingComm.sent = []
    monkeypatch.setattr(comm, "create_comm", lambda *a, **kw: RecordingComm(*a, **kw))
    yield RecordingComm.sent


@pytest.fixture
def panel(wire: list[dict[str, Any]]) -> Any:
    return setup()


def frontend_types(widget: Any, value: str) -> None:
    """Simulate the browser sending a typed value (the real direction of a password)."""
    widget._handle_msg(
        {
            "content": {
                "data": {"method": "update", "state": {"value": value}, "buffer_paths": []}
            },
            "buffers": [],
        }
    )


def all_widget_state() -> str:
    """Every live widget's state, serialised (what a notebook save would embed)."""
    from ipywidgets.widgets.widget import _instances

    states = []
    for widget in list(_instances.values()):
        state, _buffer_paths, buffers = ipywidgets.widgets.widget._remove_buffers(
            widget.get_state()
        )
        states.append(json.dumps(state, default=str))
        states.extend(repr(b) for b in buffers)
    return "\n".join(states)


def badge_of(panel: Any, provider: str) -> str:
    html = panel.badges[provider].value
    for badge in (ENABLED, DISABLED, MANAGED, NOT_CONFIGURED):
        if f">{badge}</span>" in html:
            return badge
    raise AssertionError(html)


def test_initial_badges_not_configured_then_managed(panel: Any) -> None:
    """No keys: every provider "Not configured"; with a Cencori key: "Managed", except the
    local server, which Cencori's gateway cannot reach."""
    assert {badge_of(panel, p) for p in panel.badges} == {NOT_CONFIGURED}
    frontend_types(panel.cencori_key, CENCORI_KEY)
    panel.cencori_save.click()
    assert panel.cencori_key.value == ""
    assert {badge_of(panel, p) for p in panel.badges if p != "local"} == {MANAGED}
    assert badge_of(panel, "local") == NOT_CONFIGURED
    assert "…Zz99" in panel.cencori_hint.value
    assert [s.provider for s in keys.status()] == ["cencori"]


def test_save_stores_key_empties_field_and_shows_hint(
    panel: Any, canary: str, wire: list[dict[str, Any]]
) -> None:
    """Save: key stored encrypted, field emptied at once, badge Enabled, hint = last four."""
    panel.provider_buttons["openai"].click()
    assert panel.dialog.layout.display == ""
    assert "gpt-4o" in panel.model.options
    frontend_types(panel.key, canary)
    panel.model.value = "gpt-4o"
    panel.make_default.value = True
    panel.save_button.click()

    assert panel.key.value == ""
    [row] = [s for s in keys.status() if s.provider == "openai"]
    assert (row.enabled, row.key_hint, row.default_model, row.is_default) == (
        True,
        "…" + canary[-4:],
        "gpt-4o",
        True,
    )
    assert badge_of(panel, "openai") == ENABLED
    assert canary[-4:] in panel.hints["openai"].value
    assert "project default" in panel.hints["openai"].value
    assert "Saved OpenAI key" in panel.status.value

    # The key is in no widget's state, and the browser was told to empty its field.
    assert canary not in all_widget_state()
    assert canary not in json.dumps(wire, default=str)
    key_updates = [
        m["data"]["state"]["value"]
        for m in wire
        if m["comm"] == panel.key.comm.comm_id
        and m["data"].get("method") == "update"
        and "value" in m["data"].get("state", {})
    ]
    assert key_updates[-1] == ""


def test_save_failure_still_empties_field(panel: Any, canary: str) -> None:
    """A rejected key (Cencori keys must start csk_) shows the error; the field is empty."""
    panel.cencori_key.value = canary  # set from the kernel side this time
    panel.cencori_save.click()
    assert panel.cencori_key.value == ""
    assert "csk_" in panel.status.value and "b00020" in panel.status.value
    assert canary not in panel.status.value and canary not in all_widget_state()
    assert keys.status() == []


def test_save_without_key_asks_for_it(panel: Any) -> None:
    panel.select("anthropic")
    panel.save_button.click()
    assert "Enter the Anthropic API key" in panel.status.value
    assert keys.status() == []


def test_change_model_without_retyping_the_key(panel: Any) -> None:
    """With a key stored, Save with an empty field updates the default model only."""
    keys.set("anthropic", "sk-ant-test-00000000Yy88")
    panel.refresh()
    panel.select("anthropic")
    panel.model.value = "claude-sonnet-4-5"
    panel.save_button.click()
    [row] = keys.status()
    assert (row.key_hint, row.default_model) == ("…Yy88", "claude-sonnet-4-5")


def test_disable_enable_remove(panel: Any) -> None:
    """Disable → Disabled (or Managed fallback shown as Disabled); Remove → Not configured."""
    keys.set("openai", "sk-test-00000000000Xx77")
    panel.refresh()
    panel.select("openai")
    assert panel.toggle_button.description == "Disable"
    panel.toggle_button.click()
    assert badge_of(panel, "openai") == DISABLED
    assert [s.enabled for s in keys.status()] == [False]
    assert panel.toggle_button.description == "Enable"
    panel.toggle_button.click()
    assert badge_of(panel, "openai") == ENABLED
    panel.remove_button.click()
    assert badge_of(panel, "openai") == NOT_CONFIGURED
    assert keys.status() == []
    assert panel.remove_button.disabled and panel.test_button.disabled


def test_remove_with_cencori_key_falls_back_to_managed(panel: Any) -> None:
    keys.set_cencori_key(CENCORI_KEY)
    keys.set("groq", "gsk_test_000000000000Ww66")
    panel.refresh()
    assert badge_of(panel, "groq") == ENABLED and badge_of(panel, "openai") == MANAGED
    panel.select("groq")
    panel.toggle_button.click()
    assert badge_of(panel, "groq") == DISABLED
    assert "served through Cencori credits" in panel.hints["groq"].value
    panel.remove_button.click()
    assert badge_of(panel, "groq") == MANAGED
    panel.remove_cencori_key()
    assert badge_of(panel, "groq") == NOT_CONFIGURED


def test_project_selector(panel: Any) -> None:
    """Keys are per project; switching the selector shows that project's badges."""
    keys.set("openai", "sk-test-00000000000Xx77", project="acme")
    panel.close()
    panel = setup()
    assert "acme" in panel.project.options and panel.project.value == "default"
    assert badge_of(panel, "openai") == NOT_CONFIGURED
    panel.project.value = "acme"
    assert badge_of(panel, "openai") == ENABLED
    assert panel.controller.project == "acme"
    assert setup(project="newproj").project.value == "newproj"


def test_credits_section(panel: Any) -> None:
    from cencori_nb import wallet

    wallet.top_up(Decimal("3.00"))
    panel.refresh()
    assert "Balance: <b>$3.00</b>" in panel.credits.value
    assert "Low balance" in panel.credits.value
    assert "Recorded top-ups: $3.00" in panel.credits.value
    wallet.top_up(Decimal("20"))
    panel.refresh()
    assert "Low balance" not in panel.credits.value


def test_test_key_success_and_provider_error(panel: Any, sandbox_env: str, sandbox: Any) -> None:
    """Test key makes one cheap BYOK request; a revoked key shows the provider's error."""
    keys.set("openai", "sk-test-00000000000Xx77")
    panel.refresh()
    panel.select("openai")
    before = sandbox.stats["requests"]
    panel.test_button.click()
    assert sandbox.stats["requests"] == before + 1
    sent = sandbox.stats["recent"][-1]
    body = sent["json"]
    assert body.get("max_completion_tokens", body.get("max_tokens")) == TEST_MAX_TOKENS <= 8
    # in sandbox mode the sandbox gets the demo key, never the stored one (issue 10)
    assert sent["stream"] is False and sent["key"] == Secret("sk-sandbox-demo-openai").hint
    assert "never sent to a sandbox" in panel.status.value  # not "Key works": not tested
    keys.set("openai", "sk-sandbox-demo-openai-revoked")  # the sandbox's revoked demo key
    panel.test_button.click()
    assert "Key test failed" in panel.status.value and "b00020" in panel.status.value


def test_controller_rows_without_widgets() -> None:
    """The controller and the %cencori providers table need no ipywidgets object."""
    keys.set(
        "mistral",
        "test-mistral-key-0000Uu44",
        default_model="mistral-large-latest",
        make_default=True,
    )
    rows = {r.provider: r for r in provider_rows()}
    assert rows["mistral"].badge == ENABLED and rows["mistral"].is_default
    assert rows["mistral"].default_model == "mistral-large-latest"
    assert rows["openai"].badge == NOT_CONFIGURED and rows["openai"].default_model == "gpt-4o-mini"
    ctl = ProvidersController()
    assert ctl.set_enabled("mistral", False) == "Mistral disabled for project default."
    assert ctl.row("mistral").badge == DISABLED
