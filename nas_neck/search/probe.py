"""Is a server there? Fast checks before a search waits on one that never answers.

`ray.init` retries an address where nothing listens for minutes; a TCP connect with a timeout
tells at once.
"""

from __future__ import annotations

import socket

from nas_neck.errors import NasNeckError


def check_ray_address(address: str | None, timeout: float = 10.0) -> None:
    """`--ray-address HOST:PORT` (or `ray://HOST:PORT`): refuse, within `timeout`, one where
    nothing accepts a connection (ray.init would retry for minutes); `auto`, `local` and none
    are left to Ray."""
    target = ray_target(address)
    if target is None:
        return
    host, port = target
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise NasNeckError(
            f"--ray-address: cannot reach a Ray cluster at {host}:{port} "
            f"({_reason(e, timeout)}); is `ray start --head` running there?"
        ) from None


def ray_target(address: str | None) -> tuple[str, int] | None:
    """(host, port) of `HOST:PORT` or `ray://HOST:PORT`; None for `auto`, `local`, none."""
    host, sep, port = (address or "").removeprefix("ray://").rpartition(":")
    return (host.strip("[]"), int(port)) if sep and port.isdigit() else None


def _reason(e: OSError, timeout: float) -> str:
    if isinstance(e, TimeoutError):
        return f"no answer within {timeout:g} s"
    return e.strerror or str(e) or type(e).__name__
