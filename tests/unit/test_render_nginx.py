"""render-nginx: the text nginx reads, checked line by line (no nginx needed here)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from authsvc.redact import Secret
from authsvc.render import (
    NginxOptions,
    RenderError,
    format_time,
    nginx_quote,
    nginx_view,
    render_nginx,
)
from authsvc.settings import (
    BackendTls,
    HostPort,
    HttpSettings,
    ListenTls,
    LoginPolicy,
    MailProtocol,
    NginxSettings,
    Settings,
    Stage,
    TlsSettings,
)
from authsvc.sizing import nginx_sizing
from tests.golden.cases import nest, nest_listener


def servers(text: str) -> list[str]:
    """The bodies of the server {} blocks, in order."""
    return re.findall(r"\n    server \{\n(.*?)\n    \}", text, re.S)


def lines(block: str) -> list[str]:
    return [line.strip() for line in block.splitlines()]


def render(settings: Settings, **options: object) -> str:
    return render_nginx(settings, NginxOptions(**options)).text  # type: ignore[arg-type]


def test_one_server_per_listener_on_the_standard_ports() -> None:
    blocks = [lines(b) for b in servers(render(nest()))]
    assert len(blocks) == 4
    imap4, imaps, pop3, pop3s = blocks
    assert imap4[:3] == ["listen 143;", "protocol imap;", "starttls on;"]
    assert imaps[:2] == ["listen 993 ssl;", "protocol imap;"]
    assert pop3[:3] == ["listen 110;", "protocol pop3;", "starttls on;"]
    assert pop3s[:2] == ["listen 995 ssl;", "protocol pop3;"]
    assert not any(line.startswith("starttls") for line in imaps + pop3s)


def test_imap_capability_without_starttls_which_nginx_adds_itself() -> None:
    imap4 = lines(servers(render(nest()))[0])
    assert (
        "imap_capabilities IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT "
        "THREAD=REFERENCES SORT QUOTA IDLE;" in imap4
    )
    text = render(nest())
    assert "# note: capability left to nginx: STARTTLS" in text


def test_auth_and_id_and_logindisabled_are_left_to_nginx() -> None:
    listener = replace(
        nest_listener("imap4", MailProtocol.IMAP, ListenTls.STARTTLS),
        capability=("IMAP4rev1", "AUTH=PLAIN", "ID", "LOGINDISABLED", "IDLE", "IDLE"),
    )
    block = lines(servers(render(Settings(listeners=(listener,))))[0])
    assert "imap_capabilities IMAP4rev1 IDLE;" in block


def test_pop3_capabilities_one_argument_per_line_quoted_when_needed() -> None:
    listener = replace(
        nest_listener("pop3", MailProtocol.POP3, ListenTls.STARTTLS),
        capability=("TOP", "USER", "UIDL", "SASL PLAIN", "STLS", "RESP-CODES", "EXPIRE 30"),
    )
    block = lines(servers(render(Settings(listeners=(listener,))))[0])
    assert 'pop3_capabilities TOP USER UIDL RESP-CODES "EXPIRE 30";' in block


def test_empty_capability_keeps_nginx_default() -> None:
    listener = replace(nest_listener("imap4", MailProtocol.IMAP, ListenTls.NONE), capability=())
    assert "capabilities" not in render(Settings(listeners=(listener,)))


def test_every_server_sends_listener_local_name_and_secret() -> None:
    settings = nest(http=HttpSettings(secret=Secret('s3 "xyzzy'), secret_header="X-Key"))
    text = render(settings)
    for name, block in zip(("imap4", "imaps", "pop3", "pop3s"), servers(text), strict=True):
        headers = [line for line in lines(block) if line.startswith("auth_http_header")]
        assert headers == [
            f"auth_http_header X-Authsvc-Listener {name};",
            "auth_http_header X-Authsvc-Local-Name 0.0.0.0;",
            'auth_http_header X-Key "s3 \\"xyzzy";',
        ]
    # The view model holds the secret but never prints it.
    assert "xyzzy" not in repr(nginx_view(settings))


def test_no_secret_no_secret_header() -> None:
    assert "X-Authsvc-Key" not in render(nest())


def test_bad_secret_header_name_is_refused() -> None:
    with pytest.raises(RenderError, match="secret_header"):
        render(nest(http=HttpSettings(secret=Secret("x"), secret_header="X_Key")))


def test_local_name_is_the_bound_address_or_the_server_name() -> None:
    bound = replace(
        nest_listener("imap4", MailProtocol.IMAP, ListenTls.STARTTLS),
        bind=(HostPort("192.0.2.7"), HostPort("192.0.2.8", 1143)),
    )
    wildcard = nest_listener("imaps", MailProtocol.IMAP, ListenTls.IMPLICIT)
    settings = Settings(
        listeners=(bound, wildcard), nginx=NginxSettings(server_name="mail.example.org")
    )
    blocks = [lines(b) for b in servers(render(settings))]
    # One server per distinct address: the header is static per server.
    assert blocks[0][0] == "listen 192.0.2.7:143;"
    assert "auth_http_header X-Authsvc-Local-Name 192.0.2.7;" in blocks[0]
    assert blocks[1][0] == "listen 192.0.2.8:1143;"
    assert "auth_http_header X-Authsvc-Local-Name 192.0.2.8;" in blocks[1]
    assert "auth_http_header X-Authsvc-Local-Name mail.example.org;" in blocks[2]
    assert "server_name mail.example.org;" in render(settings)


def test_warns_when_add_domain_needs_a_local_name_it_cannot_have() -> None:
    listener = replace(
        nest_listener("imap4", MailProtocol.IMAP, ListenTls.STARTTLS),
        login=LoginPolicy(add_domain=frozenset({Stage.LOOKUP})),
    )
    rendered = render_nginx(Settings(listeners=(listener,)))
    assert len(rendered.warnings) == 1
    assert "add_domain needs a local name" in rendered.warnings[0]
    assert "# WARNING: listener imap4: add_domain needs a local name" in rendered.text
    # The seed has explicit_domain, so no warning there.
    assert render_nginx(nest()).warnings == ()


def test_auth_http_from_settings_unix_socket_and_override() -> None:
    assert "auth_http http://127.0.0.1:9143/auth;" in render(nest())
    v6 = nest(http=HttpSettings(listen=HostPort("::1", 8000), path="/nginx"))
    assert "auth_http http://[::1]:8000/nginx;" in render(v6)
    unix = nest(http=HttpSettings(unix="/run/authsvc/auth.sock"))
    assert "auth_http unix:/run/authsvc/auth.sock:/auth;" in render(unix)
    assert "auth_http http://10.0.0.5:80/x;" in render(nest(), auth_http="http://10.0.0.5:80/x")
    with pytest.raises(RenderError, match="https"):
        render(nest(), auth_http="https://127.0.0.1/auth")


def test_mail_level_directives() -> None:
    text = render(nest())
    mail = lines(text.split("mail {", 1)[1].split("    server {", 1)[0])
    assert "auth_http_timeout 5s;" in mail
    assert "proxy_pass_error_message on;" in mail
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in mail
    assert "ssl_session_cache shared:AUTHSVC_MAIL:10m;" in mail
    assert not any(line.startswith("set_real_ip_from") for line in mail)


def test_no_tls_listener_no_certificates_and_no_session_cache() -> None:
    listener = nest_listener("imap4", MailProtocol.IMAP, ListenTls.NONE)
    text = render(Settings(listeners=(listener,)))
    assert "ssl_" not in text
    assert "starttls" not in text


def test_certificates_from_settings_and_overrides() -> None:
    block = lines(servers(render(nest()))[1])
    assert "ssl_certificate /etc/certs/mail.riseup.net/cert.pem;" in block
    assert "ssl_certificate_key /etc/certs/mail.riseup.net/key.pem;" in block
    block = lines(servers(render(nest(), ssl_cert="/tmp/c.pem", ssl_key="/tmp/k.pem"))[1])
    assert "ssl_certificate /tmp/c.pem;" in block
    assert "ssl_certificate_key /tmp/k.pem;" in block


def test_tls_without_certificate_is_an_error() -> None:
    listener = replace(
        nest_listener("imaps", MailProtocol.IMAP, ListenTls.IMPLICIT), tls_files=TlsSettings()
    )
    with pytest.raises(RenderError, match=r"listener imaps: TLS .* needs a certificate"):
        render(Settings(listeners=(listener,)))


def test_tls_listen_force_is_starttls_only() -> None:
    listener = replace(
        nest_listener("imap4", MailProtocol.IMAP, ListenTls.STARTTLS), tls_required=True
    )
    assert "starttls only;" in render(Settings(listeners=(listener,)))


@pytest.mark.parametrize("backend", [BackendTls.IMPLICIT, BackendTls.STARTTLS_REQUIRED])
def test_required_backend_tls_cannot_be_rendered(backend: BackendTls) -> None:
    listener = replace(
        nest_listener("imaps", MailProtocol.IMAP, ListenTls.IMPLICIT), backend_tls=backend
    )
    with pytest.raises(RenderError, match=r"TLS to the backend .* impossible with nginx"):
        render(Settings(listeners=(listener,)))


def test_opportunistic_backend_tls_and_connection_limit_are_noted() -> None:
    listener = replace(
        nest_listener("imap4", MailProtocol.IMAP, ListenTls.STARTTLS),
        backend_tls=BackendTls.STARTTLS,
        connection_limit=50,
    )
    text = render(Settings(listeners=(listener,)))
    assert "# note: tls_outgoing ignored: nginx talks plaintext to backends" in text
    assert "# note: connection_limit 50 not enforced" in text


def test_timeouts() -> None:
    block = lines(servers(render(nest()))[0])
    assert "proxy_timeout 30m;" in block
    assert "timeout 30m;" in block  # Perdition's authenticate_timeout default, 1800 s
    listener = replace(
        nest_listener("imap4", MailProtocol.IMAP, ListenTls.NONE),
        idle_timeout=0.0,
        login_timeout=90.0,
    )
    block = lines(servers(render(Settings(listeners=(listener,))))[0])
    assert "proxy_timeout 24h;" in block  # Perdition timeout 0 = never
    assert "timeout 90s;" in block


def test_proxy_protocol_from_settings_or_options() -> None:
    settings = nest(nginx=NginxSettings(proxy_protocol_from=("10.0.0.0/24", "::1")))
    text = render(settings)
    assert "set_real_ip_from 10.0.0.0/24;" in text
    assert "set_real_ip_from ::1;" in text
    listens = [lines(b)[0] for b in servers(text)]
    assert listens == [
        "listen 143 proxy_protocol;",
        "listen 993 ssl proxy_protocol;",
        "listen 110 proxy_protocol;",
        "listen 995 ssl proxy_protocol;",
    ]
    text = render(settings, proxy_protocol_from=("127.0.0.1",))
    assert "set_real_ip_from 127.0.0.1;" in text
    assert "10.0.0.0/24" not in text


def test_bind_and_listen_offset() -> None:
    listens = [lines(b)[0] for b in servers(render(nest(), bind="127.0.0.2", listen_offset=10000))]
    assert listens == [
        "listen 127.0.0.2:10143;",
        "listen 127.0.0.2:10993 ssl;",
        "listen 127.0.0.2:10110;",
        "listen 127.0.0.2:10995 ssl;",
    ]
    listens = [lines(b)[0] for b in servers(render(nest(), bind="[::1]"))]
    assert listens[0] == "listen [::1]:143;"
    with pytest.raises(RenderError, match="out of range"):
        render(nest(), listen_offset=65500)


def test_two_listeners_on_one_port_is_an_error() -> None:
    a = nest_listener("imap4", MailProtocol.IMAP, ListenTls.STARTTLS)
    b = replace(a, name="other")
    with pytest.raises(RenderError, match="143 is also used by listener imap4"):
        render(Settings(listeners=(a, b)))


def test_include_form_says_where_it_goes_and_loads_nothing() -> None:
    text = render(nest())
    assert "include /etc/nginx/mail.conf;" in text
    assert "after the events {} block" in text
    assert "modules-enabled/50-mod-mail.conf" in text
    assert "Do NOT put this file in conf.d/" in text
    assert "load_module" not in text
    assert "\nevents {" not in text
    assert text.rstrip().endswith("}")
    assert text.count("\nmail {\n") == 1


def test_standalone_is_a_whole_nginx_conf() -> None:
    text = render(nest(), standalone=True, prefix="/tmp/t/", pid="/tmp/t/x.pid")
    head = [line for line in text.splitlines() if line and not line.startswith("#")][:7]
    assert head == [
        "load_module /usr/lib/nginx/modules/ngx_mail_module.so;",
        "pid /tmp/t/x.pid;",
        "error_log /tmp/t/error.log info;",
        "worker_processes auto;",
        "worker_rlimit_nofile 2132;",
        "events {",
        "    worker_connections 2068;",
    ]
    assert "include /etc/nginx/mail.conf" not in text


def _comments(text: str) -> list[str]:
    return [line[1:].strip() for line in text.splitlines() if line.startswith("#")]


@pytest.mark.parametrize("sessions", [1, 1000, 3000, 250_000])
def test_include_form_says_what_to_set_for_the_sessions(sessions: int) -> None:
    """The numbers are nginx_sizing's, for the render's own listening sockets."""
    settings = nest(nginx=NginxSettings(sessions_per_node=sessions))
    view = nginx_view(settings)
    assert view.sizing == nginx_sizing(sessions, 4)
    comments = _comments(render_nginx(settings).text)
    z = view.sizing
    for line in (f"Sized for {sessions} sessions on this node ([nginx] sessions_per_node;",
                 "worker_processes auto;",
                 f"worker_rlimit_nofile {z.worker_rlimit_nofile};",
                 f"worker_connections {z.worker_connections};",
                 "[Service]", f"LimitNOFILE={z.limit_nofile}",
                 *(line.strip() for line in z.arithmetic())):
        assert line in comments
    # Nothing is applied: the main context is the operator's nginx.conf.
    assert not re.search(r"^\s*worker_", render_nginx(settings).text, re.M)


def test_standalone_applies_the_sizing_and_names_limit_nofile() -> None:
    settings = nest(nginx=NginxSettings(sessions_per_node=3000))
    text = render(settings, standalone=True, prefix="/tmp/t")
    z = nginx_sizing(3000, 4)
    assert f"\nworker_processes {z.worker_processes};\n" in text
    assert f"\nworker_rlimit_nofile {z.worker_rlimit_nofile};\n" in text
    assert f"\n    worker_connections {z.worker_connections};\n" in text
    assert f"nginx.service also needs LimitNOFILE={z.limit_nofile}." in text


def test_listening_sockets_count_every_listen_line() -> None:
    two = replace(nest_listener("imap4", MailProtocol.IMAP, ListenTls.STARTTLS),
                  bind=(HostPort("127.0.0.1", 143), HostPort("127.0.0.2", 143),
                        HostPort("127.0.0.2", 144)))
    view = nginx_view(nest(listeners=(two,)))
    assert sum(len(s.listens) for s in view.servers) == 3
    assert view.sizing.listening == 3


def test_beyond_linux_nr_open_is_a_warning() -> None:
    fits = render_nginx(nest(nginx=NginxSettings(sessions_per_node=500_000)))
    assert not any("nr_open" in w for w in fits.warnings)
    big = render_nginx(nest(nginx=NginxSettings(sessions_per_node=600_000)))
    assert any("fs.nr_open" in w for w in big.warnings)
    assert "# WARNING: LimitNOFILE=" in big.text


def test_nginx_quote() -> None:
    assert nginx_quote("IMAP4rev1") == "IMAP4rev1"
    assert nginx_quote("THREAD=REFERENCES") == "THREAD=REFERENCES"
    assert nginx_quote("a b") == '"a b"'
    assert nginx_quote("x;y") == '"x;y"'
    assert nginx_quote("$x") == '"$x"'
    assert nginx_quote('q"\\') == '"q\\"\\\\"'
    with pytest.raises(RenderError, match="control character"):
        nginx_quote("a\nb")


def test_format_time() -> None:
    assert format_time(1800) == "30m"
    assert format_time(7200) == "2h"
    assert format_time(5) == "5s"
    assert format_time(90) == "90s"
    assert format_time(0.25) == "250ms"
    with pytest.raises(RenderError):
        format_time(0)
