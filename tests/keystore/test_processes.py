"""The key store across processes: concurrent writers lose nothing, a killed writer leaves
the old or the new generation."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cencori_nb import keystore, state
from cencori_nb.keystore.store import KeyStore

_WRITER = """
import pathlib, sys, time
from cencori_nb import keys
tag, provider, count, barrier = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
barrier = pathlib.Path(barrier)
(barrier / tag).touch()                        # both writers start together
deadline = time.time() + 120
while len(list(barrier.iterdir())) < 2 and time.time() < deadline:
    time.sleep(0.005)
first = time.time()
for i in range(count):
    keys.set(provider, f"{provider[:2]}-{tag}-key-{i:04d}-padding", project=f"{tag}-{i}")
print(first, time.time(), flush=True)
"""

_LOOPER = """
import sys
from cencori_nb import keys
n = 0
print("ready", flush=True)
while True:
    n += 1
    keys.set("openai", f"sk-loop-generation-{n:08d}")
    keys.set("groq", f"gsk_loop-generation-{n:08d}", project=f"p{n % 3}")
"""


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["CENCORI_NB_HOME"] = str(home)
    env.update(extra)
    return env


@pytest.mark.parametrize("passphrase", [None, "two writers"], ids=["keyfile", "passphrase"])
def test_two_processes_writing_at_once_lose_nothing(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, passphrase: str | None
) -> None:
    """2 × 50 writes to different projects and providers, started together on an empty
    home (both race to create the store): all 100 records are there afterwards."""
    extra = {"CENCORI_NB_PASSPHRASE": passphrase} if passphrase else {}
    barrier = private_home.parent / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, tag, provider, "50", str(barrier)],
            env=_env(private_home, **extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag, provider in (("a", "openai"), ("b", "anthropic"))
    ]
    spans = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        spans.append(tuple(float(x) for x in out.split()))
    (a0, a1), (b0, b1) = spans
    assert a0 < b1 and b0 < a1, f"the writers did not overlap: {spans}"
    if passphrase:
        monkeypatch.setenv("CENCORI_NB_PASSPHRASE", passphrase)
    state.reset("keystore")
    store = keystore.default_store()
    assert len(store.projects()) == 100
    for tag, provider in (("a", "openai"), ("b", "anthropic")):
        for i in range(50):
            got = store.get(provider, f"{tag}-{i}")
            assert got is not None, (provider, tag, i)
            assert got.api_key.reveal() == f"{provider[:2]}-{tag}-key-{i:04d}-padding"
    doc = json.loads((private_home / "keystore.json").read_bytes())
    assert doc["generation"] == 100
    assert len(list(private_home.glob("*.key"))) == (0 if passphrase else 1)


def test_writer_killed_mid_write_leaves_a_whole_generation(private_home: Path) -> None:
    """SIGKILL a writer looping on writes at random moments, many times: the store always
    opens (no KeystoreError), holding a generation at least as new as before the kill."""
    rng = random.Random(1234)
    path = private_home / "keystore.json"
    last_generation = 0
    leftover_temps = 0
    for _round in range(12):
        proc = subprocess.Popen(
            [sys.executable, "-c", _LOOPER],
            env=_env(private_home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        leftover_temps += len(list(private_home.glob(".keystore.json.*.tmp")))
        if not path.exists():  # killed before the very first write finished
            continue
        state.reset("keystore")
        store = KeyStore(path)
        status = store.status("default")  # raises if the file is torn
        generation = json.loads(path.read_bytes())["generation"]
        assert generation >= last_generation
        last_generation = generation
        got = store.get("openai", "default")
        assert got is not None and got.api_key.reveal().startswith("sk-loop-generation-")
        assert [r.provider for r in status] == ["openai"]
        # the backup is a whole generation too
        backup = KeyStore(private_home / "keystore.bak")
        if backup.path.exists():
            backup.status("default")
    assert last_generation > 0
    # the next writer cleans up temp files of killed writers and carries on
    store = KeyStore(path)
    store.set_key("openai", "sk-after-the-kills-000001", project="default")
    assert not list(private_home.glob(".keystore.json.*.tmp"))
    assert store.get("openai", "default").api_key.reveal() == "sk-after-the-kills-000001"  # type: ignore
    print(f"temp files left by killed writers over the rounds: {leftover_temps}")


def test_threads_writing_at_once_lose_nothing(private_home: Path) -> None:
    """4 threads × 10 writes through the one default store: 40 records afterwards."""
    import threading

    from cencori_nb import keys

    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for i in range(10):
                keys.set("openai", f"sk-thread-{t}-{i:03d}-padding", project=f"t{t}-{i}")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors
    state.reset("keystore")
    store = keystore.default_store()
    assert len(store.projects()) == 40
    assert store.get("openai", "t3-9").api_key.reveal() == "sk-thread-3-009-padding"  # type: ignore
