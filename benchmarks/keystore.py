"""Key store timings: unlock (Argon2id), lookup after unlock, write with 100 records.

    .venv/bin/python benchmarks/keystore.py [--rounds N]

Runs in a throw-away home. Every figure is paired with a baseline measured in the same run,
interleaved round by round, and printed as a ratio, because the machine is shared and
absolute numbers move:

- unlock: a cold open of a passphrase store (what a new kernel pays once) vs the bare
  Argon2id derivation and vs a cold open of a key-file store;
- lookup: ``store.get(provider, project)`` on the open store vs ``os.stat`` + a dict lookup
  (the floor: the store checks one stat per access to notice other processes' writes);
- write: ``set_key`` on a store holding 100 records (lock, re-read, verify, seal, temp
  file, fsync, rename, fsync dir) vs ``home.atomic_write`` of the same bytes.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cencori_nb import home, keystore  # noqa: E402
from cencori_nb.keystore import crypto  # noqa: E402
from cencori_nb.keystore.store import KeyStore  # noqa: E402

PASSPHRASE = "benchmark passphrase"  # noqa: S105 (a throw-away store in a temp dir)
PROVIDERS = (
    "openai",
    "anthropic",
    "google",
    "mistral",
    "groq",
    "xai",
    "deepseek",
    "together",
    "openrouter",
    "local",
)


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def _fill(store: KeyStore, n: int) -> None:
    for i in range(n):
        provider = PROVIDERS[i % len(PROVIDERS)]
        store.set_key(provider, f"sk-bench-{i:06d}-{'x' * 40}", project=f"project-{i // 10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--writes", type=int, default=30)
    args = parser.parse_args()
    # the bench keys do not carry each provider's usual prefix; skip those warnings
    logging.getLogger("cencori_nb.keystore").setLevel(logging.ERROR)

    tmp = Path(tempfile.mkdtemp(prefix="cencori-nb-bench-"))
    os.environ["CENCORI_NB_HOME"] = str(tmp / "home")
    os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
    home.ensure_home()
    pass_path = tmp / "home" / "keystore.json"
    file_path = tmp / "home" / "keyfile-store.json"

    os.environ["CENCORI_NB_PASSPHRASE"] = PASSPHRASE
    _fill(KeyStore(pass_path), 100)
    os.environ.pop("CENCORI_NB_PASSPHRASE")
    _fill(KeyStore(file_path), 100)

    # ---- unlock: cold opens, interleaved with the bare KDF and a key-file cold open
    params = crypto.Argon2Params.fresh()
    unlock, kdf, keyfile_open = [], [], []
    for _ in range(args.rounds):
        os.environ["CENCORI_NB_PASSPHRASE"] = PASSPHRASE
        keystore._reset_for_tests()
        runs = crypto.kdf_runs()
        t0 = time.perf_counter()
        store = KeyStore(pass_path)
        assert store.get("openai", "project-0") is not None
        unlock.append(time.perf_counter() - t0)
        assert crypto.kdf_runs() == runs + 1
        t0 = time.perf_counter()
        crypto.derive_kek(PASSPHRASE, params)
        kdf.append(time.perf_counter() - t0)
        os.environ.pop("CENCORI_NB_PASSPHRASE")
        keystore._reset_for_tests()
        t0 = time.perf_counter()
        assert KeyStore(file_path).get("openai", "project-0") is not None
        keyfile_open.append(time.perf_counter() - t0)

    # ---- lookups on the open passphrase store vs stat + dict
    os.environ["CENCORI_NB_PASSPHRASE"] = PASSPHRASE
    keystore._reset_for_tests()
    store = KeyStore(pass_path)
    store.status("project-0")
    runs_before = crypto.kdf_runs()
    table = {("project-3", "groq"): object()}
    lookup, floor = [], []
    n = args.lookups // args.rounds
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            store.get("groq", "project-3")
        lookup.append((time.perf_counter() - t0) / n)
        t0 = time.perf_counter()
        for _ in range(n):
            os.stat(pass_path)
            table.get(("project-3", "groq"))
        floor.append((time.perf_counter() - t0) / n)
    assert crypto.kdf_runs() == runs_before, "a lookup ran the KDF again"

    # ---- writes with 100 records vs atomic_write of the same bytes
    raw = pass_path.read_bytes()
    scratch = tmp / "home" / "scratch.json"
    write, atomic = [], []
    for i in range(args.writes):
        t0 = time.perf_counter()
        store.set_key("openai", f"sk-bench-rewrite-{i:06d}-{'y' * 40}", project="project-0")
        write.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        home.atomic_write(scratch, raw, backup=scratch.with_suffix(".bak"))
        atomic.append(time.perf_counter() - t0)
    records = len(store._records())

    print(f"key store benchmark ({args.rounds} rounds, medians; shared machine: noisy)")
    print(f"  store: {records} records, {len(pass_path.read_bytes())} bytes on disk")
    print(f"  unlock, passphrase store, cold open : {_median_ms(unlock):8.1f} ms")
    print(
        f"    bare Argon2id m=19456 t=2 p=1     : {_median_ms(kdf):8.1f} ms "
        f"(unlock / KDF = {statistics.median(unlock) / statistics.median(kdf):.2f}x)"
    )
    print(
        f"    key-file store, cold open         : {_median_ms(keyfile_open):8.2f} ms "
        f"(passphrase / key file = "
        f"{statistics.median(unlock) / statistics.median(keyfile_open):.0f}x)"
    )
    lk, fl = statistics.median(lookup), statistics.median(floor)
    print(
        f"  lookup after unlock (get)           : {lk * 1e6:8.2f} µs "
        f"(vs stat+dict floor {fl * 1e6:.2f} µs = {lk / fl:.2f}x)"
    )
    print(
        f"    unlock / lookup                   : {statistics.median(unlock) / lk:8.0f}x "
        "(one unlock per process, then lookups)"
    )
    wr, at = statistics.median(write), statistics.median(atomic)
    print(
        f"  write (set_key) with 100 records    : {wr * 1e3:8.2f} ms "
        f"(vs bare atomic_write {at * 1e3:.2f} ms = {wr / at:.2f}x)"
    )


if __name__ == "__main__":
    main()
