"""An in-process MQTT broker (amqtt) for the demo and first runs without Mosquitto.

It listens on loopback only, runs its asyncio loop in a daemon thread, and is not meant
for a lamppost: production gateways run Mosquitto (TLS, per-node ACLs, persistence).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading


class EmbeddedBroker:
    """start() returns once the broker accepts connections; stop() waits for shutdown."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.port = port or _free_port(host)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> EmbeddedBroker:
        # amqtt logs every packet at INFO; keep the demo's terminal for the demo.
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._thread = threading.Thread(target=self._run, name="embedded-broker", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise RuntimeError(f"embedded MQTT broker did not start within {timeout_s:.0f} s")
        if self._error is not None:
            raise RuntimeError(
                f"embedded MQTT broker could not listen on {self.host}:{self.port}: "
                f"{self._error}"
            ) from self._error
        return self

    def _run(self) -> None:
        from amqtt.broker import Broker

        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }

        async def main() -> None:
            self._broker = Broker(config)
            try:
                await self._broker.start()
            except BaseException as exc:  # report to start(), which raises it
                self._error = exc
            finally:
                self._started.set()

        loop.run_until_complete(main())
        if self._error is None:
            loop.run_forever()
        loop.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        loop, broker = self._loop, self._broker
        if loop is None or broker is None or not loop.is_running():
            return
        future = asyncio.run_coroutine_threadsafe(broker.shutdown(), loop)
        try:
            future.result(timeout_s)
        except Exception:  # shutting down anyway; nothing the caller can do
            pass
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout_s)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
