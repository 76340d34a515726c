"""Provider prices from genai-prices: exact costs, tiers, cache prices, unknown models."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import genai_prices
import pytest

from cencori_nb import pricing, state
from cencori_nb.errors import PricingError
from cencori_nb.home import ensure_home
from cencori_nb.types import Usage

ROOT = Path(__file__).resolve().parents[1]


def _theirs(model: str, provider_id: str, **usage: int) -> Decimal:
    return genai_prices.calc_price(
        genai_prices.Usage(**usage), model, provider_id=provider_id
    ).total_price


def test_gpt4o_1000_in_500_out_is_exactly_list_price() -> None:
    """gpt-4o at $2.50/$10 per MTok: 1000 in + 500 out = $0.0075, equal to genai-prices."""
    quote = pricing.provider_cost("openai", "gpt-4o", Usage(1000, 500))
    assert quote.cost_usd == Decimal("0.0075")
    assert quote.cost_usd == _theirs("gpt-4o", "openai", input_tokens=1000, output_tokens=500)
    assert quote.version.startswith(f"genai-prices {genai_prices.__version__} (data 20")


def test_returned_dated_model_id_is_priced() -> None:
    """The dated id a provider returns (gpt-4o-2024-08-06) prices like the alias."""
    quote = pricing.provider_cost("openai", "gpt-4o-2024-08-06", Usage(1000, 500))
    assert quote.cost_usd == Decimal("0.0075")


def test_gemini_25_pro_above_200k_uses_the_higher_tier() -> None:
    """Above 200K input tokens every token is billed at the tier price ($2.50/$15)."""
    below = pricing.provider_cost("google", "gemini-2.5-pro", Usage(200_000, 1000)).cost_usd
    above = pricing.provider_cost("google", "gemini-2.5-pro", Usage(250_000, 1000)).cost_usd
    assert below == Decimal("1.25") * 200_000 / 1_000_000 + Decimal(10) * 1000 / 1_000_000
    assert above == Decimal("2.50") * 250_000 / 1_000_000 + Decimal(15) * 1000 / 1_000_000
    assert above == _theirs("gemini-2.5-pro", "google", input_tokens=250_000, output_tokens=1000)


def test_anthropic_cache_read_and_write_prices() -> None:
    """input_tokens include cache tokens: 1000 uncached @3, 1000 write @3.75, 1000 read @0.30."""
    usage = Usage(
        input_tokens=3000, output_tokens=500, cache_read_tokens=1000, cache_write_tokens=1000
    )
    quote = pricing.provider_cost("anthropic", "claude-sonnet-4-5-20250929", usage)
    expected = (
        Decimal(1000) * 3
        + Decimal(1000) * Decimal("3.75")
        + Decimal(1000) * Decimal("0.30")
        + Decimal(500) * 15
    ) / 1_000_000
    assert quote.cost_usd == expected == Decimal("0.01455")
    assert quote.cost_usd == _theirs(
        "claude-sonnet-4-5-20250929",
        "anthropic",
        input_tokens=3000,
        output_tokens=500,
        cache_read_tokens=1000,
        cache_write_tokens=1000,
    )


@pytest.mark.parametrize(
    ("ours", "model", "theirs"),
    [
        ("xai", "grok-3-mini", "x-ai"),
        ("deepseek", "deepseek-chat", "deepseek"),
        ("mistral", "mistral-small-latest", "mistral"),
        ("groq", "llama-3.3-70b-versatile", "groq"),
        ("openrouter", "openai/gpt-4o-mini", "openrouter"),
    ],
)
def test_provider_names_map_to_genai_ids(ours: str, model: str, theirs: str) -> None:
    """Our provider names reach the right genai-prices provider."""
    cost = pricing.provider_cost(ours, model, Usage(1000, 500)).cost_usd
    assert cost is not None and cost > 0
    assert cost == _theirs(model, theirs, input_tokens=1000, output_tokens=500)


def test_gateway_model_ids_with_provider_prefix() -> None:
    """The gateway's 'openai/gpt-4o' and a bare id under 'cencori' both price as gpt-4o."""
    assert pricing.provider_cost("cencori", "openai/gpt-4o", Usage(1000, 500)).cost_usd == Decimal(
        "0.0075"
    )
    assert pricing.provider_cost("cencori", "gpt-4o", Usage(1000, 500)).cost_usd == Decimal(
        "0.0075"
    )


