"""Small fixture writers shared by several test files."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np

from pretext3d.data.sources import Source


def sphere_or_square(n: int, points: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n clouds (n, points, 3) alternating between class 0 (a flat square) and 1 (a sphere)."""
    clouds = []
    for i in range(n):
        if i % 2:
            p = rng.standard_normal((points, 3))
            p /= np.linalg.norm(p, axis=1, keepdims=True)
        else:
            p = np.concatenate([rng.uniform(-1, 1, (points, 2)), 0.02 * rng.standard_normal((points, 1))], axis=1)
        clouds.append(p)
    return np.stack(clouds).astype(np.float32), np.arange(n) % 2


def tiny_clouds(n: int = 24, points: int = 64, seed: int = 0):
    """An in-memory dataset of ``sphere_or_square`` clouds."""
    from pretext3d.data import ArrayPointClouds

    x, y = sphere_or_square(n, points, np.random.default_rng(seed))
    return ArrayPointClouds(x, y, ["flat", "round"], [f"c{i}" for i in range(n)], "train", "tiny")


def write_two_class_npz(path: Path, n_train: int = 24, n_test: int = 12, points: int = 64) -> Path:
    """An npz in the layout of modelnet40_1024.npz holding ``sphere_or_square`` clouds."""
    rng = np.random.default_rng(0)
    tx, ty = sphere_or_square(n_train, points, rng)
    vx, vy = sphere_or_square(n_test, points, rng)
    np.savez(path, train_x=tx.astype(np.float16), train_y=ty.astype(np.uint8), test_x=vx.astype(np.float16),
             test_y=vy.astype(np.uint8), classes=np.array(["flat", "round"]),
             train_names=np.array([f"tr_{i}" for i in range(n_train)]),
             test_names=np.array([f"te_{i}" for i in range(n_test)]))
    return path


def write_resampled_with_bad_file(root: Path) -> Path:
    """A modelnet40_normal_resampled-style folder with 4 train shapes, one of them malformed."""
    root = root / "resampled"
    root.mkdir()
    (root / "modelnet40_shape_names.txt").write_text("box\nball\n")
    names = ["box_0001", "ball_0001", "box_0002", "ball_0002"]
    (root / "modelnet40_train.txt").write_text("\n".join(names) + "\n")
    (root / "modelnet40_test.txt").write_text("ball_0003\n")
    rng = np.random.default_rng(0)
    for name in names + ["ball_0003"]:
        folder = root / name.rsplit("_", 1)[0]
        folder.mkdir(exist_ok=True)
        rows = rng.uniform(-1, 1, (40, 6))
        (folder / f"{name}.txt").write_text("\n".join(",".join(f"{v:.5f}" for v in r) for r in rows))
    (root / "box" / "box_0002.txt").write_text("bad,row\n")
    return root


class DyingSource(Source):
    """A source whose worker process dies (as if killed for memory) on 'train/airplane_0000'."""

    def load(self, obj):
        if obj.key == "train/airplane_0000":
            os._exit(1)
        return super().load(obj)


def project_to_pixels(points: np.ndarray, view: np.ndarray, proj: np.ndarray, size: tuple[int, int]):
    """Pixel (row, column) of each point with the given matrices, clipped into the image, whether
    it lies inside the image, and its depth. view, proj: (4, 4) or (V, 4, 4) -> arrays (N,) or (V, N)."""
    from pretext3d.geometry.cameras import project_points

    uv, depth = project_points(points.astype(np.float64), view.astype(np.float64), proj.astype(np.float64), size)
    cells = np.floor(uv).astype(int)
    inside = (cells >= 0).all(-1) & (cells[..., 0] < size[1]) & (cells[..., 1] < size[0])
    rows, cols = np.clip(cells[..., 1], 0, size[0] - 1), np.clip(cells[..., 0], 0, size[1] - 1)
    return rows, cols, inside, depth


def free_port() -> int:
    """A TCP port free right now on this machine (for torchrun's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Interrupt(Exception):
    """Raised by ``dies_at_call``: a run killed mid-way."""


def dies_at_call(method, call: int):
    """Make ``method``'s forward raise Interrupt on its ``call``-th call (1-based), as if the
    process were killed after the checkpoint before that step; returns the method."""
    calls = {"n": 0}
    original = method.forward

    def forward(batch):
        calls["n"] += 1
        if calls["n"] == call:
            raise Interrupt
        return original(batch)

    method.forward = forward
    return method


class DevTools:
    """A headless chromium driven over its DevTools protocol (a websocket): open a page, run
    JavaScript, choose a file in a file input (as a person would), take screenshots. Only what
    the page tests need; no driver library is installed for it."""

    def __init__(self, chromium: str, profile: Path, size: tuple[int, int] = (1400, 1100)):
        self.command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                        "--remote-debugging-port=0", f"--window-size={size[0]},{size[1]}", "about:blank"]
        self.next_id = 0

    def __enter__(self) -> "DevTools":
        import json
        import re
        import subprocess
        import time
        import urllib.request

        from websockets.sync.client import connect

        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        port = None
        while port is None and time.time() < deadline:
            line = self.process.stderr.readline()
            if not line and self.process.poll() is not None:
                raise RuntimeError("chromium stopped before it listened")
            found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            port = int(found.group(1)) if found else None
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t.get("type") == "page")
        self.connection = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self.socket = self.connection.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.connection.__exit__(None, None, None)
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except Exception:
                self.process.kill()

    def send(self, method: str, **params):
        import json

        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=120))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def eval(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, seconds: float = 120) -> None:
        import time

        deadline = time.time() + seconds
        while time.time() < deadline:
            if self.eval(f"Boolean({expression})"):
                return
            time.sleep(0.1)
        raise AssertionError(f"the page never had {expression} within {seconds} s")

    def open(self, url: str) -> None:
        self.send("Page.enable")
        self.send("Page.navigate", url=url)
        self.wait("document.readyState === 'complete'")

    def upload(self, selector: str, file: Path) -> None:
        """Choose ``file`` in the file input ``selector`` (the page sees a change event)."""
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", files=[str(file)], nodeId=node)

    def screenshot(self, path: Path) -> None:
        import base64

        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        Path(path).write_bytes(base64.b64decode(data))
