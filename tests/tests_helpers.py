"""Small fixture writers shared by several test files."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_two_class_npz(path: Path, n_train: int = 24, n_test: int = 12, points: int = 64) -> Path:
    """An npz in the layout of modelnet40_1024.npz with two easy classes (sphere vs flat square)."""
    rng = np.random.default_rng(0)

    def clouds(n: int) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for i in range(n):
            if i % 2:
                p = rng.standard_normal((points, 3))
                p /= np.linalg.norm(p, axis=1, keepdims=True)
            else:
                p = np.concatenate([rng.uniform(-1, 1, (points, 2)), 0.02 * rng.standard_normal((points, 1))], axis=1)
            out.append(p)
        return np.stack(out).astype(np.float16), (np.arange(n) % 2).astype(np.uint8)

    tx, ty = clouds(n_train)
    vx, vy = clouds(n_test)
    np.savez(path, train_x=tx, train_y=ty, test_x=vx, test_y=vy, classes=np.array(["flat", "round"]),
             train_names=np.array([f"tr_{i}" for i in range(n_train)]), test_names=np.array([f"te_{i}" for i in range(n_test)]))
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