def test_unknown_model_and_local_have_no_price() -> None:
    """No price → cost None (recorded as unknown), never an exception."""
    assert pricing.provider_cost("openai", "no-such-model-x", Usage(10, 10)).cost_usd is None
    assert pricing.provider_cost("local", "llama3.2", Usage(10, 10)).cost_usd is None
    assert pricing.provider_cost("openai", None, Usage(10, 10)).cost_usd is None
    assert pricing.estimate_cost("openai", "no-such-model-x", 10, 10) is None


def test_require_price_fails_closed() -> None:
    """require_price raises PricingError naming the model; a priced model passes."""
    pricing.require_price("openai", "gpt-4o")
    with pytest.raises(PricingError) as info:
        pricing.require_price("openai", "no-such-model-x")
    assert "no-such-model-x" in str(info.value)
    assert info.value.code == "pricing_unavailable"


def test_estimate_cost_matches_provider_cost() -> None:
    """estimate_cost is the price of plain input/output tokens."""
    assert pricing.estimate_cost("openai", "gpt-4o-mini", 1000, 500) == _theirs(
        "gpt-4o-mini", "openai", input_tokens=1000, output_tokens=500
    )


def test_when_selects_time_versioned_prices() -> None:
    """A price with a start date is used from that date: compare with genai-prices directly."""
    when = datetime(2024, 1, 1, tzinfo=UTC)
    ours = pricing.provider_cost("openai", "gpt-4o", Usage(1000, 500), when=when).cost_usd
    theirs = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=1000, output_tokens=500),
        "gpt-4o",
        provider_id="openai",
        genai_request_timestamp=when,
    ).total_price
    assert ours == theirs


def test_lookups_are_cached_per_provider_and_model() -> None:
    """A second quote reuses the cached lookup (misses are cached too)."""
    state.reset("pricing")
    pricing.provider_cost("openai", "gpt-4o", Usage(1, 1))
    pricing.provider_cost("openai", "nope-model", Usage(1, 1))
    assert ("openai", "gpt-4o") in pricing._lookups
    assert pricing._lookups[("openai", "nope-model")] is None
    assert pricing.unit_prices("google", "gemini-2.5-pro")["input_mtok"] == Decimal("1.25")


_USAGES = [
    Usage(1000, 500),
    Usage(3000, 500, 1000, 1000),
    Usage(250_000, 1000, 50_000, 10_000),
    Usage(0, 0),
    Usage(128_001, 9, 0, 0),
    Usage(1_000_001, 7, 3, 2),
    Usage(12, 0, 12, 0),
]
_WHENS = [datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 6, 1, tzinfo=UTC), None]


def test_fast_path_equals_genai_prices_for_every_mapped_model(private_home: Path) -> None:
    """Our direct arithmetic equals genai-prices' calc_price for every model of every provider
    we map, across usages (cache tokens, tier crossings) and price periods: first from
    genai-prices' objects, then again from the price table those lookups wrote to disk."""
    ensure_home()
    first = _compare_every_mapped_model()
    assert (private_home / pricing.TABLE_NAME).is_file()
    state.reset("pricing")
    assert _compare_every_mapped_model() == first
    # the second pass found every model in the table: genai-prices was asked only for the
    # shapes the fast path leaves to it
    slow = {k for k, m in pricing._lookups.items() if m and any(p.rates is None for p in m.periods)}
    assert set(pricing._found) <= slow


