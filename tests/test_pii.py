"""PII redaction: each kind, check digits, stable numbering, and what must be left alone."""

from __future__ import annotations

import pytest

from gateway.chat.pii import Redactor, iban_valid, luhn_valid


@pytest.mark.parametrize(("text", "expected"), [
    ("write to jane.doe+news@mail.example.co.uk today", "write to [EMAIL_1] today"),
    ("call +1 (415) 555-2671", "call [PHONE_1]"),
    ("call 0044 20 7946 0958 now", "call [PHONE_1] now"),
    ("office 030 1234567", "office [PHONE_1]"),
    ("US 555-123-4567.", "US [PHONE_1]."),
    ("card 4111 1111 1111 1111 ok", "card [CARD_1] ok"),
    ("card 5500-0000-0000-0004", "card [CARD_1]"),
    ("amex 378282246310005", "amex [CARD_1]"),
    ("IBAN DE89 3704 0044 0532 0130 00", "IBAN [IBAN_1]"),
    ("iban GB82WEST12345698765432.", "iban [IBAN_1]."),
    ("from 192.168.0.1:8080", "from [IP_1]:8080"),
    ("v6 2001:db8:85a3::8a2e:370:7334 and ::1", "v6 [IP_1] and [IP_2]"),
    ("mapped ::ffff:10.0.0.1", "mapped [IP_1]"),
])
def test_detects(text: str, expected: str) -> None:
    assert Redactor().redact(text) == expected


@pytest.mark.parametrize("text", [
    "order 4111 1111 1111 1112",          # fails Luhn
    "IBAN DE00 3704 0044 0532 0130 00",   # fails mod-97
    "released 2024-01-15, due 15.01.2024",  # dates
    "version 1.2.3.4.5 and 10.0.0.256",   # not IPv4
    "meet at 12:30:45",                   # a time, not IPv6
    "reference 123456789012",             # bare digit run
    "price 1,234.56 and 3 items",
    "email me at user@localhost",         # no TLD
])
def test_leaves_alone(text: str) -> None:
    assert Redactor().redact(text) == text


def test_numbering_is_stable_per_request() -> None:
    r = Redactor()
    first = r.redact("a@x.example then b@x.example then a@x.example")
    second = r.redact("again b@x.example, phone +49 30 1234567")
    assert first == "[EMAIL_1] then [EMAIL_2] then [EMAIL_1]"
    assert second == "again [EMAIL_2], phone [PHONE_1]"
    assert r.found == {"EMAIL": 4, "PHONE": 1}
    assert r.total == 5


def test_placeholders_are_not_redacted_again() -> None:
    r = Redactor()
    once = r.redact("+44 20 7946 0958 and 4111111111111111")
    assert r.redact(once) == once


def test_check_digit_helpers() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and not iban_valid("GB83 WEST 1234 5698 7654 32")
    assert not iban_valid("GB82")
