"""Issue 10.2 under attack: a stored key goes only to its provider's real host.

Every attack input points the toolkit at a real recording sandbox on loopback (or at a URL
that would reach it by a trick) with a canary stored as the key, then asserts what that
server RECEIVED: only the provider's fixed demo key in sandbox mode, the stored key only
through a base URL the rules allow, and nothing at all when the URL is refused.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

import httpx2
import pytest

import cencori_nb
from cencori_nb import errors, keys, router, settings
from cencori_nb.egress import DEMO_KEYS, UnsafeURLError, parse_url
from cencori_nb.sandbox.server import SandboxServer
from tests.attacks.support import CANARIES, RecordingSandbox

MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-haiku-4-5",
    "google": "gemini-2.5-flash",
    "mistral": "mistral-small-latest",
    "groq": "llama-3.3-70b-versatile",
    "xai": "grok-3-mini",
    "deepseek": "deepseek-chat",
    "together": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
    "openrouter": "openai/gpt-4o-mini",
}


@pytest.fixture
def stored() -> None:
    """Every provider's canary stored as its key (and the Cencori project key)."""
    for name, key in CANARIES.items():
        if name == "cencori":
            keys.set_cencori_key(key)
        else:
            keys.set(name, key)


@pytest.fixture(scope="module")
def shell(ipython: Any) -> Any:
    """The shared InteractiveShell (tests/conftest.py)."""
    return ipython


def _port(server: SandboxServer) -> int:
    assert server.url is not None
    return int(server.url.rsplit(":", 1)[1])


# ============================================================ sandbox mode: demo keys only


