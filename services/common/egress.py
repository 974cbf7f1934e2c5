"""Where a credential's base URL may point, decided by OPA after DNS resolution.

The gateway fetches ``<base_url>/models`` to verify a key on save, and the worker calls
the base URL on every turn: a base URL is a request the server makes for a user. So
before a base URL is verified or stored, its host is resolved here and OPA
(``credentials.egress`` in stack/opa/authz.rego) decides on the scheme, host, port and
every address: public HTTPS by default; loopback and private ranges only for
allow-listed ``host:port`` names (the simulator). Refusals happen before any
connection, so they never depend on whether something listens at the target.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable

import httpx

from services.common.errors import CredentialError, PolicyUnavailable
from services.common.policy import PolicyClient


def _address(raw: str) -> str:
    """An address as OPA's net.cidr_contains reads it: no IPv6 scope, IPv4 unmapped."""
    address = ipaddress.ip_address(raw.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, sorted; [] when it does not resolve."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return sorted({_address(str(info[4][0])) for info in infos})


# (host, port) -> its addresses, as :func:`resolve` answers.
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def check_base_url(
    policy: PolicyClient, user_id: str, roles: list[str], base_url: str, *, resolver: Resolver | None = None
) -> list[str]:
    """Raise CredentialError unless OPA lets ``base_url`` be reached for this user; return
    the addresses it was checked with (connect to one of those, not to a new lookup)."""
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL:
        raise CredentialError("the base URL is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise CredentialError("the base URL must look like https://host[:port]/path")
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = await (resolver or resolve)(url.host, port)
    target: dict[str, str | int] = {"scheme": url.scheme, "host": url.host, "port": port}
    try:
        decision = await policy.decide(
            "credentials.egress", user_id, roles=roles, url=target, addresses=addresses
        )
    except PolicyUnavailable as exc:
        raise CredentialError("the policy service cannot check this base URL now; try again") from exc
    if not decision.allow:
        raise CredentialError(
            f"this base URL is not allowed ({decision.reason}){_hint(url, port, addresses)}"
        )
    return addresses


def _hint(url: httpx.URL, port: int, addresses: list[str]) -> str:
    """For a host on this machine or a private network, the operator's setting that
    would allow it (a local model server); nothing for other refusals."""
    inward = [ipaddress.ip_address(address) for address in addresses]
    if not inward or not all(
        address.is_loopback
        or (address.is_private and not address.is_link_local and not address.is_unspecified)
        for address in inward
    ):
        return ""
    target = f"{url.host}:{port}" if ":" not in url.host else f"[{url.host}]:{port}"
    return f"; an operator can allow it with the setting A0_EGRESS_ALLOW={target}"


def pinned(url: str, address: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """``url`` aimed at ``address`` (a checked one), with the Host header and TLS server
    name of the original host: a second DNS answer cannot redirect the request."""
    original = httpx.URL(url)
    target = original.copy_with(host=address)
    return str(target), {"Host": original.netloc.decode("ascii")}, {"sni_hostname": original.host}
