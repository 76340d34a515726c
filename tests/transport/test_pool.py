"""The pooled clients: one per process (a forked child its own), one per event loop."""

from __future__ import annotations

import asyncio

import httpx2

from cencori_nb import state, transport


def test_one_shared_client_with_pool_and_timeouts() -> None:
    """get_client returns one pooled client with connect 10 s / read 60 s."""
    client = transport.get_client()
    assert transport.get_client() is client
    assert client.timeout.connect == 10.0 and client.timeout.read == 60.0
    state.reset("transport")
    assert transport.get_client() is not client
    assert client.is_closed


def test_one_async_client_per_event_loop() -> None:
    """Within one loop the async client is shared; a new loop gets its own."""

    async def grab() -> tuple[httpx2.AsyncClient, httpx2.AsyncClient]:
        return transport.get_async_client(), transport.get_async_client()

    a1, a2 = asyncio.run(grab())
    b1, _ = asyncio.run(grab())
    assert a1 is a2
    assert a1 is not b1


def test_async_client_is_closed_when_its_loop_ends() -> None:
    """asyncio.run shuts the loop down: the loop's pooled client is closed with it."""

    async def grab() -> httpx2.AsyncClient:
        client = transport.get_async_client()
        await asyncio.sleep(0)
        return client

    client = asyncio.run(grab())
    assert client.is_closed


def test_forked_child_gets_its_own_client() -> None:
    """After fork the child builds a new pool instead of sharing the parent's sockets."""
    import os

    parent = transport.get_client()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report whether it got a different client, then leave at once
        try:
            os.write(write_fd, b"new" if transport.get_client() is not parent else b"same")
        finally:
            os._exit(0)
    os.close(write_fd)
    answer = os.read(read_fd, 10)
    os.waitpid(pid, 0)
    os.close(read_fd)
    assert answer == b"new"
    assert transport.get_client() is parent
