"""Render nginx ``mail {}`` and HAProxy configs from Settings: ``render-nginx``, ``render-haproxy``.

This module names the package's API, so callers need not know the file layout.
"""

from __future__ import annotations

from authsvc.render.nginx import (
    NGINX_MAIL_MODULE,
    HaproxyOptions,
    NginxOptions,
    Rendered,
    RenderError,
    format_time,
    listener_ports,
    nginx_quote,
    nginx_view,
    parse_node,
    render_command,
    render_haproxy,
    render_nginx,
)

__all__ = [
    "NGINX_MAIL_MODULE",
    "HaproxyOptions",
    "NginxOptions",
    "RenderError",
    "Rendered",
    "format_time",
    "listener_ports",
    "nginx_quote",
    "nginx_view",
    "parse_node",
    "render_command",
    "render_haproxy",
    "render_nginx",
]
