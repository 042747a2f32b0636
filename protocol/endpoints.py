"""`host:port` text, parsed and written in one place (IPv6 hosts in brackets: `[::1]:9993`)."""

from __future__ import annotations

import ipaddress
import socket


def split_host_port(endpoint: str) -> tuple[str, int]:
    """"127.0.0.1:9993" or "[::1]:9993" -> (host, port); ValueError saying what is wrong."""
    host, sep, port = endpoint.strip().rpartition(":")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"endpoint {endpoint!r}: expected \"host:port\" with port 1-65535, e.g. 127.0.0.1:9993")
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    """(host, port) -> "host:port", with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback address (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addrs = {info[4][0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)
