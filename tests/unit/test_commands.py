"""``authsvc check-config`` and ``authsvc lookup`` through ``cli.main``, as operators run them."""

from __future__ import annotations

from pathlib import Path

import pytest

from authsvc.cli import main
from tests.services.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from the repository root, so ``deploy/authsvc.toml`` is the path an operator types."""
    monkeypatch.chdir(ROOT)


# -- check-config ------------------------------------------------------------------------


def test_check_config_deploy_example(in_repo: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "deploy/authsvc.toml"]) == 0
    out = capsys.readouterr().out.splitlines()
    summaries = [line for line in out if line.split(":")[0] in ("imap4", "imaps", "pop3", "pop3s")]
    text = (ROOT / "deploy" / "authsvc.toml").read_text().splitlines()
    first = text.index("[[listener]]") + 1
    assert summaries[0] == (
        f"imap4: imap on 0.0.0.0:143, tls starttls; map file {ROOT}/deploy/popmap; "
        f"outgoing_server none; backend tls none, port 143 (deploy/authsvc.toml:{first})"
    )
    assert [s.split(":")[0] for s in summaries] == ["imap4", "imaps", "pop3", "pop3s"]
    assert out[-1].startswith("ok: 4 listeners, ")


def test_check_config_for_shows_what_that_command_uses(
    in_repo: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """The example's certificates do not exist here: nginx's and the proxy's concern."""
    def warned(*extra: str) -> list[str]:
        assert main(["check-config", *extra, "deploy/authsvc.toml"]) == 0
        return [line.split(": ")[1] for line in capsys.readouterr().out.splitlines()
                if line.startswith("deploy/authsvc.toml:")]

    assert warned("--for", "serve") == []
    assert warned("--for", "haproxy") == []
    nginx = warned("--for", "nginx")
    assert set(nginx) == {"listener.cert", "listener.key"} and len(nginx) == 8
    assert warned("--for", "proxy") == [*nginx, "proxy.forward_client"]
    assert warned() == warned("--for", "all") == [*nginx, "proxy.forward_client"]
    assert main(["check-config", "--for", "serve", "--strict", "deploy/authsvc.toml"]) == 0
    assert main(["check-config", "--for", "proxy", "--strict", "deploy/authsvc.toml"]) == 2


def test_check_config_prints_warnings_as_file_line_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "perdition.imap4.conf"
    path.write_text('map_library ""\noutgoing_server 127.0.0.9\npid_file /run/p.pid\n')
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"{path}:3: pid_file: authsvc writes no pid file (systemd tracks it); "
                      "ignored")
    assert out[1].startswith(f'{path}:0: forward_client: "none" for listeners imap4: ')
    assert out[-1] == "ok: 1 listener, 2 warning(s)"


def test_check_config_strict_fails_on_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "perdition.imap4.conf"
    path.write_text('map_library ""\noutgoing_server 127.0.0.9\npid_file /run/p.pid\n')
    assert main(["check-config", "--strict", str(path)]) == 2
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert err[0] == f"{path}:3: pid_file: authsvc writes no pid file (systemd tracks it); ignored"
    assert err[1].startswith(f"{path}:0: forward_client: ")
    assert err[2:] == ["2 warning(s), errors under --strict"]
    assert "ok:" not in captured.out


def test_check_config_errors_exit_2_with_every_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    imap4 = tmp_path / "perdition.imap4.conf"
    imap4.write_text('map_library ""\noutgoing_server 127.0.0.9\ntimeout soon\n')
    pop3 = tmp_path / "perdition.pop3.conf"
    pop3.write_text('map_library ""\noutgoing_server 127.0.0.9\nbogus\nlog_passwd ok\n')
    assert main(["check-config", str(imap4), str(pop3)]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"{pop3}:3: bogus: unknown option (Perdition would silently ignore this line and the "
        "rest of the file)",
        f"{imap4}:3: timeout: expected a number of seconds, got the string 'soon'",
        "2 error(s), 1 warning(s)",
    ]
    assert captured.out.splitlines() == [f"{pop3}:4: log_passwd: authsvc never logs passwords; "
                                         "ignored"]


