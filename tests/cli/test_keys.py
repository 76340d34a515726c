"""``cencori-nb keys …``: input paths, output shapes, exit codes, and no key anywhere."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cencori_nb import keys, keystore, state
from cencori_nb.cli import main
from tests.conftest import all_bytes_under


class _Stdin(io.StringIO):
    """stdin as a pipe (not a terminal) or, with ``tty=True``, as a terminal."""

    def __init__(self, text: str = "", *, tty: bool = False) -> None:
        super().__init__(text)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def _run(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    stdin: str = "",
    *,
    tty: bool = False,
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", _Stdin(stdin, tty=tty))
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _cli(home: Path, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, CENCORI_NB_HOME=str(home), **env)
    return subprocess.run(
        [sys.executable, "-m", "cencori_nb", *args],
        input=stdin,
        text=True,
        capture_output=True,
        env=full_env,
        timeout=120,
    )


def _leak_forms(secret: str) -> list[bytes]:
    """The secret in clear and base64 (every byte alignment, standard and URL-safe)."""
    raw = secret.encode()
    forms = [raw]
    for shift in range(3):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            text = enc(b"\0" * shift + raw)
            forms.append(text[4:-4])  # the part that depends only on the secret
    return forms


def _assert_absent(secret: str, blob: bytes | str, where: str) -> None:
    data = blob.encode() if isinstance(blob, str) else blob
    for form in _leak_forms(secret):
        assert form not in data, f"{secret[:6]}… found in {where} as {form[:12]!r}…"


# --------------------------------------------------------------------------- the canary


def test_canary_never_leaks(
    private_home: Path,
    canary: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A canary set through the CLI (stdin) and the API: not in any file of the home (clear
    or base64), not in CLI output, not in any log record at DEBUG, not in reprs."""
    caplog.set_level(logging.DEBUG)
    logging.getLogger("cencori_nb").setLevel(logging.DEBUG)
    outputs = []
    steps = [
        (["keys", "set", "openai", "--make-default", "-m", "gpt-4o"], canary + "\n"),
        # an sk- key as Anthropic's is refused, then stored on purpose (a note is logged)
        (["keys", "set", "anthropic", "--project", "cli"], canary),
        (["keys", "set", "anthropic", "--project", "cli", "--force"], canary),
        (["keys", "set", "cencori"], "csk_" + canary),
        (["keys", "list"], ""),
        (["keys", "list", "--json"], ""),
        (["keys", "disable", "openai"], ""),
        (["keys", "enable", "openai"], ""),
        (["keys", "rotate"], ""),
        (["keys", "set", "groq"], canary[:8] + " " + canary[8:]),  # refused: space
        (["keys", "set", "openai", canary], ""),  # refused: argv
        (["keys", "passphrase"], "\ncanary passphrase 1\n"),
    ]
    codes = []
    for argv, stdin in steps:
        code, out, err = _run(monkeypatch, capsys, argv, stdin)
        codes.append(code)
        outputs.append(f"{argv[:3]} -> {code}\n{out}\n{err}")  # argv[3] may be the key
    assert codes == [0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0]
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "canary passphrase 1")
    state.reset("keystore")
    keys.set("google", "AIza" + canary, project="api", default_model="gemini-2.5-flash")
    keys.set("mistral", canary, project="api", make_default=True, force=True)
    keys.set_cencori_key("csk_" + canary, project="api")
    with pytest.raises(Exception) as info:
        keys.set("openai", canary + "\nsecond line")
    outputs.append(str(info.value) + repr(info.value))
    keys.rotate()
    keys.change_passphrase("canary passphrase 2")
    store = keystore.default_store()
    outputs.append(
        repr(keys.status("api"))
        + repr(store.get("mistral", "api"))
        + repr(store.all_secrets())
        + repr(store.cencori_key("api"))
        + repr(store)
    )
    code, out, err = _run(monkeypatch, capsys, ["keys", "list", "--project", "api", "--json"])
    outputs.append(out + err)

    # it really is stored, under every name used above
    state.reset("keystore")
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "canary passphrase 2")
    store = keystore.default_store()
    assert store.get("openai", "default").api_key.reveal() == canary  # type: ignore[union-attr]
    assert store.get("anthropic", "cli").api_key.reveal() == canary  # type: ignore[union-attr]
    assert store.get("mistral", "api").api_key.reveal() == canary  # type: ignore[union-attr]
    assert store.cencori_key("default").reveal() == "csk_" + canary  # type: ignore[union-attr]

    files = all_bytes_under(private_home)
    assert files
    _assert_absent(canary, files, "the home's files")
    _assert_absent(canary, "\n".join(outputs), "CLI output, errors or reprs")
    logged = caplog.text + "\n".join(
        f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records
    )
    assert caplog.records, "nothing was logged: the DEBUG capture is not wired"
    _assert_absent(canary, logged, "the logs")
    assert any("stored anyway" in r.getMessage() for r in caplog.records)