def test_time_of_day_prices_equal_genai_prices_every_half_hour(private_home: Path) -> None:
    """DeepSeek's off-peak prices (daily UTC windows) from the table, hour by hour."""
    ensure_home()
    from genai_prices.data import providers

    gprov = next(p for p in providers if p.id == "deepseek")
    models = [m.id for m in gprov.models if isinstance(m.prices, list)]
    assert models
    for fresh in (False, True):
        if fresh:
            state.reset("pricing")
        for model in models:
            for minute in range(0, 24 * 60, 30):
                when = datetime(2026, 3, 1, minute // 60, minute % 60, tzinfo=UTC)
                mine = pricing.provider_cost("deepseek", model, Usage(1000, 500), when=when)
                assert mine.cost_usd == _theirs_at(model, "deepseek", when), (model, when)


def _theirs_at(model: str, provider_id: str, when: datetime) -> Decimal:
    return genai_prices.calc_price(
        genai_prices.Usage(input_tokens=1000, output_tokens=500),
        model,
        provider_id=provider_id,
        genai_request_timestamp=when,
    ).total_price


def _compare_every_mapped_model() -> tuple[int, int, int]:
    from genai_prices.data import providers

    checked = 0
    for ours, pid in pricing.PROVIDER_IDS.items():
        if pid is None:
            continue
        gprov = next(p for p in providers if p.id == pid)
        for model in gprov.models:
            for when in _WHENS:
                for usage in _USAGES:
                    mine = pricing.provider_cost(ours, model.id, usage, when=when).cost_usd
                    try:
                        theirs = genai_prices.calc_price(
                            genai_prices.Usage(
                                input_tokens=usage.input_tokens,
                                output_tokens=usage.output_tokens,
                                cache_read_tokens=usage.cache_read_tokens,
                                cache_write_tokens=usage.cache_write_tokens,
                            ),
                            model.id,
                            provider_id=pid,
                            genai_request_timestamp=when or datetime.now(UTC),
                        ).total_price
                    except LookupError:  # an id its own match rules do not accept
                        assert mine is None
                        continue
                    assert mine == theirs, (ours, model.id, usage, when)
                    checked += 1
    periods = [p for m in pricing._lookups.values() if m is not None for p in m.periods]
    fast = sum(p.rates is not None for p in periods)
    slow = sum(p.rates is None for p in periods)
    assert checked > 1000 and fast > 100 and slow >= 0
    return checked, fast, slow


# -- the price table on disk ----------------------------------------------------------------
_TABLE_PROBE = r"""
import json, sys
from cencori_nb import pricing
from cencori_nb.types import Usage
DATED = "gpt-4o-mini-2024-07-18"
out = {
    "cost": str(pricing.provider_cost("openai", DATED, Usage(1000, 500)).cost_usd),
    "version": pricing.price_version(),
    "window": pricing.context_window("openai", "gpt-4o-mini"),
    "models": len(pricing.catalogue_models("openai")),
    "genai_prices_imported": "genai_prices" in sys.modules,
}
print(json.dumps(out))
"""


def _probe(home: Path) -> dict[str, object]:
    """Price in a fresh process (the table's whole point); what it found and imported."""
    env = {**os.environ, "CENCORI_NB_HOME": str(home), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", _TABLE_PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stderr == ""
    return dict(json.loads(out.stdout))


DATED = "gpt-4o-mini-2024-07-18"  # what the provider returns for gpt-4o-mini


def _expected() -> dict[str, object]:
    info = genai_prices.data_snapshot.get_snapshot().find_provider_model(
        "gpt-4o-mini", None, "openai", None
    )[1]
    return {
        "cost": str(
            _theirs("gpt-4o-mini-2024-07-18", "openai", input_tokens=1000, output_tokens=500)
        ),
        "version": pricing._genai_price_version(),
        "window": info.context_window,
        "models": len(next(p for p in genai_prices.data.providers if p.id == "openai").models),
    }


def test_a_fresh_process_prices_from_the_table_without_genai_prices(private_home: Path) -> None:
    """The first process builds the table (importing genai-prices); the next prices, dates
    and lists models from it alone, with genai-prices' numbers and price_version."""
    ensure_home()
    first = _probe(private_home)
    assert first.pop("genai_prices_imported") is True
    assert (private_home / pricing.TABLE_NAME).is_file()
    assert stat.S_IMODE((private_home / pricing.TABLE_NAME).stat().st_mode) == 0o600
    second = _probe(private_home)
    assert second.pop("genai_prices_imported") is False
    assert first == second == _expected()


@pytest.mark.parametrize(
    "damage",
    [
        b"",
        b"{not json",
        b"[]",
        b'{"format": 1}',
        b"\xff\xfe garbage",
        "truncate",
        "negative price",
        "price not a number",
        "wrong types",
    ],
)
def test_a_damaged_table_is_ignored_and_rebuilt(private_home: Path, damage: object) -> None:
    """A table that does not parse as ours is never read as prices: the next process asks
    genai-prices (same numbers) and writes a good table over it."""
    ensure_home()
    _probe(private_home)
    path = private_home / pricing.TABLE_NAME
    good = path.read_bytes()
    if damage == "truncate":
        data = good[: len(good) // 2]
    elif damage in ("negative price", "price not a number", "wrong types"):
        raw = json.loads(good)
        entry = next(e for e in raw["entries"] if e[2] is not None)
        rates = entry[2][2][0][1]
        if damage == "negative price":
            rates[0] = "-0.15"
        elif damage == "price not a number":
            rates[0] = "NaN"
        else:
            entry[2][1] = "128000"
        data = json.dumps(raw).encode()
    else:
        assert isinstance(damage, bytes)
        data = damage
    path.write_bytes(data)
    found = _probe(private_home)
    assert found.pop("genai_prices_imported") is True
    assert found == _expected()
    assert _probe(private_home)["genai_prices_imported"] is False  # rebuilt


def test_a_cheaper_table_for_other_genai_prices_files_is_not_read(private_home: Path) -> None:
    """A table written for another genai-prices install or version (a synced home, an
    upgrade) is ignored even if well formed, and replaced by one for these files."""
    ensure_home()
    _probe(private_home)
    path = private_home / pricing.TABLE_NAME
    raw = json.loads(path.read_bytes())
    raw["key"][2][2] += 1  # data.py of another size: another version
    for entry in raw["entries"]:
        if entry[2] is not None:
            entry[2][2] = [[None, ["0", "0", "0", "0", None]]]  # free
    path.write_bytes(json.dumps(raw).encode())
    found = _probe(private_home)
    assert found.pop("genai_prices_imported") is True
    assert found == _expected()
    assert json.loads(path.read_bytes())["key"] != raw["key"]


def test_the_table_key_changes_with_the_genai_prices_files(tmp_path: Path) -> None:
    """A new genai-prices version (other data.py, types.py) is another key."""
    package = tmp_path / "genai_prices"
    package.mkdir()
    for name in ("data.py", "types.py", "__init__.py"):
        (package / name).write_text("# v1\n")
    before = pricing._table_key(package)
    assert before is not None and before == pricing._table_key(package)
    (package / "data.py").write_text("# v2 with new prices\n")
    assert pricing._table_key(package) != before
    (package / "data.py").unlink()
    assert pricing._table_key(package) is None  # not installed as files: no table


def _planted(home: Path) -> Path:
    """A well-formed table where every known model is free (what an attacker would plant)."""
    ensure_home()
    _probe(home)
    path = home / pricing.TABLE_NAME
    raw = json.loads(path.read_bytes())
    for entry in raw["entries"]:
        if entry[2] is not None:
            entry[2][2] = [[None, ["0", "0", "0", "0", None]]]
    planted = home.parent / "planted.json"
    planted.write_bytes(json.dumps(raw).encode())
    os.chmod(planted, 0o600)
    path.unlink()
    return planted


def test_a_symlinked_table_is_not_followed(private_home: Path) -> None:
    """prices.json as a symlink to a file of free prices: not read, and replaced by a real
    file (the link's target is not written)."""
    planted = _planted(private_home)
    before = planted.read_bytes()
    (private_home / pricing.TABLE_NAME).symlink_to(planted)
    found = _probe(private_home)
    assert found.pop("genai_prices_imported") is True
    assert found == _expected()
    assert planted.read_bytes() == before
    assert not (private_home / pricing.TABLE_NAME).is_symlink()


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602, 0o644])
def test_a_table_others_can_write_or_read_is_refused(private_home: Path, mode: int) -> None:
    """A table with group or world permissions was not written by us (we write 0600)."""
    planted = _planted(private_home)
    path = private_home / pricing.TABLE_NAME
    os.replace(planted, path)
    os.chmod(path, mode)
    found = _probe(private_home)
    assert found.pop("genai_prices_imported") is True
    assert found == _expected()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # replaced


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_a_table_owned_by_someone_else_is_refused(private_home: Path) -> None:
    planted = _planted(private_home)
    path = private_home / pricing.TABLE_NAME
    os.replace(planted, path)
    os.chown(path, 65534, 65534)
    found = _probe(private_home)
    assert found.pop("genai_prices_imported") is True
    assert found == _expected()


def test_a_home_others_can_write_is_neither_read_nor_written(private_home: Path) -> None:
    """In a home others can write, they could swap the table: it is not used at all."""
    planted = _planted(private_home)
    path = private_home / pricing.TABLE_NAME
    os.replace(planted, path)
    before = path.read_bytes()
    os.chmod(private_home, 0o777)  # noqa: S103  (the attack under test)
    try:
        found = _probe(private_home)
    finally:
        os.chmod(private_home, 0o700)
    assert found.pop("genai_prices_imported") is True
    assert found == _expected()
    assert path.read_bytes() == before  # not written either


def test_no_home_is_created_and_a_symlinked_home_is_not_written(
    tmp_path: Path, private_home: Path
) -> None:
    """Pricing alone never creates the home; through a symlinked home nothing is written."""
    _probe(private_home)
    assert not private_home.exists()
    elsewhere = tmp_path / "synced"
    elsewhere.mkdir(mode=0o700)
    link = tmp_path / "home-link"
    link.symlink_to(elsewhere)
    _probe(link)
    assert list(elsewhere.iterdir()) == []


def test_a_custom_snapshot_is_used_directly(private_home: Path) -> None:
    """UpdatePrices / set_custom_snapshot: genai-prices decides, the table is bypassed."""
    from genai_prices import data_snapshot

    ensure_home()
    pricing.provider_cost("openai", "gpt-4o", Usage(1000, 500))
    snap = data_snapshot.get_snapshot()
    custom = data_snapshot.DataSnapshot(providers=snap.providers, from_auto_update=True)
    data_snapshot.set_custom_snapshot(custom)
    try:
        state.reset("pricing")
        assert pricing._disk_table() is None
        cost = pricing.provider_cost("openai", "gpt-4o", Usage(1000, 500)).cost_usd
        assert cost == Decimal("0.0075")
    finally:
        data_snapshot.set_custom_snapshot(None)


@pytest.mark.parametrize(
    "when",
    [
        ["00:30:00+00:00", "16:30:00"],  # an aware time would fail every later comparison
        ["25:00:00", "16:30:00"],
        ["00:30:00"],
        "2026-13-01",
        {"from": "2025-01-01"},
    ],
)
def test_a_table_with_a_bad_price_period_is_ignored(private_home: Path, when: object) -> None:
    """A period this module would not write makes the whole table unreadable, not a
    request that fails later."""
    ensure_home()
    key = pricing._table_key()
    assert key is not None
    rates = ["0.27", "1.1", "0.07", "0.27", None]
    raw = {
        "format": 1,
        "key": key,
        "version": pricing._genai_price_version(),
        "models": {},
        "entries": [["deepseek", "deepseek-chat", ["deepseek-chat", 64000, [[when, rates]]]]],
    }
    path = private_home / pricing.TABLE_NAME
    path.write_bytes(json.dumps(raw).encode())
    os.chmod(path, 0o600)
    assert pricing._read_table(path, key) is None
    when_ok = ["00:30:00", "16:30:00"]
    raw["entries"][0][2][2][0][0] = when_ok  # type: ignore[index]
    path.write_bytes(json.dumps(raw).encode())
    table = pricing._read_table(path, key)
    assert table is not None and ("deepseek", "deepseek-chat") in table.entries


def test_the_table_is_saved_at_exit_without_a_traceback(private_home: Path) -> None:
    """Lookups of the last second are written at exit; a failure there prints nothing."""
    ensure_home()
    script = (
        "from cencori_nb import pricing\n"
        "from cencori_nb.types import Usage\n"
        "for m in ('gpt-4o', 'gpt-4o-mini', 'gpt-4.1', 'o3-mini'):\n"
        "    pricing.provider_cost('openai', m, Usage(10, 10))\n"
    )
    env = {**os.environ, "CENCORI_NB_HOME": str(private_home), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stderr == ""
    saved = {
        (p, m)
        for p, m, _ in json.loads((private_home / pricing.TABLE_NAME).read_bytes())["entries"]
    }
    assert {("openai", m) for m in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "o3-mini")} <= saved
    # a home that vanished before exit: nothing to write, nothing printed
    script += "import shutil, os; shutil.rmtree(os.environ['CENCORI_NB_HOME'])\n"
    script = script.replace("'gpt-4o', ", "'gpt-4o', 'gpt-4.1-mini', ")
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stderr == ""


def test_lookups_another_process_saved_meanwhile_are_kept(private_home: Path) -> None:
    """Two kernels price different models: each save merges what the other wrote since
    this process read the table, so neither loses the other's lookups."""
    ensure_home()
    pricing.provider_cost("openai", "gpt-4o", Usage(10, 10))  # read (empty) and saved
    _probe(private_home)  # another process adds gpt-4o-mini-2024-07-18 meanwhile
    state.reset("pricing")
    pricing._disk_table()  # this process's view: both so far
    _probe_model = "claude-sonnet-4-5-20250929"
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "from cencori_nb import pricing; from cencori_nb.types import Usage; "
            "pricing.provider_cost('anthropic', 'claude-3-5-haiku-latest', Usage(1, 1))",
        ],
        env={**os.environ, "CENCORI_NB_HOME": str(private_home), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert other.stderr == ""
    pricing.provider_cost("anthropic", _probe_model, Usage(10, 10))  # saves, merging
    raw = json.loads((private_home / pricing.TABLE_NAME).read_bytes())
    saved = {(p, m) for p, m, _ in raw["entries"]}
    assert {
        ("openai", "gpt-4o"),
        ("openai", DATED),
        ("anthropic", "claude-3-5-haiku-latest"),
        ("anthropic", _probe_model),
    } <= saved
