"""Tell within seconds whether a server can be reached, so offline runs fail or fall back at once instead of retrying."""
import os
import socket
from urllib.parse import urlsplit


def reachable(url: str, timeout: float = 3.0) -> bool:
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a direct probe would bypass the proxy: let the library try
    try:
        parts = urlsplit(url)
        with socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False
