"""Running the app with uvicorn, one process or several."""

from __future__ import annotations

import socket

import uvicorn
from uvicorn.supervisors import Multiprocess

# One JSON line per request (serving.app.RequestLog) on stdout; uvicorn's own at warning.
LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(message)s"}},
    "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stdout"}},
    "loggers": {"serving": {"handlers": ["stdout"], "level": "INFO"}},
}


class _Config(uvicorn.Config):
    def bind_socket(self) -> socket.socket:
        """uvicorn 0.54 binds the --workers listener with protocol 0; asyncio then never sets
        TCP_NODELAY on accepted connections and every keep-alive response waits ~40 ms for
        the client's delayed ACK (uvicorn issue #3149). Re-wrapping the descriptor lets the
        kernel report the real protocol (TCP)."""
        return socket.socket(fileno=super().bind_socket().detach())


def serve(host: str, port: int, workers: int) -> None:
    """Serve serving.app:create_app; settings come from the HEART_* environment."""
    config = _Config("serving.app:create_app", factory=True, host=host, port=port, workers=workers,
                     access_log=False, log_level="warning", log_config=LOG_CONFIG)
    if config.workers > 1:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        uvicorn.Server(config).run()
