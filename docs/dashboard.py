"""What a researcher sees of a running sweep in the Ray dashboard, in headless Chromium (Debian's
``chromium``), logged in with the token as the dashboard's login dialog does it (its token, sent to
``/api/authenticate``, which sets the session cookie); screenshots into docs/.

    .venv/bin/python docs/dashboard.py            # needs `chromium` on PATH (apt install chromium)

It runs a small quickstart sweep (``prunesweep run``, a local Ray with its dashboard), and once
trials run, opens the Actors page, checks that it names the running trials by their folders, and
saves it as docs/dashboard_actors.png.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
PORT = 9333  # Chromium's DevTools port
TRIAL = re.compile(r"[0-9a-f]{8}_[a-z0-9]+_s[0-9.]+_seeds?[0-9-]+")


async def _cdp(ws, method: str, **params):
    _cdp.id = getattr(_cdp, "id", 0) + 1
    await ws.send_json({"id": _cdp.id, "method": method, "params": params})
    async for msg in ws:
        data = json.loads(msg.data)
        if data.get("id") == _cdp.id:
            if "error" in data:
                raise RuntimeError(f"{method}: {data['error']}")
            return data.get("result", {})
    raise RuntimeError(f"{method}: DevTools closed the connection")


async def _text(ws) -> str:
    result = await _cdp(ws, "Runtime.evaluate", expression="document.body.innerText", returnByValue=True)
    return result["result"].get("value", "")


async def _shoot(ws, url: str, file: Path, wait_for: str | None, timeout_s: float = 60) -> str:
    await _cdp(ws, "Page.navigate", url=url)
    deadline, text = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        await asyncio.sleep(1.5)
        text = await _text(ws)
        if wait_for is None or re.search(wait_for, text):
            break
    shot = await _cdp(ws, "Page.captureScreenshot", format="png")
    file.write_bytes(base64.b64decode(shot["data"]))
    print(f"{file.relative_to(ROOT)}: {url}")
    return text


async def screenshots(dashboard: str, token: str) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{PORT}/json/list") as answer:
            page = next(t for t in await answer.json() if t["type"] == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            await _cdp(ws, "Emulation.setDeviceMetricsOverride", width=1600, height=800, deviceScaleFactor=1,
                       mobile=False)
            await _cdp(ws, "Page.navigate", url=f"{dashboard}/#/actors")
            # as a user does: the token typed into the login dialog, then its Submit button
            deadline = time.monotonic() + 60
            while "Authentication Token Required" not in await _text(ws):
                assert time.monotonic() < deadline, "the dashboard showed no login dialog"
                await asyncio.sleep(1)
            await _cdp(ws, "Runtime.evaluate", expression="document.querySelector('[role=dialog] input').focus()")
            await _cdp(ws, "Input.insertText", text=token)
            await _cdp(ws, "Runtime.evaluate", expression="[...document.querySelectorAll('button')]"
                       ".find(b => b.innerText.trim().toUpperCase() === 'SUBMIT').click()")
            await asyncio.sleep(3)
            state = await _cdp(ws, "Runtime.evaluate", returnByValue=True, expression=(
                "JSON.stringify([document.querySelector('[role=dialog] input')?.value.length, "
                "[...document.querySelectorAll('button')].map(b => [b.innerText, b.disabled])])"))
            assert "Authentication Token Required" not in await _text(ws), f"the dashboard refused the token {state}"
            seen = {}
            seen["actors"] = await _shoot(ws, f"{dashboard}/#/actors", DOCS / "dashboard_actors.png",
                                          r"ALIVE[\s\S]*" + TRIAL.pattern + "|" + TRIAL.pattern + r"[\s\S]*ALIVE")
            return seen


def main() -> int:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("docs/dashboard.py: needs Chromium (apt install chromium)", file=sys.stderr)
        return 2
    storage = tempfile.mkdtemp(prefix="prunesweep-dashboard-")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PRUNESWEEP_PROGRESS_S": "5"}
    sweep = subprocess.Popen([str(ROOT / ".venv" / "bin" / "prunesweep"), "run", "quickstart", "--storage", storage,
                              "--name", "dashboard", "--set", "seeds=4", "--set", "fuse=2"],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    chrome = None
    try:
        dashboard = None
        for line in sweep.stdout:
            print(line, end="")
            found = re.search(r"Ray dashboard: (http://\S+?);", line)
            dashboard = dashboard or (found and found.group(1))
            if dashboard and re.search(r"\d+ running \(in [1-9]", line):
                break
        assert dashboard, "the sweep printed no dashboard address"
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
        chrome = subprocess.Popen([browser, "--headless=new", "--no-sandbox", "--disable-gpu",
                                   f"--remote-debugging-port={PORT}", f"--user-data-dir={storage}/chrome",
                                   "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3)
        seen = asyncio.run(screenshots(dashboard, token))
        names = sorted(set(TRIAL.findall(seen["actors"])))
        print(f"the Actors page names {len(names)} trials: {', '.join(names)}")
        assert names, "no trial named on the Actors page"
        return 0
    finally:
        if chrome is not None:
            chrome.terminate()
        sweep.send_signal(signal.SIGINT)
        try:
            sweep.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(sweep.pid, signal.SIGKILL)
        shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