def test_canary_never_leaks_from_a_real_cli_process(private_home: Path, canary: str) -> None:
    """The console command itself, with the key piped on stdin."""
    done = _cli(private_home, "keys", "set", "openai", stdin=canary + "\n")
    assert done.returncode == 0, done.stderr
    assert "…cH1" in done.stdout or canary[-4:] in done.stdout
    listed = _cli(private_home, "keys", "list", "--json")
    for text in (done.stdout, done.stderr, listed.stdout, listed.stderr):
        _assert_absent(canary, text, "CLI output")
    _assert_absent(canary, all_bytes_under(private_home), "the home's files")
    assert json.loads(listed.stdout)[0]["key_hint"] == "…" + canary[-4:]


# --------------------------------------------------------------------------- shapes


def test_list_json_exact_shape(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A JSON array of {provider, enabled, key_hint, default_model, is_default}."""
    assert _run(monkeypatch, capsys, ["keys", "list", "--json"]) == (0, "[]\n", "")
    _run(
        monkeypatch,
        capsys,
        ["keys", "set", "openai", "-m", "gpt-4o", "--make-default"],
        "sk-proj-1111222233334444",
    )
    _run(monkeypatch, capsys, ["keys", "set", "anthropic", "--disabled"], "sk-ant-5555666677778888")
    _run(monkeypatch, capsys, ["keys", "set", "cencori"], "csk_99990000aaaabbbb")
    _run(monkeypatch, capsys, ["keys", "set", "groq", "--project", "elsewhere"], "gsk_abcdefgh1234")
    code, out, err = _run(monkeypatch, capsys, ["keys", "list", "--json"])
    assert code == 0 and err == ""
    assert json.loads(out) == [
        {
            "provider": "anthropic",
            "enabled": False,
            "key_hint": "…8888",
            "default_model": None,
            "is_default": False,
        },
        {
            "provider": "cencori",
            "enabled": True,
            "key_hint": "…bbbb",
            "default_model": None,
            "is_default": False,
        },
        {
            "provider": "openai",
            "enabled": True,
            "key_hint": "…4444",
            "default_model": "gpt-4o",
            "is_default": True,
        },
    ]
    code, out, _ = _run(monkeypatch, capsys, ["keys", "list", "--project", "elsewhere", "--json"])
    assert json.loads(out) == [
        {
            "provider": "groq",
            "enabled": True,
            "key_hint": "…1234",
            "default_model": None,
            "is_default": False,
        }
    ]
    code, out, _ = _run(monkeypatch, capsys, ["keys", "list"])
    lines = out.splitlines()
    assert lines[0] == "Project 'default':"
    assert lines[1].split() == ["PROVIDER", "ENABLED", "KEY", "DEFAULT", "MODEL", "DEFAULT"]
    assert lines[2].split() == ["anthropic", "no", "…8888", "-"]
    assert lines[4].split() == ["openai", "yes", "…4444", "gpt-4o", "*"]


def test_set_confirms_with_the_hint_only(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The confirmation names provider, hint, project and flags."""
    code, out, err = _run(
        monkeypatch,
        capsys,
        ["keys", "set", "openai", "-m", "gpt-4o-mini", "--make-default", "-p", "team"],
        "  sk-proj-abcdefgh12345678  \n",
    )
    assert code == 0 and err == ""
    assert out == (
        "Stored openai key …5678 for project 'team': enabled, default model "
        "gpt-4o-mini, project default.\n"
    )
    assert keystore.default_store().get("openai", "team").api_key.reveal() == (  # type: ignore
        "sk-proj-abcdefgh12345678"
    )


def test_hidden_prompt_when_stdin_is_a_terminal(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A terminal gets getpass (no echo), never a plain read of stdin."""
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return "sk-proj-typed-at-the-prompt1"

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    code, out, _ = _run(monkeypatch, capsys, ["keys", "set", "openai"], "ignored", tty=True)
    assert code == 0 and prompts == ["openai API key (hidden): "]
    assert keystore.default_store().get("openai").api_key.reveal() == (  # type: ignore
        "sk-proj-typed-at-the-prompt1"
    )


def test_passphrase_command(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`keys passphrase`: two stdin lines (current, new); a wrong current one is refused."""
    _run(monkeypatch, capsys, ["keys", "set", "openai"], "sk-proj-passphrase-test-1")
    code, out, err = _run(monkeypatch, capsys, ["keys", "passphrase"], "first secret phrase\n")
    assert code == 0 and "CENCORI_NB_PASSPHRASE" in out
    state.reset("keystore")
    code, out, err = _run(monkeypatch, capsys, ["keys", "passphrase"], "wrong\nthird\n")
    assert code == 1 and "does not open" in err and len(err.splitlines()) == 1
    code, out, err = _run(
        monkeypatch, capsys, ["keys", "passphrase"], "first secret phrase\nsecond secret phrase\n"
    )
    assert code == 0, err
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "second secret phrase")
    state.reset("keystore")
    assert keystore.default_store().get("openai") is not None
    code, out, err = _run(monkeypatch, capsys, ["keys", "passphrase"], "a\nb\nc\n")
    assert code == 1


# --------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    ("argv", "stdin", "needle"),
    [
        (["keys", "set", "nosuch"], "sk-x-12345678", "Unknown provider 'nosuch'"),
        (["keys", "set", "openai"], "   \n", "empty"),
        (["keys", "set", "openai"], "sk-proj-one\nsk-proj-two\n", "line break"),
        (["keys", "set", "cencori"], "sk-not-csk-12345", "csk_"),
        (["keys", "set", "cencori", "--make-default"], "csk_12345678abcd", "--make-default"),
        (["keys", "enable", "groq"], "", "No groq key is stored"),
        (["keys", "remove", "openai", "--project", "nope"], "", "No openai key is stored"),
    ],
)
def test_user_errors_exit_1_with_one_line(
    private_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    stdin: str,
    needle: str,
) -> None:
    """A CencoriError: exit 1, one plain line on stderr, nothing on stdout, nothing stored."""
    code, out, err = _run(monkeypatch, capsys, argv, stdin)
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("cencori-nb: ") and needle in err
    assert "Traceback" not in err
    assert not (private_home / "keystore.json").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["keys"],
        ["keys", "set"],
        ["keys", "frobnicate"],
        ["keys", "list", "--yaml"],
        ["keys", "set", "openai", "sk-proj-on-the-command-line"],
    ],
)
def test_usage_errors_exit_2(
    private_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    """argparse usage errors exit 2; a key typed on argv is refused without being echoed."""
    code, out, err = _run(monkeypatch, capsys, argv, "sk-proj-from-stdin-000")
    assert code == 2 and "usage:" in err
    assert "sk-proj-on-the-command-line" not in err + out
    assert not (private_home / "keystore.json").exists()


def test_real_process_exit_codes(private_home: Path) -> None:
    """The installed entry point: 0, 1 (one stderr line), 2."""
    ok = _cli(private_home, "keys", "set", "openai", stdin="sk-proj-real-process-0001\n")
    assert ok.returncode == 0 and ok.stderr == ""
    bad = _cli(private_home, "keys", "remove", "anthropic")
    assert bad.returncode == 1 and len(bad.stderr.splitlines()) == 1
    usage = _cli(private_home, "keys", "set", "openai", "sk-proj-argv-key-00000")
    assert usage.returncode == 2 and "sk-proj-argv-key-00000" not in usage.stderr
    (private_home / "keystore.json").write_bytes(b"{}")
    damaged = _cli(private_home, "keys", "list")
    assert damaged.returncode == 1 and "keystore.json" in damaged.stderr
    assert len(damaged.stderr.splitlines()) == 1
    assert (private_home / "keystore.json").read_bytes() == b"{}"


def test_rotate_command(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`keys rotate` on an empty home and on a store."""
    code, out, _ = _run(monkeypatch, capsys, ["keys", "rotate"])
    assert code == 0 and "Nothing to rotate" in out
    _run(monkeypatch, capsys, ["keys", "set", "openai"], "sk-proj-rotate-me-00001")
    code, out, _ = _run(monkeypatch, capsys, ["keys", "rotate"])
    assert code == 0 and "1 records re-encrypted" in out and "new key file" in out
    state.reset("keystore")
    assert keystore.default_store().get("openai") is not None


def test_locked_store_fails_before_the_prompt(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A passphrase store without CENCORI_NB_PASSPHRASE: exit 1 before asking for a key."""
    monkeypatch.setenv("CENCORI_NB_PASSPHRASE", "locked up")
    keys.set("openai", "sk-proj-locked-store-0001")
    monkeypatch.delenv("CENCORI_NB_PASSPHRASE")
    state.reset("keystore")
    asked: list[str] = []
    monkeypatch.setattr("getpass.getpass", lambda prompt="": asked.append(prompt) or "x")
    code, out, err = _run(monkeypatch, capsys, ["keys", "set", "groq"], tty=True)
    assert code == 1 and asked == [] and "CENCORI_NB_PASSPHRASE is not set" in err


# --------------------------------------------------------------------------- key shapes


@pytest.mark.parametrize(
    ("provider", "key", "needle"),
    [
        ("openai", "sk-ant-" + "api03-Ab1Cd2Ef3Gh4Ij5", "the prefix of Anthropic keys"),
        ("anthropic", "AIza" + "SyA1b2C3d4E5f6G7h8I9j0k", "the prefix of Google Gemini keys"),
        ("groq", "csk_" + "live0123456789abcdef", "keys set cencori"),
        ("anthropic", "sk-proj-" + "A1b2C3d4E5f6G7h8", "the prefix of OpenAI keys"),
        ("google", "gsk_" + "Ab1Cd2Ef3Gh4Ij5Kl6", "the prefix of Groq keys"),
        ("openai", "xai-" + "Ab1Cd2Ef3Gh4Ij5Kl6", "the prefix of xAI keys"),
        ("deepseek", "sk-or-v1-" + "Ab1Cd2Ef3Gh4Ij5", "the prefix of OpenRouter keys"),
        ("mistral", "sk-" + "Ab1Cd2Ef3Gh4Ij5Kl6", "OpenAI or DeepSeek"),
        ("openai", "hello", "only 5 characters"),
        ("groq", "gsk_abc", "only 7 characters"),
        ("openai", "sk-abc def", "a space"),
        ("openai", "sk-proj-Ab1Cd2 Ef3Gh4Ij5", "a space"),
    ],
    ids=[
        "ant-as-openai",
        "google-as-anthropic",
        "csk-as-groq",
        "openai-as-anthropic",
        "groq-as-google",
        "xai-as-openai",
        "openrouter-as-deepseek",
        "sk-as-mistral",
        "hello",
        "short-groq",
        "space-short",
        "space-inside",
    ],
)
def test_key_of_the_wrong_shape_is_refused_unless_forced(
    private_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    provider: str,
    key: str,
    needle: str,
) -> None:
    """Another provider's prefix, < 12 characters, a space inside: exit 1, one line naming
    why and --force, the key not echoed, nothing stored; with --force it is stored."""
    code, out, err = _run(monkeypatch, capsys, ["keys", "set", provider], key + "\n")
    assert code == 1 and out == "" and len(err.splitlines()) == 1, err
    assert needle in err and "--force" in err and "nothing was stored" in err
    assert key not in err and key.split()[-1] not in err
    assert not (private_home / "keystore.json").exists()
    code, out, err = _run(monkeypatch, capsys, ["keys", "set", provider, "--force"], key)
    assert code == 0 and out.startswith(f"Stored {provider} key"), err
    state.reset("keystore")
    assert keystore.default_store().get(provider).api_key.reveal() == key  # type: ignore


def test_the_same_shapes_in_python(private_home: Path) -> None:
    """force=True in Python; the refusal is a ConfigurationError with code bad_key_shape;
    the forced row carries a note."""
    from cencori_nb.errors import ConfigurationError

    with pytest.raises(ConfigurationError) as info:
        keys.set("openai", "sk-ant-" + "api03-Ab1Cd2Ef3Gh4Ij5")
    assert info.value.code == "bad_key_shape" and "force=True" in str(info.value)
    row = keys.set("openai", "sk-ant-" + "api03-Ab1Cd2Ef3Gh4Ij5", force=True)
    assert row.provider == "openai" and "forced" in row.notes[0]
    with pytest.raises(ConfigurationError):
        keys.set_cencori_key("csk_short")
    assert keys.set_cencori_key("csk_short", force=True).key_hint == "…hort"
    with pytest.raises(ConfigurationError, match="csk_"):  # never forced: not a csk_ key
        keys.set_cencori_key("sk-proj-" + "A1b2C3d4E5f6G7h8", force=True)
    with pytest.raises(ConfigurationError, match="line break"):  # never forced: header
        keys.set("openai", "sk-proj-Ab1Cd2\nEf3Gh4Ij5", force=True)
    # a local server's placeholder key is fine; an sk- key too (LiteLLM proxies)
    assert keys.set("local", "ollama").notes == ()
    assert keys.set("local", "sk-" + "litellm-1234").notes == ()


def test_unusual_shapes_only_warn(private_home: Path) -> None:
    """No usual prefix, odd characters: stored, with a warning on stderr (a real process)."""
    done = _cli(private_home, "keys", "set", "openai", stdin="proj-Ab1Cd2Ef3Gh4Ij5Kl6\n")
    assert done.returncode == 0, done.stderr
    assert "does not start with 'sk-'" in done.stderr and "Ab1Cd2" not in done.stderr
    done = _cli(private_home, "keys", "set", "mistral", stdin="Ab1Cd2Ef3Gh4Ij5Kl6+/=\n")
    assert done.returncode == 0 and "characters keys rarely have" in done.stderr


def test_provider_names_are_case_insensitive(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`keys set OpenAI`, `keys disable GROQ`, `keys remove Openai`, `keys set Cencori`."""
    code, out, err = _run(
        monkeypatch, capsys, ["keys", "set", "OpenAI"], "sk-proj-Ab1Cd2Ef3Gh4Ij5\n"
    )
    assert code == 0 and out.startswith("Stored openai key …4Ij5 for project"), err
    _run(monkeypatch, capsys, ["keys", "set", "Groq"], "gsk_Ab1Cd2Ef3Gh4Ij5\n")
    code, out, err = _run(monkeypatch, capsys, ["keys", "disable", "GROQ"])
    assert code == 0 and "groq key" in out
    code, out, err = _run(monkeypatch, capsys, ["keys", "set", "Cencori"], "csk_Ab1Cd2Ef3Gh4Ij5\n")
    assert code == 0 and "Cencori project key" in out
    code, out, err = _run(monkeypatch, capsys, ["keys", "remove", "Openai"])
    assert code == 0 and out == "Removed the openai key of project 'default'.\n"
    assert [r.provider for r in keys.status()] == ["cencori", "groq"]
    assert keys.set("ANTHROPIC", "sk-ant-" + "Ab1Cd2Ef3Gh4Ij5").provider == "anthropic"


def test_a_replacement_names_the_key_it_replaces(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The second `keys set` says which key it replaced (by hint); the same key again does
    not claim to replace anything."""
    _run(monkeypatch, capsys, ["keys", "set", "openai"], "sk-proj-first-key-0000Qx4F\n")
    code, out, _ = _run(
        monkeypatch, capsys, ["keys", "set", "openai"], "sk-proj-second-key-000Zz9Y\n"
    )
    assert code == 0 and out.endswith("It replaces the key …Qx4F.\n")
    code, out, _ = _run(
        monkeypatch, capsys, ["keys", "set", "openai"], "sk-proj-second-key-000Zz9Y\n"
    )
    assert "replaces" not in out
    assert keys.set("openai", "sk-proj-third-key-0000Ab12").replaces == "…Zz9Y"
    keys.set("cencori", "csk_first_key_0000Cc11")
    assert keys.set("cencori", "csk_other_key_0000Dd22").replaces == "…Cc11"


def test_accept_rollback_command(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A restored backup: `keys list` refuses in one line naming --accept-rollback; `keys
    rotate --accept-rollback` accepts it; the store works again."""
    import shutil

    _run(monkeypatch, capsys, ["keys", "set", "openai"], "sk-proj-first-key-0000Qx4F\n")
    _run(monkeypatch, capsys, ["keys", "set", "groq"], "gsk_Ab1Cd2Ef3Gh4Ij5\n")
    shutil.copy(private_home / "keystore.bak", private_home / "keystore.json")
    state.reset("keystore")
    code, out, err = _run(monkeypatch, capsys, ["keys", "list"])
    assert code == 1 and len(err.splitlines()) == 1 and "--accept-rollback" in err
    code, out, err = _run(monkeypatch, capsys, ["keys", "rotate", "--accept-rollback"])
    assert code == 0 and "1 records re-encrypted" in out, err
    code, out, err = _run(monkeypatch, capsys, ["keys", "list", "--json"])
    assert code == 0 and [r["provider"] for r in json.loads(out)] == ["openai"]


def test_write_failure_is_one_line(private_home: Path) -> None:
    """A key-store write that fails (here: a file-size limit) is one line, exit 1."""
    from tests.attacks.support import run_limited

    assert (
        _cli(private_home, "keys", "set", "openai", stdin="sk-proj-first-key-0000Qx4F").returncode
        == 0
    )
    done = run_limited(private_home, 200, ["keys", "set", "groq"], "gsk_Ab1Cd2Ef3Gh4Ij5")
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("cencori-nb: Could not write the key store")
    assert "File too large" in done.stderr


def test_the_panel_save_path_refuses_then_forces(private_home: Path) -> None:
    """The providers panel's Save (its controller): the same refusal, a force path, and a
    status line that names the key replaced and the note on the forced shape."""
    from cencori_nb.errors import ConfigurationError
    from cencori_nb.keystore.secret import Secret
    from cencori_nb.widgets.controller import ProvidersController

    panel = ProvidersController()
    ant = "sk-ant-" + "api03-Ab1Cd2Ef3Gh4Ij5"
    with pytest.raises(ConfigurationError) as info:
        panel.save("openai", Secret(ant), default_model=None, make_default=False)
    assert "Save even if the key looks wrong" in str(info.value) and ant not in str(info.value)
    assert keys.status() == []
    line = panel.save("openai", Secret(ant), default_model=None, make_default=False, force=True)
    assert line.startswith("Saved OpenAI key …4Ij5 for project default.") and "forced" in line
    line = panel.save(
        "openai", Secret("sk-proj-" + "A1b2C3d4E5f6G7h8"), default_model=None, make_default=False
    )
    assert "replacing the key …4Ij5" in line and ant not in line
