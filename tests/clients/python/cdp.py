"""Drives headless Chromium through the DevTools protocol, standard library
only: Chromium's --remote-debugging-pipe (JSON messages ending in NUL on
fds 3 and 4), so no websocket client is needed.

Usage: cdp.py SPEC.json. The spec: {"chromium", "url", "user_data_dir",
"steps": [...]}, each step one of
  {"wait": JS, "timeout": seconds}   poll until JS is truthy
  {"eval": JS, "as": NAME}           keep JS's value under NAME
  {"click": CSS}                     a real mouse click on the element's centre
  {"screenshot": PATH}               the viewport as PNG
JavaScript dialogs (the console's "Kill?" confirm) are accepted. Prints the
kept values as one JSON object; exits 1 with the page's text on a timeout.
"""

import base64
import fcntl
import json
import os
import subprocess
import sys
import time


class Browser:
    def __init__(self, chromium, user_data_dir):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds():
            # Out of the way first: either pipe end may itself be 3 or 4.
            r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.proc = subprocess.Popen(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-pipe",
                "--window-size=1500,1100",
                f"--user-data-dir={user_data_dir}",
                "about:blank",
            ],
            preexec_fn=fds,
            # Closing the other descriptors would close 3 and 4 too
            # (preexec_fn runs first); the parent's own are close-on-exec.
            close_fds=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._next = 0
        self.session = None

    def _read(self):
        while b"\0" not in self._buf:
            chunk = os.read(self._from_chrome, 65536)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method, params=None, session=True):
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("method") == "Page.javascriptDialogOpening":
                self._next += 1
                os.write(
                    self._to_chrome,
                    json.dumps(
                        {
                            "id": self._next,
                            "method": "Page.handleJavaScriptDialog",
                            "params": {"accept": True},
                            "sessionId": reply["sessionId"],
                        }
                    ).encode()
                    + b"\0",
                )
                continue
            if reply.get("id") == msg["id"]:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def open(self, url):
        targets = self.send("Target.getTargets", session=False)["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send(
            "Target.attachToTarget",
            {"targetId": page["targetId"], "flatten": True},
            session=False,
        )["sessionId"]
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Page.navigate", {"url": url})

    def eval(self, js):
        r = self.send(
            "Runtime.evaluate",
            {"expression": js, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in r:
            return None
        return r["result"].get("value")

    def close(self):
        try:
            self.send("Browser.close", session=False)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    b = Browser(spec["chromium"], spec["user_data_dir"])
    out = {}
    try:
        b.open(spec["url"])
        for step in spec["steps"]:
            if "wait" in step:
                deadline = time.time() + step.get("timeout", 15)
                while not b.eval("!!(%s)" % step["wait"]):
                    if time.time() > deadline:
                        text = b.eval("document.body && document.body.innerText")
                        print(f"timed out waiting for {step['wait']}\n{text}", file=sys.stderr)
                        sys.exit(1)
                    time.sleep(0.1)
            elif "eval" in step:
                out[step["as"]] = b.eval(step["eval"])
            elif "click" in step:
                rect = b.eval(
                    "(() => { const r = document.querySelector(%s).getBoundingClientRect();"
                    " return [r.x + r.width / 2, r.y + r.height / 2]; })()" % json.dumps(step["click"])
                )
                for kind in ("mousePressed", "mouseReleased"):
                    b.send(
                        "Input.dispatchMouseEvent",
                        {"type": kind, "x": rect[0], "y": rect[1], "button": "left", "clickCount": 1},
                    )
            elif "screenshot" in step:
                png = b.send("Page.captureScreenshot", {"format": "png"})["data"]
                with open(step["screenshot"], "wb") as f:
                    f.write(base64.b64decode(png))
    finally:
        b.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
