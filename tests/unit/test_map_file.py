"""The flat map file: Perdition's popmap format, exact keys, reload on change, errors by line."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from authsvc.maps import MapEntry, MapUnavailable
from authsvc.maps.file import FileMap, MapFileError, parse_popmap
from authsvc.settings import FileMapSettings

POPMAP = """\
# Perdition popmap: key: [user@]server[:port]
bob@riseup.net: 10.0.0.2
alice@riseup.net:10.0.0.3:993

carol@riseup.net: dave@10.0.0.4:2143   # moved 2024-05
empty@riseup.net:
horms:localhost
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, text: str, mtime: float | None = None) -> None:
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def replace_keeping_size_and_mtime(path: Path, text: str) -> None:
    stat = path.stat()
    replacement = path.with_name(path.name + ".new")
    replacement.write_text(text)
    assert replacement.stat().st_size == stat.st_size
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, path)  # a new inode: mv into place


@pytest.fixture
def popmap(tmp_path: Path) -> Path:
    path = tmp_path / "popmap"
    write(path, POPMAP)
    return path


def file_map(path: Path, **kw: object) -> FileMap:
    return FileMap(FileMapSettings(str(path)), "@", recheck_interval=0.0, **kw)  # type: ignore[arg-type]


async def test_lookups(popmap: Path) -> None:
    m = file_map(popmap)
    assert await m.lookup("bob@riseup.net") == MapEntry("10.0.0.2")
    assert await m.lookup("alice@riseup.net") == MapEntry("10.0.0.3", 993)
    assert await m.lookup("carol@riseup.net") == MapEntry("10.0.0.4", 2143, user="dave")
    assert await m.lookup("horms") == MapEntry("localhost")
    assert await m.lookup("missing@riseup.net") is None
    # An empty value is "no server", the same answer as a missing key.
    assert await m.lookup("empty@riseup.net") is None
    await m.check()
    assert m.describe() == f"map file {popmap}"


@pytest.mark.parametrize(
    "key", ["Bob@riseup.net", "bob@riseup.net ", " bob@riseup.net", "bob@RISEUP.NET", "bob"]
)
async def test_keys_match_byte_exact(popmap: Path, key: str) -> None:
    # As a GDBM fetch: no case folding, no trimming (the login rules run before).
    assert await file_map(popmap).lookup(key) is None


async def test_eight_bit_keys(tmp_path: Path) -> None:
    path = tmp_path / "popmap"
    path.write_bytes("josé@riseup.net: 10.0.0.7\n".encode() + b"caf\xe9@riseup.net: 10.0.0.8\n")
    m = file_map(path)
    assert await m.lookup("josé@riseup.net") == MapEntry("10.0.0.7")
    # A latin-1 byte stays that byte (surrogateescape), matched exactly.
    assert await m.lookup("caf\udce9@riseup.net") == MapEntry("10.0.0.8")
    assert await m.lookup("café@riseup.net") is None


async def test_reloads_when_the_file_changes(popmap: Path) -> None:
    m = file_map(popmap)
    assert await m.lookup("bob@riseup.net") == MapEntry("10.0.0.2")
    write(popmap, "bob@riseup.net: 10.0.0.9\n", mtime=2_000_000_000)
    assert await m.lookup("bob@riseup.net") == MapEntry("10.0.0.9")
    assert await m.lookup("alice@riseup.net") is None


async def test_reloads_on_replacement_with_same_size_and_mtime(popmap: Path) -> None:
    m = file_map(popmap)
    assert await m.lookup("bob@riseup.net") == MapEntry("10.0.0.2")
    replace_keeping_size_and_mtime(popmap, POPMAP.replace("10.0.0.2", "10.0.0.8"))
    assert await m.lookup("bob@riseup.net") == MapEntry("10.0.0.8")