def test_check_config_proto_equals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "perdition.conf"
    path.write_text('map_library ""\noutgoing_server 127.0.0.9\n')
    assert main(["check-config", f"pop3s={path}", "--strict"]) == 2  # ssl_all warns
    assert main(["check-config", f"pop3={path}"]) == 0
    assert "pop3: pop3 on 0.0.0.0:110" in capsys.readouterr().out


def test_check_config_takes_config_like_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    imap4 = tmp_path / "perdition.imap4.conf"
    imap4.write_text('map_library ""\noutgoing_server 127.0.0.9\n')
    pop3 = tmp_path / "perdition.conf"
    pop3.write_text('map_library ""\noutgoing_server 127.0.0.9\n')
    assert main(["check-config", "--config", str(imap4), "-c", f"pop3={pop3}"]) == 0
    assert main(["check-config", str(imap4), "-c", f"pop3={pop3}"]) == 0
    out = capsys.readouterr().out.splitlines()
    summaries = [line.split(":")[0] for line in out
                 if not line.startswith(("ok:", str(tmp_path)))]
    assert summaries == ["imap4", "pop3", "imap4", "pop3"]
    assert out.count("ok: 2 listeners, 1 warning(s)") == 2


def test_check_config_warns_once_when_the_stores_get_no_client_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Dovecot's auth penalty would hold every user's login (docs/proxy.md)."""
    listeners = "".join(f"""
[[listener]]
name = "{name}"
protocol = "{protocol}"
tls = "none"
bind = ["127.0.0.1:{port}"]
outgoing_server = ["127.0.0.9"]
""" for name, protocol, port in (("imap4", "imap", 143), ("pop3", "pop3", 110)))
    path = tmp_path / "authsvc.toml"
    path.write_text(listeners)
    assert main(["check-config", str(path)]) == 0
    assert main(["check-config", "--strict", str(path)]) == 2
    captured = capsys.readouterr()
    warned = [line for line in captured.out.splitlines() if "forward_client" in line]
    assert len(warned) == 1, warned  # once, naming every listener
    assert warned[0].startswith(
        f'{path}:0: proxy.forward_client: "none" for listeners imap4, pop3: the stores see '
        "every proxied login come from the proxy's address")
    assert "login_trusted_networks" in warned[0]
    assert captured.out.splitlines()[-1] == "ok: 2 listeners, 1 warning(s)"
    for mode in ("id", "proxy_v2"):
        path.write_text(f'[proxy]\nforward_client = "{mode}"\n' + listeners)
        assert main(["check-config", "--strict", str(path)]) == 0
        assert capsys.readouterr().out.splitlines()[-1] == "ok: 2 listeners, 0 warning(s)"


def _limited_listeners(limits: tuple[int, ...]) -> str:
    return "".join(f"""
[[listener]]
name = "l{n}"
protocol = "imap"
bind = ["127.0.0.1:{1143 + n}"]
outgoing_server = ["127.0.0.9"]
connection_limit = {limit}
""" for n, limit in enumerate(limits))


def _descriptor_warnings(out: str) -> list[str]:
    return [line for line in out.splitlines() if "connection_limit" in line]


def test_check_config_warns_when_the_proxy_sessions_outgrow_the_units_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """LimitNOFILE=262144 of the shipped unit holds 122,848 sessions per process."""
    path = tmp_path / "authsvc.toml"
    forward = '[proxy]\nforward_client = "id"\n'
    path.write_text(forward + _limited_listeners((100_000, 22_848)))
    assert main(["check-config", "--strict", str(path)]) == 0
    assert _descriptor_warnings(capsys.readouterr().out) == []
    path.write_text(forward + _limited_listeners((100_000, 22_849)))
    # The shell's own limit plays no part, however large or small it is.
    for soft in (64, 1 << 30):
        monkeypatch.setattr("resource.getrlimit", lambda _which, soft=soft: (soft, soft))
        assert main(["check-config", str(path)]) == 0
        warned = _descriptor_warnings(capsys.readouterr().out)
        assert warned == [
            f"{path}:0: listener.connection_limit: 122849 sessions per proxy process "
            "(connection_limit: l0 100000, l1 22849) need 262146 descriptors (2 per "
            "session, 64 of its own, and the headroom), more than LimitNOFILE=262144 of the "
            "shipped authsvc-proxy.service, so the proxy would refuse clients before it "
            "holds that many; raise LimitNOFILE (systemctl edit authsvc-proxy) and [proxy] "
            'nofile with it, or lower connection_limit (docs/proxy.md, "Limits")']
    assert main(["check-config", "--strict", str(path)]) == 2


def test_check_config_compares_with_a_configured_nofile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "authsvc.toml"
    listeners = _limited_listeners((3000,))
    path.write_text('[proxy]\nforward_client = "id"\nnofile = 6467\n' + listeners)
    assert main(["check-config", str(path)]) == 0
    (warned,) = _descriptor_warnings(capsys.readouterr().out)
    assert "3000 sessions per proxy process (connection_limit: l0 3000) need 6468 " in warned
    assert "more than [proxy] nofile = 6467, so" in warned
    path.write_text('[proxy]\nforward_client = "id"\nnofile = 6468\n' + listeners)
    assert main(["check-config", "--strict", str(path)]) == 0
    path.write_text('[proxy]\nnofile = 0\n' + listeners)
    assert main(["check-config", str(path)]) == 2
    assert "proxy.nofile: 0 is out of range 1-1073741816" in capsys.readouterr().err


def test_check_config_has_no_session_count_without_every_connection_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A listener without connection_limit leaves the proxy's sessions unbounded."""
    path = tmp_path / "authsvc.toml"
    path.write_text('[proxy]\nforward_client = "id"\nnofile = 64\n'
                    + _limited_listeners((3000, 0)))
    assert main(["check-config", "--strict", str(path)]) == 0
    assert _descriptor_warnings(capsys.readouterr().out) == []


