"""The value types of the settings that plain pydantic types do not cover: how a variable's
text is parsed and checked (config.py reads the environment and uses them; nothing here
reads it). A bad value raises ValueError with what was expected and what was given;
pydantic's message then names the variable.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qsl, urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, PositiveFloat
from pydantic_settings import NoDecode

# Finite: "inf" would pass as positive, then overflow a socket timeout at runtime.
Seconds = Annotated[PositiveFloat, Field(allow_inf_nan=False)]
# A wait that may be 0 (do not wait), finite and at most a day (more is a unit mistake).
WaitSeconds = Annotated[float, Field(ge=0, le=86_400, allow_inf_nan=False)]
# The longest SESSION_WARNING_SECONDS offset: a day (a bigger one is a unit mistake).
MAX_WARNING_SECONDS = 86_400


def parse_warning_seconds(value: object) -> object:
    """SESSION_WARNING_SECONDS as text: "300,60" -> [300, 60]; "" -> [] (no warnings).
    Each a whole number of seconds, 1 to MAX_WARNING_SECONDS."""
    if not isinstance(value, str):
        return value  # a tuple or list from code: checked by the field's type
    items = [item.strip() for item in value.split(",")] if value.strip() else []
    if not all(item.isascii() and item.isdigit() for item in items) or not all(
        1 <= int(item) <= MAX_WARNING_SECONDS for item in items
    ):
        raise ValueError(
            "must be a comma-separated list of whole seconds, each 1 to"
            f" {MAX_WARNING_SECONDS} (e.g. 300,60), or empty for none; got {value!r}"
        )
    return [int(item) for item in items]


def largest_first(offsets: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(sorted(set(offsets), reverse=True))


# NoDecode: the environment's "300,60" reaches the parser as text, not as JSON. Kept
# largest first, without duplicates (sessions/warnings.py relies on it).
WarningSeconds = Annotated[
    tuple[Annotated[int, Field(ge=1, le=MAX_WARNING_SECONDS)], ...],
    NoDecode,
    BeforeValidator(parse_warning_seconds),
    AfterValidator(largest_first),
]


def parse_origins(value: object) -> object:
    """CORS_ALLOWED_ORIGINS as text: "https://app.example.com,http://localhost:3000" ->
    the origins as a browser sends them (scheme and host lower-cased, no default port);
    "" -> [] (no cross-origin caller). Each exactly scheme://host[:port], http or https:
    no path, no wildcard (a browser's Origin header is compared for equality)."""
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        value = ",".join(value)  # from code: checked like the environment's text
    if not isinstance(value, str):
        return value  # refused by the field's type
    items = [item.strip() for item in value.split(",")] if value.strip() else []
    origins = []
    for item in items:
        parts = urlsplit(item)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if (
            parts.scheme.lower() not in ("http", "https")
            or not parts.hostname
            or "*" in item
            or parts.username is not None
            or port == -1
            or item.rstrip("/").lower() != f"{parts.scheme}://{parts.netloc}".lower()
            or parts.query
            or parts.fragment
        ):
            raise ValueError(
                "must be a comma-separated list of origins, each scheme://host[:port] with"
                " http or https and nothing after it (e.g. https://app.example.com), or empty"
                f" for none; got {item!r}"
            )
        scheme = parts.scheme.lower()
        default = {"http": 80, "https": 443}[scheme]
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        origins.append(f"{scheme}://{host}" + (f":{port}" if port not in (None, default) else ""))
    return list(dict.fromkeys(origins))


# NoDecode: the environment's "a,b" reaches the parser as text, not as JSON.
Origins = Annotated[tuple[str, ...], NoDecode, BeforeValidator(parse_origins)]


def parse_sentinels(value: object) -> object:
    """VALKEY_SENTINELS as text: "s1:26379,s2:26379" -> [("s1", 26379), ("s2", 26379)];
    "" -> [] (no Sentinels). IPv6 hosts in brackets: "[::1]:26379"."""
    if not isinstance(value, str):
        return value  # a tuple or list from code: checked by the field's type
    addresses: list[tuple[str, int]] = []
    for item in (i.strip() for i in value.split(",")) if value.strip() else ():
        host, _, port = item.rpartition(":")
        bracketed = host.startswith("[") and host.endswith("]")
        host = host[1:-1] if bracketed else host
        if (
            not host
            or any(c.isspace() or c in "/@[]" or (c == ":" and not bracketed) for c in host)
            or not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535)
        ):
            raise ValueError(
                "must be a comma-separated list of host:port (e.g."
                f" sentinel-1:26379,sentinel-2:26379), or empty for none; got {item!r}"
            )
        addresses.append((host, int(port)))
    return addresses


