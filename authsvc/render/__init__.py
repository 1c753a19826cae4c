"""Render nginx ``mail {}`` and HAProxy configs from Settings: ``render-nginx``, ``render-haproxy``.

The work is split in three: ``command`` turns command-line options into
:class:`NginxOptions` / :class:`HaproxyOptions`; ``nginx`` / ``haproxy`` turn
Settings plus options into a small view model (already quoted for the target
syntax, every decision made there, in typed Python); the Jinja2 templates in
``templates/`` only lay the view model out.  Templates never see Settings.
``common`` holds what both views share.

This module names the package's API, so callers need not know the file layout.
"""

from __future__ import annotations

from authsvc.render.command import parse_node, render_command
from authsvc.render.common import Rendered, RenderError, format_time, listener_ports
from authsvc.render.haproxy import HaproxyOptions, HaproxyView, haproxy_view, render_haproxy
from authsvc.render.nginx import (
    NGINX_MAIL_MODULE,
    NginxOptions,
    NginxView,
    nginx_quote,
    nginx_view,
    render_nginx,
)

__all__ = [
    "NGINX_MAIL_MODULE",
    "HaproxyOptions",
    "HaproxyView",
    "NginxOptions",
    "NginxView",
    "RenderError",
    "Rendered",
    "format_time",
    "haproxy_view",
    "listener_ports",
    "nginx_quote",
    "nginx_view",
    "parse_node",
    "render_command",
    "render_haproxy",
    "render_nginx",
]