def test_check_config_names_the_perdition_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "perdition.imap4.conf"
    path.write_text('map_library ""\noutgoing_server 127.0.0.9\nconnection_limit 200000\n')
    assert main(["check-config", str(path)]) == 0
    (warned,) = _descriptor_warnings(capsys.readouterr().out)
    assert warned.startswith(f"{path}:0: connection_limit: 200000 sessions per proxy process "
                             "(connection_limit: imap4 200000) need 426734 descriptors")


def test_check_config_without_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--strict"]) == 2
    assert capsys.readouterr().err == (
        "authsvc check-config: no file: give [PROTO=]FILE or --config [PROTO=]FILE\n")


def test_check_config_perdition_examples(in_repo: None, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    files = [f"deploy/perdition/perdition.{n}.conf" for n in ("imap4", "imaps", "pop3", "pop3s")]
    assert main(["check-config", *files]) == 0
    out = capsys.readouterr().out
    assert ("imap4: imap on 0.0.0.0:143, tls starttls; map mysql "
            "nest_mail@dbhost-vpn:3306/nest.mailboxes (key address, server storage_ip, port "
            "constant 143)") in out
    assert "xxxxxxx" not in out


# -- lookup ------------------------------------------------------------------------------


def test_lookup_bob_on_the_file_map(in_repo: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lookup", "Bob", "--config", "deploy/authsvc.toml"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line[:14].strip(): line[15:] for line in lines if line[:14].strip()}
    assert rows["listener"] == "imap4"
    assert rows["map key"] == "bob@riseup.net"
    assert rows["map"].startswith(f"map file {ROOT}/deploy/popmap")
    assert rows["map answer"] == "127.0.0.2"
    assert rows["route"] == "127.0.0.2:143 as 'bob' (from map, backend tls none)"
    assert rows["time"].endswith(" ms")
    steps = [line[15:] for line in lines]
    assert "add_domain   'Bob@riseup.net'" in steps
    assert "lower_case   'bob@riseup.net'" in steps


def test_lookup_pop3_uses_port_110(in_repo: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lookup", "ALICE@riseup.net", "--protocol", "pop3",
                 "--config", "deploy/authsvc.toml"]) == 0
    out = capsys.readouterr().out
    assert "listener       pop3\n" in out
    assert "route          127.0.0.3:110 as 'alice@riseup.net'" in out


def test_lookup_listener_chooses_the_protocol(in_repo: None,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lookup", "bob", "--listener", "pop3s", "--config", "deploy/authsvc.toml"]) == 0
    assert "route          127.0.0.2:110" in capsys.readouterr().out


def test_lookup_unknown_user_is_refused(in_repo: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lookup", "carol", "--config", "deploy/authsvc.toml"]) == 1
    out = capsys.readouterr().out
    assert "map answer     no entry\n" in out
    assert "refused        no_route: not in map\n" in out


SEED_LISTENERS = "the configuration has imap4 (imap), imaps (imap), pop3 (pop3), pop3s (pop3)"


def test_lookup_unknown_listener_lists_the_listeners(
    in_repo: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["lookup", "bob", "--listener", "smtp", "--config", "deploy/authsvc.toml"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"authsvc lookup: no listener named 'smtp'; {SEED_LISTENERS}\n"


def test_lookup_listener_of_another_protocol_is_an_error(
    in_repo: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["lookup", "bob", "--listener", "pop3s", "--protocol", "imap",
                 "--config", "deploy/authsvc.toml"]) == 2
    assert capsys.readouterr().err == (
        f"authsvc lookup: listener 'pop3s' speaks pop3, not imap; {SEED_LISTENERS}\n")


def pop3_only(tmp_path: Path) -> Path:
    """A Perdition POP3 file, the only listener of its configuration."""
    path = tmp_path / "perdition.pop3.conf"
    path.write_text('map_library ""\noutgoing_server 10.0.0.5\n')
    return path


def test_lookup_without_protocol_uses_the_first_listener(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --protocol used to default to imap: "no imap listener named None".
    assert main(["lookup", "Bob", "--config", str(pop3_only(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "listener       pop3\n" in out
    assert "route          10.0.0.5:110 as 'Bob'" in out


def test_lookup_protocol_the_configuration_lacks_lists_the_listeners(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["lookup", "bob", "--protocol", "imap", "--config", str(pop3_only(tmp_path))]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("authsvc lookup: no imap listener; the configuration has "
                            "pop3 (pop3)\n")


@pytest.mark.parametrize(
    ("login", "reason"),
    [("bob\0evil", "control character in login"), ("b" * 300, "login longer than 255 bytes"),
     ("", "empty login")],
)
def test_lookup_bad_login_is_a_clear_refusal(
    in_repo: None, capsys: pytest.CaptureFixture[str], login: str, reason: str
) -> None:
    assert main(["lookup", login, "--config", "deploy/authsvc.toml"]) == 1
    captured = capsys.readouterr()
    assert f"refused        bad_login: {reason}\n" in captured.out
    assert "\0" not in captured.out  # the login is shown escaped
    assert "Traceback" not in captured.out + captured.err


def test_lookup_local_name_for_add_domain(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    (tmp_path / "popmap").write_text("bob@example.org: 10.0.0.5:1143\n")
    (tmp_path / "a.toml").write_text(
        '[login]\nadd_domain = ["lookup"]\n[map]\ntype = "file"\npath = "popmap"\n'
        '[[listener]]\nname = "imap4"\nprotocol = "imap"\n')
    assert main(["lookup", "bob", "--local-name", "mail.example.org",
                 "--config", str(tmp_path / "a.toml")]) == 0
    out = capsys.readouterr().out
    assert "map key        bob@example.org\n" in out
    assert "route          10.0.0.5:1143 as 'bob'" in out


def test_lookup_mysql_down_shows_the_query_and_no_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pw").write_text("s3cret-pw\n")
    port = free_port()  # nothing listens there
    (tmp_path / "a.toml").write_text(
        f'[map]\ntype = "mysql"\nhosts = ["127.0.0.1:{port}"]\npassword_file = "pw"\n'
        'table = "mailboxes"\nserver_column = "storage_ip"\nuser_column = "address"\n'
        "port_constant = 143\nconnect_timeout = 0.5\n"
        '[[listener]]\nname = "imap4"\nprotocol = "imap"\n')
    assert main(["lookup", "bob@riseup.net", "--config", str(tmp_path / "a.toml")]) == 1
    captured = capsys.readouterr()
    rows = {line[:14].strip(): line[15:] for line in captured.out.splitlines()}
    assert "address" in rows["map"]
    assert "mailboxes" in rows["map"]
    assert rows["map answer"].startswith("unavailable")
    assert rows["refused"].startswith("map_unavailable")
    assert "s3cret-pw" not in captured.out + captured.err


def test_lookup_config_error_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.toml").write_text("[[listener]]\nname = 5\n")
    assert main(["lookup", "bob", "--config", str(tmp_path / "a.toml")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'a.toml'}:2: listener.name: expected a string, got the number 5" in err