@pytest.mark.parametrize("provider", sorted(MODELS))
def test_sandbox_env_sends_the_demo_key_never_the_stored_one(
    srv: RecordingSandbox, stored: None, provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CENCORI_NB_SANDBOX with a stored key per provider: the sandbox receives that
    provider's fixed demo key, in its usual header, and no byte of the stored key."""
    monkeypatch.setenv("CENCORI_NB_SANDBOX", srv.url)
    c = cencori_nb.chat(f"hello {provider}", model=MODELS[provider], provider=provider)
    assert c.route == "byok" and c.credential_source == f"sandbox-demo:byok:{provider}"
    assert srv.keys_received() == [DEMO_KEYS[provider]]
    srv.assert_no_canary()


def test_sandbox_managed_route_sends_the_cencori_demo_key(
    srv: RecordingSandbox, stored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CENCORI_NB_SANDBOX", srv.url)
    with cencori_nb.stream("managed", model="gpt-4o-mini", route="managed") as s:
        assert "".join(s)
    assert srv.keys_received() == [DEMO_KEYS["cencori"]]
    srv.assert_no_canary()


def test_sandbox_url_in_config_json_sends_demo_keys(srv: RecordingSandbox, stored: None) -> None:
    """``sandbox_url`` written in config.json (a synced home folder) gets demo keys too."""
    settings.update_settings(sandbox_url=srv.url)
    cencori_nb.chat("from config", model="gpt-4o-mini")
    cencori_nb.chat("from config", model="claude-haiku-4-5", route="managed")
    assert srv.keys_received() == [DEMO_KEYS["openai"], DEMO_KEYS["cencori"]]
    srv.assert_no_canary()


def test_magic_sandbox_on_url_sends_demo_keys(
    srv: RecordingSandbox, stored: None, shell: Any
) -> None:
    """``%cencori sandbox on URL`` then a ``%%cencori`` cell: demo key only; the notice says
    so instead of promising that no real provider is called."""
    from IPython.utils.capture import capture_output

    try:
        with capture_output() as cap:
            shell.run_cell(f"%cencori sandbox on {srv.url}")
            shell.run_cell("%%cencori -m gpt-4o-mini --no-stream\nhello from the magic")
        notice = cap.stdout + "".join(str(o.data) for o in cap.outputs)
        assert "demo keys only" in notice and "never sent" in notice
        assert "no real provider is called" not in notice
        assert srv.keys_received() == [DEMO_KEYS["openai"]]
        srv.assert_no_canary()
    finally:
        shell.run_line_magic("cencori", "sandbox off")
        os.environ.pop("CENCORI_NB_SANDBOX", None)


def test_revoked_demo_key_is_401_through_the_client(
    srv: RecordingSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored demo-key variant is itself a demo key and travels as is: ``…-revoked`` is how
    tests reach the sandbox's 401."""
    monkeypatch.setenv("CENCORI_NB_SANDBOX", srv.url)
    keys.set("openai", DEMO_KEYS["openai"] + "-revoked")
    with pytest.raises(errors.AuthenticationError):
        cencori_nb.chat("hi", model="gpt-4o-mini")
    assert srv.keys_received() == [DEMO_KEYS["openai"] + "-revoked"]


@pytest.mark.parametrize(
    "stored_key",
    [
        DEMO_KEYS["openai"] + "x",  # not a variant: no separator
        DEMO_KEYS["openai"] + "-" + "a" * 49,  # variant too long
        DEMO_KEYS["openai"] + "-a.b",  # a character outside the variant alphabet
        "prefix-" + DEMO_KEYS["openai"],  # demo key inside a real-looking key
        DEMO_KEYS["anthropic"],  # another provider's demo key
    ],
)
def test_near_demo_keys_are_replaced(
    srv: RecordingSandbox, stored_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the exact demo-key forms travel; anything else is a stored key, replaced."""
    monkeypatch.setenv("CENCORI_NB_SANDBOX", srv.url)
    keys.set("openai", stored_key, force=True)  # force: another provider's prefix
    cencori_nb.chat("hi", model="gpt-4o-mini")
    assert srv.keys_received() == [DEMO_KEYS["openai"]]


def test_per_key_rate_limits_work_through_demo_key_variants(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sandbox's per-key limit (rpm=1): the same demo key twice is limited, another
    variant has its own budget."""
    with RecordingSandbox(rpm=1) as url:
        monkeypatch.setenv("CENCORI_NB_SANDBOX", url)
        keys.set("openai", DEMO_KEYS["openai"] + "-alice")
        cencori_nb.chat("one", model="gpt-4o-mini", cache=False)
        with pytest.raises(errors.RateLimitError):
            cencori_nb.chat("two", model="gpt-4o-mini", cache=False, retries=0)
        keys.set("openai", DEMO_KEYS["openai"] + "-bob")
        cencori_nb.chat("three", model="gpt-4o-mini", cache=False)


def test_x_sandbox_fault_header_works_with_demo_keys(srv: RecordingSandbox) -> None:
    """Documented for tests: any request with a demo key plus ``X-Sandbox-Fault``."""
    r = httpx2.post(
        f"{srv.url}/openai/v1/chat/completions",
        headers={"Authorization": f"Bearer {DEMO_KEYS['openai']}", "X-Sandbox-Fault": "401"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 401
    assert srv.received[-1][1]["x-sandbox-fault"] == "401"


def test_local_server_without_a_key_gets_no_key_in_the_sandbox(
    srv: RecordingSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No key stored for a local server: none is invented for the sandbox either (its local
    door answers 401 to a keyless request, which is what the client reports)."""
    monkeypatch.setenv("CENCORI_NB_SANDBOX", srv.url)
    with pytest.raises(errors.AuthenticationError, match="no key was sent"):
        cencori_nb.chat("hi", model="llama3.2", provider="local")
    assert len(srv.received) == 1 and srv.keys_received() == []


# ============================================================ strange sandbox URLs

# (URL template, accepted?) — {p} is the recording server's port. Refused ones must not
# reach it (nor anything else); accepted ones are loopback and get demo keys only.
SANDBOX_URLS = [
    ("http://api.openai.com@127.0.0.1:{p}", False),  # userinfo: the host is 127.0.0.1
    ("http://127.0.0.1:{p}@evil.example", False),  # userinfo the other way round
    ("http://2130706433:{p}", False),  # decimal IPv4 = 127.0.0.1
    ("http://0x7f.0.0.1:{p}", False),  # hex
    ("http://0177.0.0.1:{p}", False),  # octal
    ("http://127.1:{p}", False),  # short form
    ("http://0.0.0.0:{p}", False),  # 'any address'
    ("http://[::]:{p}", False),
    ("http://127.0.0.1.:{p}", False),  # trailing dot on an IP
    ("http://localhost.evil.example:{p}", False),  # loopback-looking remote name
    ("http://127.0.0.1.nip.io:{p}", False),
    ("http://l\u043ecalhost:{p}", False),  # Cyrillic o (IDN look-alike)
    ("http://xn--lcalhost-9fg:{p}", False),  # its punycode: a remote name
    (" http://127.0.0.1:{p}", False),  # whitespace
    ("http://127.0.0.1:{p}\n", False),
    ("http://127.0.0.1:{p}/\t", False),
    ("http://127.0.0.1\u200b:{p}", False),  # zero-width space
    ("http://127.0.0.1:{p}/#frag", False),
    ("http://127.0.0.1:{p}?x=1", False),
    ("http://127.0.0.1\\@evil.example:{p}", False),  # backslash confusion
    ("ftp://127.0.0.1:{p}", False),
    ("http:/127.0.0.1:{p}", False),
    ("HTTP://127.0.0.1:{p}", True),  # uppercase scheme
    ("http://LOCALHOST:{p}", True),  # uppercase host
    ("http://localhost.:{p}", True),  # trailing dot: rebuilt as localhost
    ("http://[::ffff:127.0.0.1]:{p}", True),  # IPv4-mapped loopback
    ("http://127.0.0.1:{p}/", True),
]


@pytest.mark.parametrize(("template", "accepted"), SANDBOX_URLS)
def test_strange_sandbox_urls(
    srv: RecordingSandbox,
    stored: None,
    template: str,
    accepted: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = template.format(p=_port(srv))
    monkeypatch.setenv("CENCORI_NB_SANDBOX", url)
    if accepted:
        cencori_nb.chat("strange url", model="gpt-4o-mini", cache=False)
        assert srv.keys_received() == [DEMO_KEYS["openai"]]
    else:
        with pytest.raises(UnsafeURLError) as info:
            cencori_nb.chat("strange url", model="gpt-4o-mini", cache=False)
        assert "Refused" in str(info.value)
        assert srv.received == []
    srv.assert_no_canary()


def test_other_loopback_addresses_are_loopback(
    stored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """127.0.0.2 (all of 127/8) and ::1 are this machine: accepted, demo keys only."""
    hosts = ["127.0.0.2"]
    if socket.has_ipv6:
        try:
            with socket.socket(socket.AF_INET6) as probe:
                probe.bind(("::1", 0))
            hosts.append("::1")
        except OSError:
            pass
    for host in hosts:
        server = RecordingSandbox(host=host)
        monkeypatch.setenv("CENCORI_NB_SANDBOX", server.start_in_thread())
        try:
            cencori_nb.chat("other loopback", model="gpt-4o-mini", cache=False)
        finally:
            server.stop()
        assert server.keys_received() == [DEMO_KEYS["openai"]], host
        server.assert_no_canary()
    assert parse_url("http://[::1]:5").loopback and parse_url("http://127.0.0.2").loopback


def test_remote_sandbox_needs_opt_in_and_https_and_still_gets_demo_keys(
    stored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CENCORI_NB_SANDBOX", "https://workshop.example")
    with pytest.raises(UnsafeURLError, match="CENCORI_NB_SANDBOX_ALLOW_REMOTE"):
        router.explain_route("gpt-4o-mini")
    monkeypatch.setenv("CENCORI_NB_SANDBOX_ALLOW_REMOTE", "other.example")
    with pytest.raises(UnsafeURLError):
        router.explain_route("gpt-4o-mini")
    monkeypatch.setenv("CENCORI_NB_SANDBOX_ALLOW_REMOTE", "WORKSHOP.example.")
    d = router.explain_route("gpt-4o-mini")
    assert d.base_url == "https://workshop.example/openai/v1"
    assert d.credential.reveal() == DEMO_KEYS["openai"]
    assert any("remote" in w and "demo key" in w for w in d.why)
    monkeypatch.setenv("CENCORI_NB_SANDBOX", "http://workshop.example")  # plain http
    with pytest.raises(UnsafeURLError, match="plain http"):
        router.explain_route("gpt-4o-mini")


def test_magic_refuses_a_remote_sandbox_without_allow_remote(stored: None, shell: Any) -> None:
    from IPython.utils.capture import capture_output

    try:
        for line in (
            "sandbox on http://evil.example:8000",
            "sandbox on http://evil.example:8000 --allow-remote",
            "sandbox on http://api.openai.com@127.0.0.1:9",
        ):
            with capture_output() as cap:
                shell.run_line_magic("cencori", line)
            assert "Refused" in "".join(str(o.data) for o in cap.outputs), line
            assert "CENCORI_NB_SANDBOX" not in os.environ
        with capture_output():
            shell.run_line_magic("cencori", "sandbox on https://evil.example --allow-remote")
        assert os.environ["CENCORI_NB_SANDBOX"] == "https://evil.example"
        assert os.environ["CENCORI_NB_SANDBOX_ALLOW_REMOTE"] == "evil.example"
        assert router.explain_route("gpt-4o-mini").credential.reveal() == DEMO_KEYS["openai"]
    finally:
        shell.run_line_magic("cencori", "sandbox off")
    assert "CENCORI_NB_SANDBOX_ALLOW_REMOTE" not in os.environ


# ============================================================ base_urls with a stored key


def test_loopback_base_url_needs_no_opt_in_and_gets_the_stored_key(
    srv: RecordingSandbox, stored: None
) -> None:
    """A local proxy (or Ollama) on loopback: the user's own machine, no opt-in."""
    settings.update_settings(base_urls={"openai": f"{srv.url}/openai/v1"})
    cencori_nb.chat("via a local proxy", model="gpt-4o-mini")
    assert srv.keys_received() == [CANARIES["openai"]]
    d = router.explain_route("gpt-4o-mini")
    assert any("loopback: no opt-in needed" in w for w in d.why)


@pytest.mark.parametrize(
    "template",
    [
        "http://localhost.evil.example:{p}/openai/v1",  # plain http to a remote name
        "http://api.openai.com@127.0.0.1:{p}/openai/v1",  # userinfo
        "http://2130706433:{p}/openai/v1",  # decimal IP
        "http://127.0.0.1:{p}/openai/v1?x=y",  # query
        "https://api.openai.com.evil.example/v1",  # own host as a prefix of another
        "https://evil.example/v1",  # remote https, not trusted
    ],
)
def test_refused_base_urls_send_nothing(srv: RecordingSandbox, stored: None, template: str) -> None:
    settings.update_settings(base_urls={"openai": template.format(p=_port(srv))})
    with pytest.raises(UnsafeURLError):
        cencori_nb.chat("refused", model="gpt-4o-mini")
    assert srv.received == []


def test_remote_base_url_needs_an_opt_in_naming_the_host(stored: None) -> None:
    settings.update_settings(
        base_urls={"openai": "https://proxy.corp.example/v1", "cencori": "https://gw.corp.example"}
    )
    with pytest.raises(UnsafeURLError, match="trust_host"):
        router.explain_route("gpt-4o-mini")
    settings.trust_host("anthropic", "proxy.corp.example")  # another provider's opt-in
    with pytest.raises(UnsafeURLError):
        router.explain_route("gpt-4o-mini")
    settings.trust_host("openai", "PROXY.corp.example.")
    d = router.explain_route("gpt-4o-mini")
    assert d.base_url == "https://proxy.corp.example/v1"
    assert any("trusted_hosts['openai'] names it" in w for w in d.why)
    assert "proxy.corp.example" in d._repr_markdown_()
    with pytest.raises(UnsafeURLError):  # the managed route's own URL
        router.explain_route("gpt-4o-mini", route="managed")


def test_own_host_and_keyless_local_need_no_opt_in(stored: None) -> None:
    settings.update_settings(
        base_urls={"openai": "HTTPS://API.OPENAI.COM./v1", "local": "http://gpu-box.lan:11434/v1"}
    )
    d = router.explain_route("gpt-4o-mini")
    assert d.base_url == "https://api.openai.com/v1"
    assert any("own host" in w for w in d.why)
    local = router.explain_route("llama3.2", provider="local")
    assert local.base_url == "http://gpu-box.lan:11434/v1" and not local.credential
    keys.set("local", "local-secret-" + "Kq2Wn5")
    with pytest.raises(UnsafeURLError, match="plain http"):  # now it would carry a key
        router.explain_route("llama3.2", provider="local")


def test_route_magic_shows_the_rule(stored: None, shell: Any) -> None:
    from IPython.utils.capture import capture_output

    settings.update_settings(base_urls={"openai": "https://proxy.corp.example/v1"})
    settings.trust_host("openai", "proxy.corp.example")
    with capture_output() as cap:
        shell.run_line_magic("cencori", "route gpt-4o-mini")
    shown = "".join(str(o.data) for o in cap.outputs)
    assert "proxy.corp.example" in shown and "trusted_hosts" in shown
    assert CANARIES["openai"] not in shown


def test_error_messages_never_repeat_userinfo_or_query() -> None:
    for url in (
        "http://user:" + CANARIES["openai"] + "@evil.example/v1",
        "http://evil.example/v1?key=" + CANARIES["google"],
    ):
        with pytest.raises(UnsafeURLError) as info:
            parse_url(url)
        assert all(c not in str(info.value) for c in CANARIES.values())


def test_gateway_metrics_request_carries_the_demo_key(
    srv: RecordingSandbox, stored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``reconcile`` calls the gateway's Metrics API outside the router: same rules."""
    monkeypatch.setenv("CENCORI_NB_SANDBOX", srv.url)
    cencori_nb.reconcile("24h")
    assert srv.keys_received() == [DEMO_KEYS["cencori"]]
    srv.assert_no_canary()


def test_cencori_test_key_keeps_test_mode_through_its_demo_key(
    srv: RecordingSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored ``csk_test_`` key is replaced by the *test* demo key: free test mode holds,
    and the stored key still never travels."""
    test_key = "csk_test_canaryUrl" + "Tq4Wr7Ey1"
    monkeypatch.setenv("CENCORI_NB_SANDBOX", srv.url)
    keys.set_cencori_key(test_key)
    c = cencori_nb.chat("free", model="gpt-4o-mini", route="managed")
    assert c.test_mode and c.credits_charged_usd == 0
    assert srv.keys_received() == ["csk_test_sandbox_demo"]
    assert test_key not in json.dumps([h for _t, h, _b in srv.received])


# ============================================================ keys inside URLs

_SHAPED = "sk-proj-" + "unstoredShape7Qm3Zr8Tx1Lp6"  # key-shaped, not stored


def _url_with_key(template: str, srv: RecordingSandbox) -> str:
    from urllib.parse import quote

    return template.format(
        p=_port(srv),
        k=CANARIES["openai"],
        s=_SHAPED,
        q=quote(CANARIES["openai"], safe=""),
        h="".join(f"%{b:02X}" for b in CANARIES["openai"].encode()),
    )


KEYED_URLS = {
    "stored key in the path": "http://127.0.0.1:{p}/openai/v1/{k}",
    "stored key as a path segment before v1": "https://gw.example/{k}/v1",
    "key-shaped path": "https://gw.example/v1/{s}",
    "percent-encoded stored key": "http://127.0.0.1:{p}/{q}/openai/v1",
    "every byte percent-encoded": "http://127.0.0.1:{p}/{h}/openai/v1",
}


@pytest.mark.parametrize("template", list(KEYED_URLS.values()), ids=list(KEYED_URLS))
@pytest.mark.parametrize("where", ["base_urls", "sandbox_url", "environment"])
def test_a_url_holding_a_key_is_refused_and_never_written(
    srv: RecordingSandbox,
    stored: None,
    private_home: Any,
    monkeypatch: pytest.MonkeyPatch,
    template: str,
    where: str,
) -> None:
    """Before: accepted, written to config.json in clear, shown by %cencori route and
    sent in the request line. Now one KeyInURLError that does not repeat the URL, nothing
    on disk outside the store, nothing sent."""
    from cencori_nb.egress import KeyInURLError

    url = _url_with_key(template, srv)
    with pytest.raises(KeyInURLError) as info:
        if where == "base_urls":
            settings.update_settings(base_urls={"openai": url})
        elif where == "sandbox_url":
            settings.update_settings(sandbox_url=url)
        else:  # set where no write check runs: refused when used
            monkeypatch.setenv("CENCORI_NB_SANDBOX", url)
            cencori_nb.chat("hello", model="gpt-4o-mini")
    shown = f"{info.value} {info.value.hint} {info.value!r}"
    assert CANARIES["openai"] not in shown and _SHAPED not in shown
    assert url not in shown and "%73%6B" not in shown.upper()  # "sk" percent-encoded
    for path in private_home.rglob("*"):
        if path.is_file() and not path.name.startswith("keystore"):
            data = path.read_bytes()
            assert CANARIES["openai"].encode() not in data and _SHAPED.encode() not in data
    assert srv.received == []


@pytest.mark.parametrize("host", ["{k}.example.com", "{s}.gw.example"])
def test_trust_host_holding_a_key_is_refused_without_repeating_it(
    srv: RecordingSandbox, stored: None, private_home: Any, host: str
) -> None:
    from cencori_nb.egress import KeyInURLError

    host = _url_with_key(host, srv).lower()
    with pytest.raises(KeyInURLError) as info:
        settings.trust_host("openai", host)
    assert host not in str(info.value)
    assert (
        not (private_home / "config.json").exists()
        or host.encode() not in (private_home / "config.json").read_bytes()
    )


@pytest.mark.parametrize(
    "url",
    [
        # Cloudflare AI Gateway: an account id (32 hex) and a gateway name in the path
        "https://gateway.ai.cloudflare.com/v1/0123456789abcdef0123456789abcdef/my-gw/openai",
        "https://gw.example/xai-compat/v1",
        "https://gw.example/task-runner/sk-proxy/v1",
    ],
)
def test_ordinary_urls_with_ids_in_the_path_are_not_mistaken_for_keys(
    stored: None, url: str
) -> None:
    settings.update_settings(base_urls={"openai": url})
    assert parse_url(url).url == url
