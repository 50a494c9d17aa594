"""kvmcache/trace/sizes.py: the one size grammar and its one error message."""

from __future__ import annotations

import pytest

from kvmcache.errors import KvmcacheError
from kvmcache.trace.sizes import parse_size


def test_parse_size():
    assert parse_size("4GiB") == 4 << 30
    assert parse_size("512M") == 512 << 20
    assert parse_size("0x10 k") == 16 << 10
    assert parse_size("1T") == 1 << 40
    assert parse_size("8192") == 8192
    assert parse_size("3B") == 3
    with pytest.raises(Exception, match="is not a size"):
        parse_size("1.5G")


@pytest.mark.parametrize(
    "text, value",
    [
        ("4GiB", 4 << 30),
        ("4G", 4 << 30),
        ("4gb", 4 << 30),
        (" 16 TiB ", 16 << 40),
        ("512M", 512 << 20),
        ("1k", 1024),
        ("0x10MiB", 16 << 20),
        ("4096", 4096),
        ("4096B", 4096),
        (8192, 8192),
    ],
)
def test_parse_size_command_line(text, value) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["4GiBs", "4.5G", "-1G", "4_096", "G", "", "4 PiB", "0o10M"])
def test_parse_size_rejects(text) -> None:
    with pytest.raises(KvmcacheError, match="is not a size"):
        parse_size(text)


def test_the_message_names_what_and_the_grammar() -> None:
    with pytest.raises(KvmcacheError) as e:
        parse_size("lots", "--guest-memory")
    assert e.value.message == (
        "--guest-memory 'lots' is not a size (a decimal or 0x number and a unit "
        "B, K/KB/KiB, M/MB/MiB, G/GB/GiB or T/TB/TiB)"
    )
    with pytest.raises(KvmcacheError, match="guest memory -1 is negative"):
        parse_size(-1, "guest memory")