# NoDecode: the environment's "h:p,h:p" reaches the parser as text, not as JSON.
SentinelAddresses = Annotated[
    tuple[tuple[str, Annotated[int, Field(ge=1, le=65535)]], ...],
    NoDecode,
    BeforeValidator(parse_sentinels),
]


def hash_tag(prefix: str) -> str | None:
    """The hash tag a key starting with `prefix` hashes on (Valkey Cluster: the text
    between the first `{` and the next `}`, when not empty), or None when the prefix
    does not fix one (then each key hashes whole, and keys spread over slots)."""
    start = prefix.find("{")
    end = prefix.find("}", start + 1) if start >= 0 else -1
    return prefix[start + 1 : end] if end > start + 1 else None


def check_valkey_topology(
    *,
    url: str,
    sentinels: bool,
    sentinel_username: str | None,
    sentinel_password_set: bool,
    sentinel_tls: bool | None,
    cluster: bool,
    key_prefix: str,
) -> None:
    """The Valkey variables that only make sense together; ValueError naming them (never
    a secret's value), checked in this order:

    * with Sentinels they name the server (SPEC §8): VALKEY_URL may leave out the host;
    * the Sentinels' credentials and TLS mean nothing without Sentinels: set alone, they
      are a mistake (a password meant for VALKEY_URL?);
    * TLS options (`?ssl_ca_certs=...`) on a plaintext VALKEY_URL are a forgotten `s`
      (valkey-py would fail each connection with a TypeError): refused, unless
      VALKEY_SENTINEL_TLS=true, whose Sentinels then use them (the primary ignores them);
    * cluster mode needs every key in one slot: Lua scripts and the seed's swap touch
      several keys at once, which a cluster allows only within one slot."""
    parts = urlsplit(url)
    if not sentinels and not parts.hostname:
        raise ValueError(
            "VALKEY_URL must name a host (redis://host:6379/0), unless VALKEY_SENTINELS"
            " names the Sentinels that know it"
        )
    given = [
        name
        for name, is_set in (
            ("VALKEY_SENTINEL_USERNAME", sentinel_username is not None),
            ("VALKEY_SENTINEL_PASSWORD", sentinel_password_set),
            ("VALKEY_SENTINEL_TLS", sentinel_tls is not None),
        )
        if is_set
    ]
    if given and not sentinels:
        raise ValueError(
            f"{', '.join(given)} set without VALKEY_SENTINELS: they apply to the"
            " Sentinels only (the primary's password goes in VALKEY_URL)"
        )
    if sentinel_username is not None and not sentinel_password_set:
        raise ValueError("VALKEY_SENTINEL_USERNAME needs VALKEY_SENTINEL_PASSWORD")
    options = sorted({k for k, _ in parse_qsl(parts.query) if k.startswith("ssl_")})
    if options and parts.scheme in ("redis", "valkey") and not sentinel_tls:
        raise ValueError(
            f"VALKEY_URL has TLS options ({', '.join(options)}) but starts with"
            f" {parts.scheme}://: use rediss:// or valkeys:// for TLS"
        )
    if not cluster:
        return
    if sentinels:
        raise ValueError("VALKEY_CLUSTER=true and VALKEY_SENTINELS exclude each other")
    if hash_tag(key_prefix) is None:
        raise ValueError(
            "VALKEY_CLUSTER=true needs a hash tag in VALKEY_KEY_PREFIX (e.g."
            f" VALKEY_KEY_PREFIX={{hb}}:) so that every key shares one slot;"
            f" got {key_prefix!r}"
        )
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("VALKEY_CLUSTER=true: VALKEY_URL must use database 0 (or none)")
