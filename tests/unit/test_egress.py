"""The pure parts of the base-URL check: address normalisation and pinning a request to
the address the policy checked."""

from __future__ import annotations

import pytest

from services.common.egress import _address, pinned, resolve

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("fe80::1%eth0", "fe80::1"),
        ("::1", "::1"),
    ],
)
def test_addresses_are_given_to_opa_in_the_form_it_reads(raw: str, expected: str) -> None:
    assert _address(raw) == expected


def test_a_request_is_pinned_to_the_checked_address_with_the_original_name() -> None:
    url, headers, extensions = pinned("https://api.example.com/v1/models", "93.184.215.14")
    assert url == "https://93.184.215.14/v1/models"
    assert headers == {"Host": "api.example.com"} and extensions == {"sni_hostname": "api.example.com"}
    url, headers, _ = pinned("http://localhost:18000/v1/models", "::1")
    assert url == "http://[::1]:18000/v1/models" and headers == {"Host": "localhost:18000"}


async def test_a_name_that_does_not_resolve_has_no_addresses() -> None:
    assert await resolve("no-such-host.invalid", 443) == []
    assert "127.0.0.1" in await resolve("localhost", 80)
