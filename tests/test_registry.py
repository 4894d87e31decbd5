"""The method registry: a sixth method defined here, in the test file, trains through the same
code path as ``pretext3d pretrain`` and is evaluated by ``pretext3d evaluate linear-svm`` with no
edit to any package file; what the built-in methods declare about themselves."""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

import pretext3d
from pretext3d.cli import main
from pretext3d.models import backbone_label, backbone_module
from pretext3d.pretext import METHODS, DataNeeds, PretextMethod, build_method, register_method

DATA = "builtin:seed=0,train=3,test=2"


class RotationPrediction(PretextMethod):
    """Which of R quarter turns about the up axis (z) was applied to a cloud (a classic
    self-supervised task). Cloud b is turned by k_b = b mod R quarter turns and a linear head on
    the backbone's global feature predicts k_b:

        L = -1/B sum_b log softmax(W f(rot_{k_b}(x_b)))_{k_b}
    """

    name = "rotation-test"
    needs = DataNeeds()  # one plain cloud per sample

    def __init__(self, backbone: str | nn.Module = "pointnet", backbone_config: dict | None = None, turns: int = 4):
        super().__init__()
        self.backbone_name = backbone_label(backbone)
        self.backbone_config = dict(backbone_config or {})
        self.backbone = backbone_module(backbone, self.backbone_config)
        self.head = nn.Linear(self.backbone.global_dim, turns)
        self.turns = turns

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        points = batch["points"]  # (B, N, 3)
        k = torch.arange(points.shape[0], device=points.device) % self.turns
        angle = k.float() * (2 * math.pi / self.turns)
        cos, sin = angle.cos(), angle.sin()
        x, y = points[..., 0], points[..., 1]
        turned = torch.stack([cos[:, None] * x - sin[:, None] * y, sin[:, None] * x + cos[:, None] * y,
                              points[..., 2]], dim=-1)
        logits = self.head(self.backbone(turned, need_local=False).global_)
        loss = F.cross_entropy(logits, k)
        return {"loss": loss, "accuracy": (logits.argmax(1) == k).float().mean()}


@pytest.fixture()
def registered():
    register_method(RotationPrediction)
    yield RotationPrediction
    METHODS.pop(RotationPrediction.name, None)


