"""PII redaction: personal data in prompts replaced by typed placeholders before a request leaves the machine.

What is detected, in this order (each pass sees the previous passes' placeholders, never the values):

| kind | placeholder | rule |
|---|---|---|
| e-mail address | `[EMAIL_n]` | `local@domain.tld` |
| IBAN | `[IBAN_n]` | 2 letters, 2 check digits, 11–30 alphanumerics (spaces allowed in groups), **mod-97 == 1** |
| credit-card number | `[CARD_n]` | 13–19 digits, optionally grouped by spaces or dashes, **Luhn-valid** |
| IPv6 address | `[IP_n]` | anything `ipaddress.IPv6Address` accepts (at least two colons) |
| IPv4 address | `[IP_n]` | four dotted octets 0–255 |
| phone number | `[PHONE_n]` | 7–15 digits, `+`/`00`-prefixed or written with separators (`-`, `.`, `( )`, space) |

Dates (`2024-01-15`, `15.01.2024`) and bare digit runs are not phone numbers.

Numbering is per request and per kind, and stable: the same value gets the same placeholder everywhere in
the request (`[EMAIL_1]` in two messages is one address). Check digits keep false positives low (an order
number that fails Luhn stays). This is a best-effort filter for common formats, not a guarantee: names,
postal addresses and free-form identifiers are not detected. The model's answer is returned as it is
(placeholders are not mapped back).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{0,4})"
                   r"(?![\w:]|\.\d)")
_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                   r"(?![\w.]|\.\d)")
_PHONE = re.compile(r"(?<![\w+])(?:\+|00)?\(?\d[\d ().\-/]{5,22}\d(?![\w])")
_DOTTED = re.compile(r"^\d{1,3}(?:\.\d{1,3}){2,}$")  # versions and IP-like runs, not phones
_DATE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")


def luhn_valid(digits: str) -> bool:
    """True when the digit string passes the Luhn checksum (credit cards)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    """True when `candidate` (spaces allowed) is a structurally valid IBAN with a correct mod-97 check."""
    iban = candidate.replace(" ", "").upper()
    if not 15 <= len(iban) <= 34 or not iban.isalnum():
        return False
    rearranged = iban[4:] + iban[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _card(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _ipv6(match: str) -> bool:
    if match.count(":") < 2 or not re.search(r"[0-9A-Fa-f]", match):
        return False
    try:
        ipaddress.IPv6Address(match)
    except ValueError:
        return False
    return True


def _phone(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    if not 7 <= len(digits) <= 15 or _DATE.match(match.strip()) or _DOTTED.match(match):
        return False
    if match.startswith(("+", "00")):
        return True
    return bool(re.search(r"[ ().\-/]", match))  # written like a phone number, not a bare digit run


@dataclass(frozen=True)
class _Detector:
    kind: str
    pattern: re.Pattern[str]
    check: Callable[[str], bool] | None = None


DETECTORS: tuple[_Detector, ...] = (
    _Detector("EMAIL", _EMAIL),
    _Detector("IBAN", _IBAN, iban_valid),
    _Detector("CARD", _CARD, _card),
    _Detector("IP", _IPV6, _ipv6),
    _Detector("IP", _IPV4),
    _Detector("PHONE", _PHONE, _phone),
)


@dataclass
class Redactor:
    """Redacts the strings of one request with consistent numbering; `found` counts replacements by kind."""

    placeholders: dict[tuple[str, str], str] = field(default_factory=dict)
    found: dict[str, int] = field(default_factory=dict)
    _next: dict[str, int] = field(default_factory=dict)

    def _placeholder(self, kind: str, value: str) -> str:
        key = (kind, value)
        existing = self.placeholders.get(key)
        if existing is None:
            n = self._next.get(kind, 0) + 1
            self._next[kind] = n
            existing = self.placeholders[key] = f"[{kind}_{n}]"
        self.found[kind] = self.found.get(kind, 0) + 1
        return existing

    def redact(self, text: str) -> str:
        """`text` with every detected value replaced by its placeholder."""
        if not text:
            return text
        for detector in DETECTORS:
            text = detector.pattern.sub(lambda m, d=detector: self._replace(d, m), text)
        return text

    def _replace(self, detector: _Detector, match: re.Match[str]) -> str:
        value = match.group(0)
        if detector.check is not None and not detector.check(value):
            return value
        return self._placeholder(detector.kind, value)

    @property
    def total(self) -> int:
        """How many values were replaced."""
        return sum(self.found.values())
