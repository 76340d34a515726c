"""The providers panel: an ipywidgets view of :class:`ProvidersController`.

Mirrors Cencori's Providers page: a project selector, one row per provider with a badge
(Enabled / Disabled / Managed / Not configured), a dialog per provider (API key, default
model, "Set as project default", Save, Test key, Enable/Disable, Remove), the managed
Cencori project key, and the credit wallet.

Password fields: ipywidgets syncs every trait to the browser and may save it in the
notebook's widget state, so each handler reads a password field's value, wraps it in a
:class:`Secret` and sets the field back to ``""`` *before* doing anything that can fail.
The key is therefore never left in widget state, whatever happens next.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ipywidgets as w
from traitlets import Unicode

from .. import safe_html
from ..errors import CencoriError, user_error
from ..keystore.secret import Secret
from .controller import DISABLED, ENABLED, MANAGED, ProviderRow, ProvidersController

if TYPE_CHECKING:
    from ..wallet import CreditsSummary

__all__ = ["ProvidersPanel", "SecretField", "badge_html", "credits_html"]

_BADGE_STYLE = {
    ENABLED: "background:#e6f4ea;color:#137333",
    DISABLED: "background:#f1f3f4;color:#5f6368",
    MANAGED: "background:#e8f0fe;color:#1a73e8",
}
_DEFAULT_BADGE_STYLE = "background:#fef7e0;color:#b06000"


def badge_html(badge: str) -> str:
    style = _BADGE_STYLE.get(badge, _DEFAULT_BADGE_STYLE)
    return (
        f"<span class='cencori-badge' style='{style};border-radius:10px;"
        f"padding:1px 8px;font-size:85%'>{safe_html.escape(badge)}</span>"
    )


class SecretField(w.Password):
    """A password field whose typed value is never echoed back over the widget comm.

    ipywidgets 8 answers every browser update with an ``echo_update`` message carrying the
    new value to all views; for a key that would put it on the wire a second time.
    """

    value = Unicode("", help="The typed key; read once and emptied by the panel.").tag(
        sync=True, echo_update=False
    )

    def get_state(self, key: Any = None, drop_defaults: bool = False) -> dict[str, Any]:
        """The state sent to the browser and saved with the notebook: ``value`` is always
        empty, so a key set from Python (``panel.key.value = …``) never leaves the kernel."""
        state = super().get_state(key=key, drop_defaults=drop_defaults)
        if "value" in state:
            state["value"] = ""
        return state


def _take(field: w.Password) -> Secret | None:
    """Read a password field and empty it at once; the value leaves only as a Secret."""
    value = field.value
    field.value = ""
    return Secret(value) if value else None


class ProvidersPanel(w.VBox):
    """The panel widget. ``controller`` does the work; this class only draws and wires."""

    def __init__(self, controller: ProvidersController, **kwargs: Any) -> None:
        self.controller = controller
        self.project = w.Dropdown(
            description="Project", options=controller.projects(), value=controller.project
        )
        self.provider_buttons: dict[str, w.Button] = {}
        self.badges: dict[str, w.HTML] = {}
        self.hints: dict[str, w.HTML] = {}
        rows = []
        for row in controller.rows():
            button = w.Button(
                description=row.display_name,
                tooltip=f"Configure {row.provider}",
                layout=w.Layout(width="260px"),
            )
            button.on_click(lambda _b, name=row.provider: self.select(name))
            self.provider_buttons[row.provider] = button
            self.badges[row.provider] = w.HTML()
            self.hints[row.provider] = w.HTML()
            rows.append(w.HBox([button, self.badges[row.provider], self.hints[row.provider]]))
        self.provider_list = w.VBox(rows)

        # The dialog of the selected provider.
        self.dialog_title = w.HTML()
        label = {"description_width": "110px"}
        self.key = SecretField(
            description="API key", placeholder="paste the key, then Save", style=label
        )
        self.model = w.Dropdown(description="Default model", options=[], style=label)
        self.make_default = w.Checkbox(description="Set as project default", value=False)
        # the force path: a key that looks wrong (another provider's prefix, too short, a
        # space inside) is refused unless this is ticked; it unticks after each Save
        self.force = w.Checkbox(description="Save even if the key looks wrong", value=False)
        self.save_button = w.Button(description="Save", button_style="primary")
        self.test_button = w.Button(description="Test key")
        self.toggle_button = w.Button(description="Disable")
        self.remove_button = w.Button(description="Remove", button_style="danger")
        self.save_button.on_click(lambda _b: self.save())
        self.test_button.on_click(lambda _b: self.test_key())
        self.toggle_button.on_click(lambda _b: self.toggle_enabled())
        self.remove_button.on_click(lambda _b: self.remove())
        self.dialog = w.VBox(
            [
                self.dialog_title,
                self.key,
                self.model,
                self.make_default,
                self.force,
                w.HBox(
                    [self.save_button, self.test_button, self.toggle_button, self.remove_button]
                ),
            ],
            layout=w.Layout(display="none", border="1px solid #ddd", padding="6px"),
        )

        # The managed Cencori project key.
        self.cencori_hint = w.HTML()
        self.cencori_key = SecretField(
            description="Cencori key", placeholder="csk_…", style={"description_width": "110px"}
        )
        self.cencori_save = w.Button(description="Save Cencori key")
        self.cencori_remove = w.Button(description="Remove")
        self.cencori_save.on_click(lambda _b: self.save_cencori_key())
        self.cencori_remove.on_click(lambda _b: self.remove_cencori_key())
        cencori_box = w.VBox(
            [
                w.HTML(
                    "<b>Cencori project key</b> (managed route: requests without your own key "
                    "are served through Cencori and paid with credits)"
                ),
                self.cencori_hint,
                w.HBox([self.cencori_key, self.cencori_save, self.cencori_remove]),
            ]
        )

        self.credits = w.HTML()
        self.status = w.HTML()
        self.project.observe(self._on_project, names="value")
        super().__init__(
            [
                w.HTML("<h3 style='margin:0'>Providers</h3>"),
                self.project,
                self.provider_list,
                self.dialog,
                cencori_box,
                w.HTML("<b>Credits</b>"),
                self.credits,
                self.status,
            ],
            **kwargs,
        )
        self.refresh()

    # ------------------------------------------------------------------ drawing
    def refresh(self) -> None:
        """Redraw badges, hints, the Cencori key line, the credits and the open dialog."""
        for row in self.controller.rows():
            self.badges[row.provider].value = badge_html(row.badge)
            extra = [row.key_hint or ""]
            if row.is_default:
                extra.append("project default")
            if row.badge == DISABLED and row.managed_available:
                extra.append("served through Cencori credits while disabled")
            self.hints[row.provider].value = safe_html.text_html(
                " · ".join(x for x in extra if x), tag="span"
            )
        hint = self.controller.cencori_hint()
        self.cencori_hint.value = (
            f"Cencori key {safe_html.escape(hint)} {badge_html('Enabled')}"
            if hint
            else "No Cencori key set."
        )
        self._draw_credits()
        if self.controller.selected is not None:
            self._draw_dialog(self.controller.row(self.controller.selected))

    def _draw_dialog(self, row: ProviderRow) -> None:
        self.dialog_title.value = (
            f"<b>{safe_html.escape(row.display_name)}</b> "
            f"{badge_html(row.badge)} "
            f"{safe_html.escape(row.key_hint or '')}"
        )
        options = list(row.models)
        if row.default_model and row.default_model not in options:
            options.append(row.default_model)
        self.model.options = options
        self.model.value = row.default_model if row.default_model in options else None
        self.make_default.value = row.is_default
        self.toggle_button.description = "Disable" if row.badge == ENABLED else "Enable"
        self.toggle_button.disabled = not row.has_key
        self.remove_button.disabled = not row.has_key
        self.test_button.disabled = not row.has_key
        self.dialog.layout.display = ""

    def _draw_credits(self) -> None:
        try:
            summary = self.controller.credits()
        except CencoriError as exc:
            self.credits.value = safe_html.text_html(f"Credits unavailable: {exc}")
            return
        self.credits.value = credits_html(summary)

    def _say(self, message: str, *, ok: bool = True) -> None:
        """Show one status line. ``message`` may carry a provider's error text (Test key):
        it is shown as text, never as markup or math."""
        color = "#137333" if ok else "#b00020"
        self.status.value = safe_html.text_html(message, style=f"color:{color}", tag="span")

    # ------------------------------------------------------------------ actions
    def select(self, provider: str) -> None:
        """Open the dialog of ``provider`` (a fresh, empty key field)."""
        self.key.value = ""
        try:
            row = self.controller.select(provider)
        except CencoriError as exc:
            self._say(str(exc), ok=False)
            return
        self._draw_dialog(row)

    def save(self) -> None:
        """Save the selected provider's key, default model and project-default choice."""
        secret = _take(self.key)  # the field is empty from here on, even on failure
        provider = self.controller.selected
        if provider is None:
            self._say("Select a provider first.", ok=False)
            return
        force, self.force.value = bool(self.force.value), False
        self._run(
            lambda: self.controller.save(
                provider,
                secret,
                default_model=self.model.value,
                make_default=self.make_default.value,
                force=force,
            )
        )

    def test_key(self) -> None:
        provider = self.controller.selected
        if provider is None:
            self._say("Select a provider first.", ok=False)
            return
        self._say("Testing the key…")
        result = self.controller.test_key(provider, self.model.value)
        self._say(result.message, ok=result.ok)

    def toggle_enabled(self) -> None:
        provider = self.controller.selected
        if provider is None:
            return
        enable = self.controller.row(provider).badge != ENABLED
        self._run(lambda: self.controller.set_enabled(provider, enable))

    def remove(self) -> None:
        provider = self.controller.selected
        if provider is None:
            return
        self._run(lambda: self.controller.remove(provider))

    def save_cencori_key(self) -> None:
        secret = _take(self.cencori_key)
        self._run(lambda: self.controller.save_cencori_key(secret))

    def remove_cencori_key(self) -> None:
        self._run(self.controller.remove_cencori_key)

    def _run(self, action: Any) -> None:
        """Run a controller action; show its message or the error's, then redraw."""
        try:
            message = action()
        except Exception as exc:
            err = user_error(exc)  # ours, or a full disk, a damaged file…: one line
            if err is None:
                raise
            self._say(str(err), ok=False)
        else:
            self._say(message)
        self.refresh()

    def _on_project(self, change: dict[str, Any]) -> None:
        self.key.value = ""
        self.controller.set_project(change["new"])
        self.dialog.layout.display = "none"
        self.refresh()


def credits_html(summary: CreditsSummary) -> str:
    """The credits section: balance (or "not tracked yet"), low-balance warning, top-ups,
    credits spent and all spend including BYOK (two different figures, labelled so)."""
    if summary.balance is None:
        parts = [
            "Balance: <b>not tracked yet</b> — record it with "
            "<code>cencori-nb credits set-balance AMOUNT</code>."
        ]
    else:
        parts = [f"Balance: <b>${summary.balance:.2f}</b>"]
    if summary.low:
        parts.append(
            "<span style='color:#b00020'>Low balance (under $5): top up with "
            "<code>cencori-nb credits top-up AMOUNT</code>.</span>"
        )
    parts.append(f"Recorded top-ups: ${summary.top_ups_total:.2f}")
    parts.append(f"Credits spent this month: ${summary.credits_spent_this_month:.4f}")
    parts.append(f"All spend this month incl. BYOK: ${summary.all_spend_this_month:.4f}")
    return "<br>".join(parts)
