"""API keys → tenants: loaded from a file and/or the environment, looked up by the key's hash."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from faceedit.errors import InvalidInputError
from services.common.errors import UnauthenticatedError

MIN_KEY_LENGTH = 16
HEADER = "authorization"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def read_keys_file(path: str | Path) -> dict[str, str]:
    """A JSON object {"key": "tenant"} or lines 'KEY TENANT' ('#' starts a comment)."""
    text = Path(path).read_text()
    if text.lstrip().startswith("{"):
        data = json.loads(text)
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise InvalidInputError("api_keys_file", f"{path}: expected a JSON object of key → tenant strings")
        return dict(data)
    keys: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise InvalidInputError("api_keys_file", f"{path}:{number}: expected 'KEY TENANT'")
        keys[parts[0]] = parts[1]
    return keys


class ApiKeys:
    """Only sha256 digests of the keys stay in memory, so a heap dump or repr never shows a key,
    and the dict lookup on a fixed-length digest does not leak a key prefix through timing."""

    def __init__(self, keys: Mapping[str, str]):
        for key, tenant in keys.items():
            if len(key) < MIN_KEY_LENGTH:
                raise InvalidInputError("api_keys", f"keys must be at least {MIN_KEY_LENGTH} characters "
                                                    f"(tenant {tenant!r} has a shorter one)")
            if not tenant:
                raise InvalidInputError("api_keys", "every key needs a tenant name")
        self._tenants = {_digest(k): t for k, t in keys.items()}

    @classmethod
    def load(cls, path: str = "", inline: Mapping[str, str] | None = None) -> ApiKeys:
        keys = dict(read_keys_file(path)) if path else {}
        keys.update(inline or {})
        return cls(keys)

    def __len__(self) -> int:
        return len(self._tenants)

    def tenant(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
        """The tenant of `authorization: Bearer KEY` in gRPC metadata; UnauthenticatedError otherwise."""
        value = next((v for k, v in metadata or () if k.lower() == HEADER), None)
        if value is None:
            raise UnauthenticatedError("missing 'authorization: Bearer <api key>' metadata")
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        scheme, _, key = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise UnauthenticatedError("authorization metadata must be 'Bearer <api key>'")
        tenant = self._tenants.get(_digest(key.strip()))
        if tenant is None:
            raise UnauthenticatedError("unknown API key")
        return tenant
