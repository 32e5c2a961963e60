"""Which URLs a spec may hand to consumers (R-OC-3: the custom image of an old-customer card).

`url_problem` is pure: it parses the text, looks nothing up (no DNS), and
returns why the URL is refused or None. Refused: schemes other than http and
https, userinfo (`user@host`), backslashes, whitespace, control, format and
bidi characters and blank look-alikes anywhere, hosts that are not plain
ASCII names (non-ASCII and punycode `xn--` hosts can imitate another
host), names without a dot and an alphabetic top-level domain, local-only
names (localhost, .local, .internal, .home.arpa, ...), and IP literals that
are not public, including the numeric forms a browser reads as IPv4
(`2130706433`, `0x7f.1`, `127.1`).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from urllib.parse import unquote, urlsplit

from sluice.schemas.text import BLANK_LOOKALIKES

SCHEMES = ("http", "https")
# Names only a local network resolves (RFC 6761, RFC 6762, RFC 8375, ICANN's .internal).
LOCAL_SUFFIXES = ("localhost", "localdomain", "local", "internal", "home.arpa")
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_TLD = re.compile(r"^[a-z]{2,63}$")
_IPV4_PART = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")


def _bad_character(ch: str) -> bool:
    # Separators (Z*) cover whitespace; Cf covers the bidi controls U+202A-202E / U+2066-2069 and U+200B.
    return unicodedata.category(ch)[0] in "CZ" or ch in BLANK_LOOKALIKES or ch == "\\"


def _bad_decoded_character(ch: str) -> bool:
    # Percent-encoded: a space (%20) is an ordinary file name character, a control or bidi character is not.
    return unicodedata.category(ch) in {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"} or ch in BLANK_LOOKALIKES


def _named(chars) -> str:
    return ", ".join(list(dict.fromkeys(f"U+{ord(ch):04X}" for ch in chars))[:5])


def _ipv4_number(host: str) -> int:
    """The address a browser reads a numeric host as (WHATWG URL "IPv4 parser"): 1 to 4 parts, each
    decimal, 0x-hex or 0-octal; the last part fills the remaining bytes. ValueError when it is none."""
    parts = host.split(".")
    if not all(_IPV4_PART.match(p) for p in parts) or not 1 <= len(parts) <= 4:
        raise ValueError("not an IPv4 address")
    numbers = []
    for p in parts:
        if p.startswith("0x"):
            numbers.append(int(p[2:] or "0", 16))
        elif len(p) > 1 and p.startswith("0"):
            numbers.append(int(p, 8))  # raises ValueError on 8 or 9: not an address
        else:
            numbers.append(int(p))
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        raise ValueError("not an IPv4 address")
    value = last
    for i, n in enumerate(head):
        value += n << (8 * (3 - i))
    return value


def _looks_numeric(host: str) -> bool:
    # WHATWG: a host whose last label is a number (decimal or 0x-hex) is an IPv4 address.
    last = host.rstrip(".").rsplit(".", 1)[-1]
    return bool(last) and bool(_IPV4_PART.match(last))


def _ip_problem(address: ipaddress.IPv4Address | ipaddress.IPv6Address, sent: str) -> str | None:
    if not address.is_global:
        return f"host {sent} is a private, loopback, link-local or reserved address: only public addresses are allowed"
    return None


def host_problem(host: str) -> str | None:
    """Why the host of a URL (as written, without port) is refused, or None."""
    if host.startswith("["):
        if not host.endswith("]"):
            return "host: an IPv6 address must be in brackets"
        try:
            address = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"host {host} is not a valid IPv6 address"
        return _ip_problem(address, host)
    if not host:
        return "the URL has no host"
    if not host.isascii():
        return "host has non-ASCII characters: refused as a look-alike risk (write a plain ASCII host name)"
    host = host.lower()
    if _looks_numeric(host):
        try:
            address = ipaddress.IPv4Address(_ipv4_number(host))
        except ValueError:
            return f"host {host} is not a valid IPv4 address"
        return _ip_problem(address, host)
    labels = host.split(".")
    if any(label.startswith("xn--") for label in labels):
        return "host has a punycode (xn--) label: refused as a look-alike risk"
    if len(labels) < 2:
        return f"host {host} has no dot: a public host name is expected"
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        return f"host {host} is not a valid host name (ASCII letters, digits, '-' and '.')"
    if not _TLD.match(labels[-1]):
        return f"host {host} has no alphabetic top-level domain"
    if any(host == s or host.endswith("." + s) for s in LOCAL_SUFFIXES):
        return f"host {host} is a local-only name: a public host name is expected"
    return None


def url_problem(url: str) -> str | None:
    """Why `url` may not be handed to consumers, or None when it may."""
    bad = [ch for ch in url if _bad_character(ch)]
    if bad:
        return f"the URL contains whitespace, control, invisible or bidi characters or a backslash: {_named(bad)}"
    scheme, sep, rest = url.partition(":")
    if not sep or scheme.lower() not in SCHEMES:
        return "only http and https URLs are allowed"
    if not rest.startswith("//"):
        return "the URL must be absolute: http(s)://host/..."
    bad = [ch for ch in unquote(url) if _bad_decoded_character(ch)]
    if bad:
        return f"the URL contains percent-encoded control, invisible or bidi characters: {_named(bad)}"
    try:
        netloc = urlsplit(url).netloc
    except ValueError as exc:  # unbalanced brackets, a bracketed host that is no IPv6 address
        return f"the URL cannot be parsed: {exc}"
    if "@" in netloc:
        return "the URL may not carry a user name or password (user@host)"
    # The host as written (urlsplit's .hostname drops the brackets of IPv6 and lowercases).
    host, port = netloc, None
    if netloc.startswith("["):
        end = netloc.find("]")
        if end >= 0 and netloc[end + 1:]:
            host, port = netloc[:end + 1], netloc[end + 1:]
    elif ":" in netloc:
        host, colon, digits = netloc.rpartition(":")
        port = colon + digits
    if port is not None and not (re.fullmatch(r":[0-9]{1,5}", port) and 0 < int(port[1:]) < 65536):
        return f"the URL's port {port[1:]!r} is not a port number"
    return host_problem(host)