async def test_checks_at_most_once_per_interval(popmap: Path) -> None:
    clock = Clock()
    m = FileMap(FileMapSettings(str(popmap)), clock=clock, recheck_interval=1.0)
    assert await m.lookup("bob@riseup.net") == MapEntry("10.0.0.2")
    write(popmap, "bob@riseup.net: 10.0.0.9\n", mtime=2_000_000_000)
    clock.now += 0.5
    assert await m.lookup("bob@riseup.net") == MapEntry("10.0.0.2")  # not looked at yet
    clock.now += 0.6
    assert await m.lookup("bob@riseup.net") == MapEntry("10.0.0.9")


def test_parse_error_names_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(MapFileError, match=r"^popmap:3: expected 'key: server'"):
        parse_popmap("a: 10.0.0.1\n# fine\nno colon here\n", "popmap")
    with pytest.raises(MapFileError, match=r"^popmap:2: bob: port 'imap' is not a number"):
        parse_popmap("a: 10.0.0.1\nbob: 10.0.0.2:imap\n", "popmap")
    with pytest.raises(MapFileError, match=r"^popmap:1: empty key"):
        parse_popmap(": 10.0.0.1\n", "popmap")
    with pytest.raises(MapFileError, match=r"^popmap:1: .*several colons"):
        parse_popmap("bob: 10.0.0.5:993:143\n", "popmap")


def test_duplicate_keeps_first_and_warns() -> None:
    loaded = parse_popmap("bob: 10.0.0.1\nbob: 10.0.0.2\n", "pm")
    assert loaded.data == {"bob": MapEntry("10.0.0.1")}
    assert loaded.warnings == ("pm:2: duplicate key 'bob', keeping line 1 (as makegdbm does)",)


def test_crlf_lines() -> None:
    assert parse_popmap("bob: 10.0.0.1\r\n", "pm").data == {"bob": MapEntry("10.0.0.1")}


async def test_bad_reload_keeps_last_good_map(
    popmap: Path, caplog: pytest.LogCaptureFixture
) -> None:
    m = file_map(popmap)
    assert await m.lookup("bob@riseup.net") == MapEntry("10.0.0.2")
    write(popmap, "bob@riseup.net: 10.0.0.9\nbroken line\n", mtime=2_000_000_000)
    with caplog.at_level(logging.ERROR, logger="authsvc.maps.file"):
        assert await m.lookup("bob@riseup.net") == MapEntry("10.0.0.2")
        assert await m.lookup("bob@riseup.net") == MapEntry("10.0.0.2")
    with pytest.raises(MapUnavailable, match=rf"{popmap}:2: expected 'key: server'.*still serving"):
        await m.check()
    # Logged once, not once per lookup.
    assert [r.getMessage() for r in caplog.records] == [
        f"map file {popmap}:2: expected 'key: server', found no ':'; keeping the last good contents"
    ]
    write(popmap, "bob@riseup.net: 10.0.0.9\n", mtime=2_000_000_100)
    assert await m.lookup("bob@riseup.net") == MapEntry("10.0.0.9")
    await m.check()


async def test_never_loaded_is_unavailable(tmp_path: Path) -> None:
    m = file_map(tmp_path / "absent")
    with pytest.raises(MapUnavailable, match="absent: No such file"):
        await m.lookup("bob")
    with pytest.raises(MapUnavailable, match="absent: No such file"):
        await m.check()
    broken = tmp_path / "broken"
    write(broken, "x\n")
    with pytest.raises(MapUnavailable, match="broken:1:"):
        await file_map(broken).lookup("bob")


async def test_removed_file_keeps_serving(popmap: Path) -> None:
    m = file_map(popmap)
    assert await m.lookup("bob@riseup.net") == MapEntry("10.0.0.2")
    os.unlink(popmap)
    assert await m.lookup("bob@riseup.net") == MapEntry("10.0.0.2")
    with pytest.raises(MapUnavailable, match="No such file"):
        await m.check()
