"""Firefox for the web console's browser tests, driven over WebDriver BiDi with no geckodriver.

Debian packages Firefox ESR but not geckodriver (selenium's usual way to drive Firefox). Firefox
since 128 speaks WebDriver BiDi itself: started with ``--remote-debugging-port`` it listens on a
websocket, and a session there can navigate, run scripts, type, click and take screenshots. This
is a small client of that protocol over ``websocket-client`` (already a dependency of selenium),
offering the part of selenium's ``WebDriver`` API the console's tests use, so one test body runs
in Chromium (selenium and chromedriver) and in Firefox alike. Typing and clicking are real input
(``input.performActions``: key and pointer events the page cannot tell from a person's), not
synthetic ``dispatchEvent`` calls.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import websocket

FIREFOX = Path("/usr/bin/firefox-esr")
# Keys as WebDriver names them; selenium sends "\n" as Enter too
ENTER = "\ue007"
LISTENING = re.compile(r"WebDriver BiDi listening on (ws://\S+)")
# a fresh profile asks nothing and fetches nothing: no first-run pages, updates or telemetry
PREFS = {
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.aboutwelcome.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "app.update.disabledForTesting": True,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
}


class BidiError(RuntimeError):
    """A command the browser refused, or a script that threw (its message and stack)."""


class NoSuchElement(BidiError):
    pass


class Element(Protocol):
    """What the tests use of an element, as selenium's ``WebElement`` and ``BidiElement`` offer it."""

    @property
    def text(self) -> str: ...
    def click(self) -> None: ...
    def clear(self) -> None: ...
    def send_keys(self, *value: str) -> None: ...
    def get_attribute(self, name: str) -> str | None: ...


class Browser(Protocol):
    """What the tests use of a browser: selenium's ``WebDriver`` (Chromium) or ``Firefox`` below."""

    def get(self, url: str) -> None: ...
    def refresh(self) -> None: ...
    def execute_script(self, script: str, *args: Any) -> Any: ...
    def find_element(self, by: str, value: str) -> Any: ...
    def save_screenshot(self, filename: str) -> bool: ...
    @property
    def page_source(self) -> str: ...


