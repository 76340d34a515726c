"""Shared by the key store tests."""

from __future__ import annotations


class FakeSecureKeyring:
    """An in-memory stand-in for a real OS keyring backend."""

    priority = 5

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], str] = {}

    def set_password(self, service: str, username: str, password: str) -> None:
        self.items[(service, username)] = password

    def get_password(self, service: str, username: str) -> str | None:
        return self.items.get((service, username))

    def delete_password(self, service: str, username: str) -> None:
        del self.items[(service, username)]