def test_a_sixth_method_runs_end_to_end_from_its_test_file(registered, tmp_path, capsys):
    recipe = {
        "method": "rotation-test",
        "model": {"backbone": "pointnet", "backbone_config": {"emb_dims": 64, "pooling": "max"}},
        "data_options": {"points": 128, "builtin": {"train": 3, "test": 2, "seed": 0}},
        "steps": 4, "batch_size": 8, "amp": False, "log_every": 1, "num_workers": 0,
    }
    recipe_file = tmp_path / "rotation.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    assert main(["pretrain", "--recipe", str(recipe_file), "--out", str(run)]) == 0
    assert (run / "backbone.safetensors").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["recipe"]["method"] == "rotation-test" and config["backbone"] == "pointnet"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4] and all("accuracy" in line for line in lines)

    method = pretext3d.load_method(run)  # the whole method, through runs.py
    assert isinstance(method, RotationPrediction) and not method.training
    backbone = pretext3d.load_backbone(run)
    x = torch.randn(2, 64, 3)
    torch.testing.assert_close(backbone.model.eval()(x).global_, method.backbone(x).global_)

    capsys.readouterr()
    out = tmp_path / "svm.json"
    assert main(["evaluate", "linear-svm", "--data", DATA, "--checkpoint", str(run), "--points", "128",
                 "--C", "1", "--no-cache", "--quiet", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["backbone"] == "pointnet" and report["feature_dim"] == 64 and 0 <= report["accuracy"] <= 1
    assert "linear SVM" in capsys.readouterr().out


def test_a_new_method_file_and_recipe_are_all_a_builtin_method_needs(tmp_path):
    """A copy of the package gains pretext/rotation.py and recipes/rotation_tiny.yaml, and
    nothing else: `pretext3d pretrain --recipe rotation_tiny` trains it."""
    package = Path(pretext3d.__file__).resolve().parent
    copy = tmp_path / "src" / "pretext3d"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    source = inspect.getsource(RotationPrediction).replace('"rotation-test"', '"rotation"')
    (copy / "pretext" / "rotation.py").write_text(
        "import math\n\nimport torch\nimport torch.nn.functional as F\nfrom torch import Tensor, nn\n\n"
        "from pretext3d.models import backbone_label, backbone_module\n"
        "from pretext3d.pretext.base import DataNeeds, PretextMethod, register_method\n\n\n@register_method\n" + source)
    (copy / "recipes" / "rotation_tiny.yaml").write_text(
        "method: rotation\nmodel: {backbone: pointnet, backbone_config: {emb_dims: 32, pooling: max}}\n"
        "data_options: {points: 64, builtin: {train: 2, test: 1, seed: 0}}\n"
        "steps: 2\nbatch_size: 8\namp: false\nlog_every: 1\n")
    env = dict(os.environ, PYTHONPATH=str(copy.parent), OMP_NUM_THREADS="1")
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "pretext3d.cli", "pretrain", "--recipe", "rotation_tiny",
                             "--out", str(run), "device=cpu"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rotation_tiny" in subprocess.run([sys.executable, "-m", "pretext3d.cli", "pretrain", "--help"],
                                             capture_output=True, text=True, env=env).stdout
    assert (run / "backbone.safetensors").is_file()
    assert json.loads((run / "config.json").read_text())["recipe"]["method"] == "rotation"
    after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert {name for name in after if name not in before} == {Path("pretext/rotation.py"), Path("recipes/rotation_tiny.yaml")}
    assert all(after[name] == content for name, content in before.items())  # no existing file was touched


def test_registering_checks_the_class(registered):
    class Unnamed(PretextMethod):
        pass

    with pytest.raises(ValueError, match="needs a class attribute name"):
        register_method(Unnamed)
    with pytest.raises(TypeError, match="not a PretextMethod"):
        register_method(nn.Linear)  # type: ignore[arg-type]

    class Impostor(PretextMethod):
        name = "rotation-test"

    with pytest.raises(ValueError, match="taken by RotationPrediction"):
        register_method(Impostor)
    assert register_method(RotationPrediction) is RotationPrediction  # registering again is harmless
    with pytest.raises(ValueError, match="unknown method 'nope'.*rotation-test"):
        build_method("nope", {})
    with pytest.raises(ValueError, match=r"'turnz' is not a setting of rotation-test \(did you mean 'turns'\?\)"):
        build_method("rotation-test", {"turnz": 3})


def test_methods_declare_their_spaces_classifiers_and_tasks():
    tiny_dgcnn = {"k": 4, "emb_dims": 32}
    crosspoint = build_method("crosspoint", {"backbone_config": tiny_dgcnn, "image_encoder": "resnet18"})
    assert set(crosspoint.modality_encoders()) == {"points", "image"}
    assert crosspoint.shared_space() == {"points": crosspoint.point_head, "image": crosspoint.image_head}
    assert crosspoint.pair_classifier() is None and crosspoint.task_methods() == {"crosspoint": crosspoint}

    cmcv = build_method("cmcv", {"backbone_config": tiny_dgcnn})
    assert cmcv.shared_heads() == {} and cmcv.pair_classifier() is cmcv.fusion

    mims = build_method("mims", {"modalities": ["points", "mesh"], "backbone_config": tiny_dgcnn,
                                 "mesh_config": {"emb_dims": 32}})
    assert set(mims.modality_encoders()) == {"points", "mesh"}
    assert mims.shared_heads() == {"points": "invariant_heads.points", "mesh": "invariant_heads.mesh"}
    assert METHODS["mims"].data_needs({"modalities": ["image"]}) == DataNeeds(images=True, point_views=1, views=2)

    composed = build_method("compose", {"backbone": "dgcnn", "backbone_config": tiny_dgcnn,
                                        "tasks": {"crosspoint": {}, "cmcv": {}}})
    tasks = composed.task_methods()
    assert list(tasks) == ["crosspoint", "cmcv"] and composed.pair_classifier() is tasks["cmcv"].fusion
    assert tasks["crosspoint"].backbone is composed.backbone is tasks["cmcv"].backbone  # shared encoders