class BidiElement:
    """A DOM node the page handed back (its BiDi ``sharedId``), usable as a script argument."""

    def __init__(self, browser: Firefox, shared_id: str) -> None:
        self.browser, self.shared_id = browser, shared_id

    def _call(self, body: str, *args: Any) -> Any:
        return self.browser.execute_script(body, self, *args)

    @property
    def text(self) -> str:
        # innerText: the rendered text, hidden parts left out, as selenium's .text; its table cells
        # are joined by tabs where selenium's text atom puts a space, so tabs become spaces
        text = self._call("return arguments[0].innerText ?? arguments[0].textContent")
        return str(text).replace("\t", " ")

    def get_attribute(self, name: str) -> str | None:
        value = self._call("return arguments[0].getAttribute(arguments[1])", name)
        return None if value is None else str(value)

    def click(self) -> None:
        """A real mouse click at the element's centre, after scrolling it into view."""
        self._call("arguments[0].scrollIntoView({block: 'center', inline: 'center'})")
        origin = {"type": "element", "element": {"sharedId": self.shared_id}}
        self.browser.actions(
            {
                "type": "pointer",
                "id": "mouse",
                "parameters": {"pointerType": "mouse"},
                "actions": [
                    {"type": "pointerMove", "x": 0, "y": 0, "origin": origin},
                    {"type": "pointerDown", "button": 0},
                    {"type": "pointerUp", "button": 0},
                ],
            }
        )

    def send_keys(self, *value: str) -> None:
        """Focus the element, caret at the end, and type: a key down and up per character."""
        self._call(
            "const e = arguments[0]; e.focus();"
            "if (typeof e.value === 'string' && e.setSelectionRange)"
            "  try { e.setSelectionRange(e.value.length, e.value.length); } catch (x) {}"
        )
        keys: list[dict[str, str]] = []
        for char in "".join(value):
            key = ENTER if char == "\n" else char
            keys += [{"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]
        self.browser.actions({"type": "key", "id": "keyboard", "actions": keys})

    def clear(self) -> None:
        """Empty a text field as selenium does: the value goes, ``input`` and ``change`` fire."""
        self._call(
            "const e = arguments[0]; e.value = '';"
            "e.dispatchEvent(new Event('input', {bubbles: true}));"
            "e.dispatchEvent(new Event('change', {bubbles: true}))"
        )


class Firefox:
    """A headless Firefox with a fresh profile, and one BiDi session on its first tab."""

    def __init__(self, binary: Path = FIREFOX, width: int = 1400, height: int = 900) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="pf-firefox-"))
        (self.profile / "user.js").write_text(
            "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in PREFS.items())
        )
        self.log = self.profile / "firefox.log"
        with self.log.open("wb") as log:
            args = ["--headless", "--no-remote", "--profile", str(self.profile)]
            self.process = subprocess.Popen(
                [str(binary), *args, "--remote-debugging-port=0", "about:blank"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its content processes in a group of its own, ended with it
                env={**os.environ, "MOZ_CRASHREPORTER_DISABLE": "1"},
            )
        self.ids = itertools.count(1)
        try:
            self.ws = websocket.create_connection(
                f"{self._listening(30.0)}/session", suppress_origin=True, timeout=60
            )
            caps = self.command("session.new", capabilities={"alwaysMatch": {"acceptInsecureCerts": False}})
            self.version = str(caps["capabilities"]["browserVersion"])
            self.context = str(self.command("browsingContext.getTree")["contexts"][0]["context"])
            self.command(
                "browsingContext.setViewport",
                context=self.context,
                viewport={"width": width, "height": height},
            )
        except BaseException:
            self.quit()
            raise

    def _listening(self, timeout: float) -> str:
        """The websocket address Firefox prints once its BiDi server is up (it chose the port)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = LISTENING.search(self.log.read_text(errors="replace"))
            if found:
                return found.group(1)
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        said = self.log.read_text(errors="replace")[-2000:]
        raise BidiError(f"firefox's BiDi server did not start: {said}")

    def command(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its answer (events are not subscribed to, so none come)."""
        ident = next(self.ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") != ident:
                continue
            if message.get("type") == "error":
                raise BidiError(f"{method}: {message.get('error')}: {message.get('message')}")
            result: dict[str, Any] = message["result"]
            return result

    def actions(self, *sources: dict[str, Any]) -> None:
        self.command("input.performActions", context=self.context, actions=list(sources))

    # ---- selenium's WebDriver API, the part the tests use -------------------------------------

    def get(self, url: str) -> None:
        self.command("browsingContext.navigate", context=self.context, url=url, wait="complete")

    def refresh(self) -> None:
        self.command("browsingContext.reload", context=self.context, wait="complete")

    def execute_script(self, script: str, *args: Any) -> Any:
        """Run ``script`` as a function body with ``arguments``, as selenium does; a promise it
        returns is awaited. Elements come back as ``BidiElement`` and can be passed back in."""
        answer = self.command(
            "script.callFunction",
            functionDeclaration=f"function() {{\n{script}\n}}",
            arguments=[self._local(a) for a in args],
            target={"context": self.context},
            awaitPromise=True,
            resultOwnership="none",
        )
        if answer["type"] == "exception":
            details = answer["exceptionDetails"]
            raise BidiError(f"script threw: {details.get('text')}\n{script}")
        return self._python(answer["result"])

    def find_element(self, by: str, value: str) -> BidiElement:
        """By ``id`` or ``css selector`` (selenium's ``By.ID``, ``By.CSS_SELECTOR``)."""
        query = {"id": "return document.getElementById(arguments[0])",
                 "css selector": "return document.querySelector(arguments[0])"}[by]  # fmt: skip
        found = self.execute_script(query, value)
        if not isinstance(found, BidiElement):
            raise NoSuchElement(f"no element {by}={value!r}")
        return found

    def save_screenshot(self, filename: str) -> bool:
        shot = self.command("browsingContext.captureScreenshot", context=self.context)
        Path(filename).write_bytes(base64.b64decode(shot["data"]))
        return True

    @property
    def page_source(self) -> str:
        return str(self.execute_script("return document.documentElement.outerHTML"))

    def quit(self) -> None:
        """End the session and the browser (its process group: the content processes too)."""
        ws = getattr(self, "ws", None)
        if ws is not None:
            # the browser is going anyway: a failed goodbye is no matter, the process ends below
            with contextlib.suppress(BidiError, websocket.WebSocketException, OSError):
                self.command("session.end")
            ws.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        shutil.rmtree(self.profile, ignore_errors=True)

    # ---- values between Python and the page ---------------------------------------------------

    def _local(self, value: Any) -> dict[str, Any]:
        """A Python value as a BiDi ``LocalValue``."""
        if isinstance(value, BidiElement):
            return {"sharedId": value.shared_id}
        if value is None:
            return {"type": "null"}
        if isinstance(value, bool):
            return {"type": "boolean", "value": value}
        if isinstance(value, int | float):
            return {"type": "number", "value": value}
        if isinstance(value, str):
            return {"type": "string", "value": value}
        if isinstance(value, list | tuple):
            return {"type": "array", "value": [self._local(v) for v in value]}
        if isinstance(value, dict):
            return {"type": "object", "value": [[str(k), self._local(v)] for k, v in value.items()]}
        raise TypeError(f"cannot pass {type(value).__name__} to the page")

    def _python(self, remote: dict[str, Any]) -> Any:
        """A BiDi ``RemoteValue`` as a Python value (what selenium's JSON would give)."""
        kind, value = remote["type"], remote.get("value")
        if kind in ("undefined", "null"):
            return None
        if kind in ("string", "boolean", "date"):
            return value
        if kind == "number":
            return float(value) if isinstance(value, str) else value  # "NaN", "-0", "Infinity"
        if kind == "bigint":
            return int(str(value))
        if kind in ("array", "set", "nodelist", "htmlcollection"):
            return [self._python(v) for v in value or []]
        if kind in ("object", "map"):
            return {
                (k if isinstance(k, str) else self._python(k)): self._python(v) for k, v in value or []
            }
        if kind == "node":
            return BidiElement(self, remote["sharedId"])
        raise BidiError(f"a {kind} cannot come back from the page")
