"""Several Perdition files in one process: the merge rules of docs/configuration.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from authsvc.config import ConfigError, load_settings

BASE = 'map_library ""\noutgoing_server 127.0.0.9\n'


def files(tmp_path: Path, **texts: str) -> list[str]:
    """Write perdition.<proto>.conf files (or NAME_conf keys) and return their paths."""
    paths = []
    for proto, text in texts.items():
        name = proto.replace("_", ".") if "_" in proto else f"perdition.{proto}.conf"
        path = tmp_path / name
        path.write_text(text)
        paths.append(str(path))
    return paths


def issues(paths: list[str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(paths)
    return [str(i) for i in caught.value.issues]


def test_one_listener_per_file(tmp_path: Path) -> None:
    paths = files(tmp_path, imap4=BASE, pop3=BASE)
    settings = load_settings(paths).settings
    assert [ls.name for ls in settings.listeners] == ["imap4", "pop3"]


def test_agreeing_process_settings_are_fine(tmp_path: Path) -> None:
    paths = files(tmp_path, imap4=BASE + "debug\nusername mail\n",
                  pop3=BASE + "username mail\ndebug\n")
    assert load_settings(paths).settings.log.level == "debug"


def test_debug_in_one_file_only_is_an_error_naming_both_files(tmp_path: Path) -> None:
    imap4, pop3 = files(tmp_path, imap4=BASE, pop3=BASE + "debug\n")
    assert issues([imap4, pop3]) == [
        f"{pop3}:3: debug: log level is 'debug' here but 'info' in {imap4} (the default); "
        "process-wide settings must agree across the files, as one authsvc process serves "
        "every listener"
    ]


def test_the_first_file_setting_it_is_named_too(tmp_path: Path) -> None:
    imap4, pop3 = files(tmp_path, imap4=BASE + "quiet\n", pop3=BASE)
    assert issues([imap4, pop3]) == [
        f"{imap4}:3: quiet: log level is 'error' here but 'info' in {pop3} (the default); "
        "process-wide settings must agree across the files, as one authsvc process serves "
        "every listener"
    ]


def test_different_values_in_both_files(tmp_path: Path) -> None:
    imap4, pop3 = files(tmp_path, imap4=BASE + "username mail\n",
                        pop3=BASE + "\nusername nobody\n")
    assert issues([imap4, pop3]) == [
        f"{pop3}:4: username: username is 'nobody' here but 'mail' in {imap4} (line 3); "
        "process-wide settings must agree across the files, as one authsvc process serves "
        "every listener"
    ]


@pytest.mark.parametrize("line", ["connection_logging", "group mail", "log_facility local0"])
def test_every_process_wide_option_must_agree(tmp_path: Path, line: str) -> None:
    imap4, pop3 = files(tmp_path, imap4=BASE, pop3=BASE + line + "\n")
    (message,) = issues([imap4, pop3])
    assert message.startswith(f"{pop3}:3: {line.split()[0]}: ")
    assert f"in {imap4} (the default)" in message


def test_duplicate_listener_names_name_both_files(tmp_path: Path) -> None:
    imaps, imap4s = files(tmp_path, imaps=BASE + "ssl_mode ssl_listen\nlisten_port 1993\n",
                          imap4s=BASE + "ssl_mode ssl_listen\nlisten_port 2993\n")
    assert issues([imaps, imap4s]) == [
        f"{imap4s}:0: protocol: listener name 'imaps' is already used ({imaps})"
    ]


def test_same_address_and_port_names_both_files(tmp_path: Path) -> None:
    imap4, pop3 = files(tmp_path, imap4=BASE + "bind_address 127.0.0.1:1110\n",
                        pop3=BASE + "\n\nbind_address 127.0.0.1\nlisten_port 1110\n")
    assert issues([imap4, pop3]) == [
        f"{pop3}:5: bind_address: 127.0.0.1:1110 is also listened on by listener 'imap4' as "
        f"127.0.0.1:1110 ({imap4}:3)"
    ]


def test_wildcard_overlaps_a_specific_address(tmp_path: Path) -> None:
    imap4, pop3 = files(tmp_path, imap4=BASE + "listen_port 1143\n",
                        pop3=BASE + "bind_address 127.0.0.1:1143\n")
    (message,) = issues([imap4, pop3])
    assert "127.0.0.1:1143 is also listened on by listener 'imap4' as 0.0.0.0:1143" in message


def test_ipv6_and_ipv4_specific_addresses_do_not_overlap(tmp_path: Path) -> None:
    paths = files(tmp_path, imap4=BASE + "bind_address [::1]:1143\n",
                  pop3=BASE + "bind_address 127.0.0.1:1143\n")
    assert len(load_settings(paths).settings.listeners) == 2


def test_errors_of_every_file_are_reported_together(tmp_path: Path) -> None:
    imap4, pop3 = files(tmp_path, imap4=BASE + "bogus\n", pop3=BASE + "timeout x\n")
    found = issues([imap4, pop3])
    assert [m.split(": ")[0] for m in found] == [f"{imap4}:3", f"{pop3}:3"]


def test_toml_and_perdition_files_do_not_mix(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("")
    imap4, = files(tmp_path, imap4=BASE)
    assert issues([str(tmp_path / "a.toml"), imap4]) == [
        f"{tmp_path / 'a.toml'}:0: (file): give one native TOML file on its own, or Perdition "
        "files (one per listener), not both or several TOML files"
    ]
