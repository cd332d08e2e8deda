"""Commands from the dashboard (``cmd``): run the named handler off the network thread, answer on ``cmd/result``.

A handler may take seconds (a self-test runs the golden samples), longer
than the MQTT keep-alive allows the network loop to stall, so commands run
one at a time on their own thread and the reporter publishes the results.
Every command is answered with ``correlation_id`` = the command's id: an
unknown command, a handler that raises and a malformed command whose id can
still be read all get ``ok=False`` with the reason. Nothing a command
carries can stop the runner.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from sdk.messages import Command, CommandResult, MessageError, parse_message

__all__ = ["CommandHandler", "CommandRunner"]

log = logging.getLogger(__name__)

CommandHandler = Callable[[Command], Mapping[str, Any] | None]
"""Runs one command; returns the JSON-able ``result`` (or None); raises to answer ``ok=False`` with the error."""

BadInput = Callable[[str, str, Mapping[str, object]], None]
"""``(kind, message, detail)``: where the runner reports a command it could not take."""

_QUEUE_SIZE = 64


class CommandRunner:
    """One worker thread that runs commands in arrival order and hands back their results.

    Args:
        site: this appliance's site (results carry it).
        device: this appliance's device name.
        handlers: the handler of each command name (``selftest``, ``report-config``, ``activate-package``).
        reply: receives each result, on the runner's thread (the reporter queues it for publishing).
        on_bad_input: told of a malformed or misaddressed command (the reporter makes it an event).
    """

    def __init__(
        self,
        site: str,
        device: str,
        handlers: Mapping[str, CommandHandler],
        reply: Callable[[CommandResult], None],
        on_bad_input: BadInput,
    ) -> None:
        self.site = site
        self.device = device
        self.handlers = dict(handlers)
        self._reply = reply
        self._on_bad_input = on_bad_input
        self._inbox: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUE_SIZE)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the worker thread."""
        self._thread = threading.Thread(target=self._run, name="medge-commands", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the command running now (if any), drop the rest, stop the thread."""
        if self._thread is None:
            return
        while True:
            try:
                self._inbox.get_nowait()
            except queue.Empty:
                break
        self._inbox.put(None)
        self._thread.join(timeout)
        self._thread = None

    def submit(self, payload: bytes) -> None:
        """Take a command payload from the network thread; returns at once.

        A full inbox (a command storm) answers the command as refused rather
        than stalling the network loop.
        """
        try:
            self._inbox.put_nowait(bytes(payload))
        except queue.Full:
            result = self._refusal(payload, f"too many commands waiting (more than {_QUEUE_SIZE}); send it again")
            if result is not None:
                self._reply(result)

    def _run(self) -> None:
        while True:
            payload = self._inbox.get()
            if payload is None:
                return
            try:
                result = self.execute(payload)
            except Exception:  # never reached by design; the thread must outlive any one command
                log.exception("command runner failed on a command")
                continue
            if result is not None:
                try:
                    self._reply(result)
                except Exception:
                    log.exception("could not hand over the result of command %s", result.correlation_id)

    def execute(self, payload: bytes) -> CommandResult | None:
        """Parse and run one command; the result to publish, or None if the message has no id to answer."""
        try:
            message = parse_message(payload)
        except MessageError as exc:
            self._on_bad_input("bad-command", f"malformed command: {exc}", {"error": str(exc)})
            return self._refusal(payload, f"malformed command: {exc}")
        if not isinstance(message, Command):
            self._on_bad_input("bad-command", f"a {message.schema_} message on the command topic", {"id": message.id})
            return self._result(message.id, ok=False, error=f"not a command: {message.schema_}")
        if (message.site, message.device) != (self.site, self.device):
            where = f"{message.site}/{message.device}"
            self._on_bad_input("bad-command", f"a command addressed to {where}", {"id": message.id})
            return self._result(message.id, ok=False, error=f"addressed to {where}, not {self.site}/{self.device}")
        handler = self.handlers.get(message.command)
        if handler is None:
            return self._result(message.id, ok=False, error=f"command {message.command!r} is not available here")
        log.info("running command %s (%s)", message.command, message.id)
        try:
            output = handler(message)
        except Exception as exc:  # the handler's failure is the command's answer, not the runner's
            log.exception("command %s (%s) failed", message.command, message.id)
            return self._result(message.id, ok=False, error=f"{type(exc).__name__}: {exc}")
        try:
            result = self._result(message.id, ok=True, result=dict(output or {}))
            result.to_json()  # a handler returning something JSON cannot carry is its failure, found here
        except (TypeError, ValueError, ValidationError) as exc:
            log.error("command %s (%s) returned an unusable result: %s", message.command, message.id, exc)
            return self._result(message.id, ok=False, error=f"the handler returned an unusable result: {exc}")
        return result

    def _result(
        self, correlation_id: str, *, ok: bool, result: dict[str, Any] | None = None, error: str | None = None
    ) -> CommandResult:
        return CommandResult(
            site=self.site,
            device=self.device,
            correlation_id=correlation_id[:128],
            ok=ok,
            result=result or {},
            error=error,
        )

    def _refusal(self, payload: bytes, error: str) -> CommandResult | None:
        """An ``ok=False`` answer to an unusable command whose ``id`` can still be read; None if it cannot."""
        try:
            data = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        command_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(command_id, str) or not command_id:
            return None
        return self._result(command_id, ok=False, error=error[:2000])
