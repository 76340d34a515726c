"""The scrubber inside a REAL Jupyter server, through its REST contents API.

Two servers run for the module, same venv, same config except one thing: ``server_off`` has
the extension disabled in its user config. Both carry a user ``pre_save_hook`` (from
config) that marks notebooks whose name contains "userhook", to show the hooks coexist.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from cencori_nb import state
from cencori_nb.jupyter.scrubber import MARKER, WIDGET_STATE_MIME
from tests.jupyter_procs import JupyterProcess, isolated_jupyter_env

pytestmark = pytest.mark.slow

USER_HOOK = '''
def mark(model, path, contents_manager, **kwargs):
    """A user's own pre-save hook: tags notebooks named *userhook*."""
    if model.get("type") == "notebook" and "userhook" in path:
        model["content"]["metadata"]["user_hook_ran"] = True
'''

_AMBIENT = ("CENCORI_NB_PASSPHRASE", "CENCORI_NB_SANDBOX", "CENCORI_NB_PROJECT")


def _start(tmp: Path, name: str, *, scrubber_on: bool) -> JupyterProcess:
    base = tmp / name
    root = base / "root"
    root.mkdir(parents=True)
    hooks = tmp / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "user_hooks.py").write_text(USER_HOOK)
    env = isolated_jupyter_env(
        base,
        CENCORI_NB_HOME=str(tmp / "cencori-home"),
        PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring",
        PYTHONPATH=str(hooks),
    )
    for var in _AMBIENT:
        env.pop(var, None)
    if not scrubber_on:  # what `jupyter server extension disable --user cencori_nb.jupyter` writes
        (Path(env["JUPYTER_CONFIG_DIR"]) / "jupyter_server_config.json").write_text(
            json.dumps({"ServerApp": {"jpserver_extensions": {"cencori_nb.jupyter": False}}})
        )
    server = JupyterProcess.server(
        root,
        base,
        env=env,
        name=name,
        extra_args=("--ContentsManager.pre_save_hook=user_hooks.mark",),
    )
    server.root = root  # type: ignore[attr-defined]
    server.home = tmp / "cencori-home"  # type: ignore[attr-defined]
    return server.start()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, JupyterProcess]]:
    tmp = tmp_path_factory.mktemp("jupyter-servers")
    started: dict[str, JupyterProcess] = {}
    try:
        started["on"] = _start(tmp, "server_on", scrubber_on=True)
        started["off"] = _start(tmp, "server_off", scrubber_on=False)
        yield started
    finally:
        for s in started.values():
            s.stop()


def _leaky_notebook(secret: str) -> dict:
    """A notebook with ``secret`` in a source, an output and the saved widget state."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Leaky"),
        nbformat.v4.new_code_cell(
            f'key = "{secret}"\nprint(key)',
            execution_count=1,
            outputs=[
                nbformat.v4.new_output("stream", name="stdout", text=secret + "\n"),
                nbformat.v4.new_output(
                    "error",
                    ename="AuthenticationError",
                    evalue=f"Incorrect API key provided: {secret}",
                    traceback=[f"call(api_key='{secret}')"],
                ),
            ],
        ),
    ]
    nb.metadata["widgets"] = {
        WIDGET_STATE_MIME: {
            "version_major": 2,
            "version_minor": 0,
            "state": {
                "8f1c": {
                    "model_name": "PasswordModel",
                    "model_module": "@jupyter-widgets/controls",
                    "model_module_version": "2.0.0",
                    "state": {"value": secret, "description": "API key"},
                }
            },
        }
    }
    return json.loads(nbformat.writes(nb))


def _put(server: JupyterProcess, path: str, content: dict) -> dict:
    r = server.api(
        "PUT",
        f"/api/contents/{path}",
        json={"type": "notebook", "format": "json", "content": content},
    )
    assert r.status_code in (200, 201), r.text
    return r.json()


def test_extension_is_enabled_for_the_installed_package(tmp_path: Path) -> None:
    """`jupyter server extension list` (from the venv) shows it enabled and importable."""
    env = isolated_jupyter_env(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "jupyter_server.extension.serverextension", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)  # drop colours
    assert re.search(r"^\s*cencori_nb\.jupyter enabled\s*$", text, re.M), text
    assert re.search(r"^\s*cencori_nb\.jupyter\s+OK\b", text, re.M), text


def test_scrubber_registers_only_when_enabled(servers: dict[str, JupyterProcess]) -> None:
    assert "secret scrubber registered" in servers["on"].log()
    assert "secret scrubber registered" not in servers["off"].log()


def test_canary_in_source_output_and_widget_state_never_reaches_disk(
    servers: dict[str, JupyterProcess], canary: str
) -> None:
    """The file written by the server has no canary, is valid, and says what was removed."""
    server = servers["on"]
    _put(server, "leaky.ipynb", _leaky_notebook(canary))
    on_disk = (server.root / "leaky.ipynb").read_text()  # type: ignore[attr-defined]
    assert canary not in on_disk
    nb = nbformat.reads(on_disk, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[1].source == f'key = "{MARKER}"\nprint(key)'
    assert nb.cells[1].outputs[0].text == MARKER + "\n"
    assert nb.cells[1].outputs[1].traceback == [f"call(api_key='{MARKER}')"]
    state = nb.metadata.widgets[WIDGET_STATE_MIME]["state"]["8f1c"]["state"]
    assert state["value"] == MARKER
    # What JupyterLab reloads is the scrubbed version too.
    model = server.api("GET", "/api/contents/leaky.ipynb").json()
    assert canary not in json.dumps(model)
    log = server.log()
    assert "removed 5 secret(s) from leaky.ipynb" in log
    assert canary not in log


def test_without_the_extension_the_canary_would_be_saved(
    servers: dict[str, JupyterProcess], canary: str
) -> None:
    """Control: the same PUT on a server without the extension keeps the canary."""
    _put(servers["off"], "leaky.ipynb", _leaky_notebook(canary))
    assert canary in (servers["off"].root / "leaky.ipynb").read_text()  # type: ignore[attr-defined]


def test_notebook_without_secrets_is_saved_byte_identical(
    servers: dict[str, JupyterProcess],
) -> None:
    """No secret: the extension changes nothing, byte for byte, compared with no extension."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import sklearn  # not sk-learn keys",
            outputs=[
                nbformat.v4.new_output(
                    "stream", name="stdout", text="Bearer token docs: RFC 6750\n"
                )
            ],
            execution_count=3,
        ),
        nbformat.v4.new_markdown_cell("Prices: gpt-4o-mini $0.15 / 1M tokens. ünïcødé ✓"),
    ]
    nb.metadata["widgets"] = {
        WIDGET_STATE_MIME: {"version_major": 2, "version_minor": 0, "state": {}}
    }
    content = json.loads(nbformat.writes(nb))
    sent = copy.deepcopy(content)
    _put(servers["on"], "clean.ipynb", content)
    _put(servers["off"], "clean.ipynb", content)
    on = (servers["on"].root / "clean.ipynb").read_bytes()  # type: ignore[attr-defined]
    off = (servers["off"].root / "clean.ipynb").read_bytes()  # type: ignore[attr-defined]
    assert on == off
    assert json.loads(on) == sent
    assert "from clean.ipynb" not in servers["on"].log()


def test_a_users_own_pre_save_hook_still_runs(
    servers: dict[str, JupyterProcess], canary: str
) -> None:
    """Both hooks apply: the user's hook tags the notebook, ours removes the canary."""
    _put(servers["on"], "my-userhook.ipynb", _leaky_notebook(canary))
    saved = json.loads((servers["on"].root / "my-userhook.ipynb").read_text())  # type: ignore[attr-defined]
    assert saved["metadata"]["user_hook_ran"] is True
    assert canary not in json.dumps(saved)


def test_stored_key_of_any_shape_is_removed(
    servers: dict[str, JupyterProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key in the user's store (no key shape) is removed by exact match in the server."""
    server = servers["on"]
    monkeypatch.setenv("CENCORI_NB_HOME", str(server.home))  # type: ignore[attr-defined]
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")
    from cencori_nb import keys

    state.reset("keystore")
    odd = "local-server-pass-" + "shapeless"
    keys.set("local", odd)
    _put(server, "odd.ipynb", _leaky_notebook(odd))
    on_disk = (server.root / "odd.ipynb").read_text()  # type: ignore[attr-defined]
    assert odd not in on_disk
    assert MARKER in on_disk


def test_save_goes_on_when_the_key_store_cannot_be_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, canary: str
) -> None:
    """A passphrase store and no passphrase in the server's environment: the notebook is
    still saved, key shapes are still removed; only exact matching is lost (documented)."""
    from cencori_nb import keys

    home = tmp_path / "locked-home"
    monkeypatch.setenv("CENCORI_NB_HOME", str(home))
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "correct horse battery staple")
    state.reset("keystore")
    keys.set("openai", canary)
    keys.set("local", "shapeless-local-secret")
    monkeypatch.delenv("CENCORI_NB_PASSPHRASE")
    root = tmp_path / "root"
    root.mkdir()
    env = isolated_jupyter_env(
        tmp_path / "jupyter",
        CENCORI_NB_HOME=str(home),
        PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring",
    )
    for var in _AMBIENT:
        env.pop(var, None)
    server = JupyterProcess.server(root, tmp_path, env=env, name="locked").start()
    try:
        content = _leaky_notebook(canary)
        content["cells"].append(nbformat.v4.new_markdown_cell("shapeless-local-secret"))
        _put(server, "locked.ipynb", content)
        on_disk = (root / "locked.ipynb").read_text()
        nbformat.validate(nbformat.reads(on_disk, as_version=4))
        assert canary not in on_disk
        # The store stayed closed (no prompt, no error): only the key shapes were matched.
        assert "shapeless-local-secret" in on_disk
        assert "removed 5 secret(s) from locked.ipynb" in server.log()
        assert "scrubber failed" not in server.log()
        # Said as a WARNING at startup and at the first save, not again (issue 10.4).
        warnings = [
            line for line in server.log().splitlines() if "cannot read the key store" in line
        ]
        assert len(warnings) == 2 and all(line.startswith("[W") for line in warnings), warnings
        _put(server, "again.ipynb", _leaky_notebook(canary))
        assert server.log().count("cannot read the key store") == 2
        assert canary not in server.log()
    finally:
        server.stop()


def test_uploaded_notebook_as_a_base64_file_model_is_scrubbed(
    servers: dict[str, JupyterProcess], canary: str
) -> None:
    """JupyterLab's upload sends a `type: file`, base64 model; a .ipynb is still a notebook
    (issue 10.4), and so is a text file model of one."""
    import base64

    server = servers["on"]
    text = json.dumps(_leaky_notebook(canary))
    for name, body in (
        (
            "uploaded.ipynb",
            {
                "type": "file",
                "format": "base64",
                "content": base64.b64encode(text.encode()).decode(),
            },
        ),
        ("as-text.ipynb", {"type": "file", "format": "text", "content": text}),
        ("notes.txt", {"type": "file", "format": "text", "content": f"key {canary}\n"}),
    ):
        r = server.api("PUT", f"/api/contents/{name}", json=body)
        assert r.status_code in (200, 201), r.text
        on_disk = (server.root / name).read_text()  # type: ignore[attr-defined]
        assert canary not in on_disk and MARKER in on_disk
        if name.endswith(".ipynb"):
            nbformat.validate(nbformat.reads(on_disk, as_version=4))
    assert canary not in server.log()


def test_a_key_in_the_file_name_is_refused_and_not_logged(
    servers: dict[str, JupyterProcess], canary: str
) -> None:
    """Saving `<key>.ipynb` is refused (400, nothing written) and the server's own request
    log, which prints every URL, shows the marker instead of the key."""
    server = servers["on"]
    r = server.api(
        "PUT",
        f"/api/contents/{canary}.ipynb",
        json={"type": "notebook", "content": _leaky_notebook("nothing")},
    )
    assert r.status_code == 400, r.text
    assert "refused" in r.json()["message"] and canary not in r.text
    assert not (server.root / f"{canary}.ipynb").exists()  # type: ignore[attr-defined]
    log = server.log()
    assert canary not in log
    assert re.search(r"400 PUT /api/contents/\[redacted\]", log), log[-2000:]
