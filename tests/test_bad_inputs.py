"""A corpus of malformed inputs: every one gets one clear line naming the file and the problem
(and a non-zero exit), batch jobs skip the bad items and finish the good ones, and nothing ever
shows a traceback. Meshes, point-cloud files, checkpoints, recipes, overrides, output locations
and prepared stores."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pretext3d.cli import main
from pretext3d.data.builtin import export_builtin_meshes

QUIET_SVM = ["--random-init", "--backbone", "pointnet", "--points", "32", "--no-cache", "--quiet"]


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``pretext3d ARGS`` run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(args)
        except SystemExit as exit_:  # argparse
            status = exit_.code if isinstance(exit_.code, int) else 2
    return status, out.getvalue(), err.getvalue()


def assert_one_clear_line(status: int, err: str, names: str, problem: str, expected_status: int = 2) -> None:
    assert status == expected_status, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("pretext3d: error:")]
    assert len(lines) == 1, err
    assert names in lines[0] and problem in lines[0], lines[0]


# --- meshes: one prepare of a folder with good and bad files ------------------------------------

GOOD_ODD = {  # unusual but valid: prepared like any other mesh
    b"caf\xe9_latin1_name.off": "copy",  # a file name that is not UTF-8
    b"latin1_comment.obj": b"# mod\xe8le\nv 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\nf 1 3 4\nf 2 3 4\n",
    b"crlf.off": b"OFF\r\n4 4 0\r\n0 0 0\r\n1 0 0\r\n0 1 0\r\n0 0 1\r\n3 0 1 2\r\n3 0 1 3\r\n3 0 2 3\r\n3 1 2 3\r\n",
}
BAD_MESHES = {  # file -> (content, what the skip line says)
    "empty.off": (b"", "is empty"),
    "header.off": (b"OFX\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n", "wrong header"),
    "counts.off": (b"OFF\nabc def\n", "no vertex/face counts"),
    "truncated.off": (b"OFF\n4 2 0\n0 0 0\n1 0 0\n", "is truncated"),
    "nofaces.off": (b"OFF\n3 0 0\n0 0 0\n1 0 0\n0 1 0\n", "no faces"),
    "nan.off": (b"OFF\n3 1 0\nnan 0 0\n1 0 0\n0 1 0\n3 0 1 2\n", "NaN or infinite"),
    "flat.off": (b"OFF\n3 1 0\n0 0 0\n1 0 0\n2 0 0\n3 0 1 2\n", "no face of positive area"),
    "points.obj": (b"v 0 0 0\nv 1 0 0\nv 0 1 0\n", "has 3 vertices but no faces"),
    "comments.obj": (b"# nothing here\n", "no vertices"),
    "inf.obj": (b"v inf 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "NaN or infinite"),
    "garbage.obj": (bytes(range(256)) * 8, "no vertices"),
    "junk.stl": (b"\x00" * 80 + (7).to_bytes(4, "little") + b"\x01" * 10, "has no vertices"),
    "ascii_cut.stl": (b"solid s\nfacet normal 0 0 1\nouter loop\nvertex 0 0 0\n", "has no vertices"),
    "text.ply": (b"hello, not a ply file\n", "could not be parsed"),
    "cut.ply": (b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
                b"element face 1\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0\n", "could not be parsed"),
}
SPECIAL_MESHES = {  # entries that are not files: (how to make it, what the skip line says)
    "folder.off": ("dir", "is a folder, not a mesh file"),
    "dangling.off": ("dangling", "symbolic link to a missing file"),
    "loop.off": ("loop", "symbolic link to a missing file (or a loop of links)"),
}


@pytest.fixture(scope="module")
def mesh_folder(tmp_path_factory) -> Path:
    root = export_builtin_meshes(tmp_path_factory.mktemp("meshes") / "m", seed=0, train=2, test=1)
    for cls in sorted(p.name for p in root.iterdir())[2:]:  # two classes are enough
        shutil.rmtree(root / cls)
    target = root / "airplane" / "train"
    first = sorted(target.glob("*.off"))[0]
    for name, content in GOOD_ODD.items():
        path = os.path.join(os.fsencode(target), name)
        if content == "copy":
            shutil.copy(first, path)
        else:
            Path(os.fsdecode(path)).write_bytes(content)
    for name, (content, _) in BAD_MESHES.items():
        (target / name).write_bytes(content)
    (target / "folder.off").mkdir()
    (target / "dangling.off").symlink_to(target / "missing" / "x.off")
    (target / "loop.off").symlink_to(target / "loop.off")
    return root


def test_prepare_skips_each_bad_mesh_with_its_reason_and_prepares_the_rest(mesh_folder, tmp_path):
    status, out, err = run_cli(["prepare", str(mesh_folder), "--out", str(tmp_path / "store"), "--views", "2",
                                "--image-size", "32", "--points", "64", "--faces", "32", "--renderer", "splat", "--quiet"])
    assert status == 0 and "Traceback" not in err, err
    skipped = {line.split(": ", 1)[0].rsplit("/", 1)[-1]: line for line in out.splitlines() if line.startswith("  skipped")}
    bad = {**{k: v[1] for k, v in BAD_MESHES.items()}, **{k: v[1] for k, v in SPECIAL_MESHES.items()}}
    assert {f"{Path(k).stem}" for k in bad} == set(skipped), out
    for name, reason in bad.items():
        line = skipped[Path(name).stem]
        assert name in line and reason in line, line
    index = json.loads((tmp_path / "store" / "index.json").read_text())
    good = {e["key"].rsplit("/", 1)[-1] for e in index["objects"]}
    assert {"latin1_comment", "crlf", "caf\udce9_latin1_name"} <= good  # the odd but valid ones are prepared
    assert index["counts"]["present"] == 2 * 3 + len(GOOD_ODD)  # every good mesh of both classes


def test_bad_entries_do_not_move_good_files_between_splits(tmp_path):
    root = export_builtin_meshes(tmp_path / "m", seed=0, train=4, test=1)
    flat = tmp_path / "flat"
    for cls in ("airplane", "bed"):  # a folder without split folders: every fifth readable file is a test file
        (flat / cls).mkdir(parents=True)
        for f in sorted((root / cls).rglob("*.off")):
            shutil.copy(f, flat / cls / f.name)

    def test_names() -> list[str]:
        from pretext3d.data import open_splits

        return sorted(open_splits(flat, 64, on_error="skip")["test"].names)

    before = test_names()
    (flat / "airplane" / "a_folder.off").mkdir()
    (flat / "airplane" / "aa_dangling.off").symlink_to(flat / "nowhere.off")
    (flat / "bed" / "b_empty.off").write_bytes(b"")
    assert test_names() == before


# --- point-cloud files: evaluate refuses each with one line -------------------------------------

RNG = np.random.default_rng(0)
POINTS = RNG.standard_normal((20, 64, 3)).astype(np.float32)
LABELS = np.repeat(np.arange(2), 10)


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _good(**changes) -> dict:
    return {"train_x": POINTS, "train_y": LABELS, "test_x": POINTS, "test_y": LABELS, **changes}


def _huge_header() -> bytes:
    """An npz whose train_x header claims ~10^13 x 64 x 3 floats."""
    member = io.BytesIO()
    np.save(member, POINTS)
    raw = member.getvalue()
    length = int.from_bytes(raw[8:10], "little")
    header = raw[10:10 + length].decode("latin1").replace("(20, 64, 3)", "(9999999999999, 64, 3)")
    header = header.rstrip("\n").rstrip(" ")
    header = header + " " * (length - len(header) - 1) + "\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("train_x.npy", raw[:10] + header.encode("latin1") + raw[10 + length:])
        for key, value in (("train_y", LABELS), ("test_x", POINTS), ("test_y", LABELS)):
            part = io.BytesIO()
            np.save(part, value)
            archive.writestr(f"{key}.npy", part.getvalue())
    return buffer.getvalue()


CLOUD_FILES = {  # file name -> (bytes, what the line says)
    "text.npz": (b"hello, not a zip", "is not a readable npz file"),
    "empty.npz": (b"", "is empty"),
    "keys.npz": (_npz(points=POINTS), "lacks key(s)"),
    "dims.npz": (_npz(**_good(train_x=POINTS[:, :, 0])), "must be a numeric (S, N, 3) array"),
    "strings.npz": (_npz(**_good(train_x=np.array(["a", "b"]))), "must be a numeric (S, N, 3) array"),
    "fractional.npz": (_npz(**_good(train_y=LABELS + 0.5)), "not whole class indices"),
    "labels2d.npz": (_npz(**_good(train_y=np.zeros((20, 3)))), "must be a 1-D array of class indices"),
    "notrain.npz": (_npz(**_good(train_x=POINTS[:0], train_y=LABELS[:0])), "its train split holds no clouds"),
    "notest.npz": (_npz(**_good(test_x=POINTS[:0], test_y=LABELS[:0])), "its test split holds no clouds"),
    "oneclass.npz": (_npz(**_good(train_y=np.zeros(20, np.int64))), "holds a single class"),
    "latin1.npz": (_npz(**_good(classes=np.array([b"caf\xe9", b"b"]))), "not UTF-8 text"),
    "names2d.npz": (_npz(**_good(classes=np.array([["a"], ["b"]]))), "must be a 1-D array of names"),
    "pickled.npz": (None, "pickled object arrays"),
    "huge.npz": (_huge_header(), "too large to load"),
    "cut.npz": (_npz(**_good())[:300], "not a readable npz file"),
    "mismatch.npz": (_npz(**_good(train_y=LABELS[:5])), "labels"),
    "cloud.xyz": (b"1 2\n3 4\n", "is not a supported dataset file"),
}


@pytest.mark.parametrize("name", sorted(CLOUD_FILES))
def test_each_bad_cloud_file_gets_one_clear_line(name, tmp_path):
    content, problem = CLOUD_FILES[name]
    path = tmp_path / name
    if content is None:  # an object array (numpy would pickle it)
        np.savez(path, **_good(classes=np.array([{"a": 1}, None], dtype=object)))
    else:
        path.write_bytes(content)
    status, _, err = run_cli(["evaluate", "linear-svm", "--data", str(path), *QUIET_SVM])
    assert_one_clear_line(status, err, name, problem)


def test_bad_hdf5_files_get_one_clear_line(tmp_path):
    import h5py

    cases = {"junk": (None, "is not a readable HDF5 point-cloud file"), "nodata": ({"label": np.zeros(3)}, "lacks the 'data'"),
             "dims": ({"data": np.zeros((3, 4)), "label": np.zeros(3)}, "")}
    for folder, (datasets, problem) in cases.items():
        root = tmp_path / folder
        root.mkdir()
        (root / "shape_names.txt").write_text("a\nb\n")
        for split in ("train", "test"):
            path = root / f"ply_data_{split}0.h5"
            if datasets is None:
                path.write_bytes(b"\x89HDF\r\n\x1a\njunk")
            else:
                with h5py.File(path, "w") as f:
                    for key, value in datasets.items():
                        f[key] = value
        status, _, err = run_cli(["evaluate", "linear-svm", "--data", str(root), *QUIET_SVM])
        assert_one_clear_line(status, err, "ply_data_", problem)
    status, _, err = run_cli(["evaluate", "linear-svm", "--data", str(tmp_path / "nodata" / "shape_names.txt"), *QUIET_SVM])
    assert status == 2 and "Traceback" not in err


# --- checkpoints ----------------------------------------------------------------------------------


def _checkpoints(folder: Path) -> dict[str, tuple[Path, str]]:
    from safetensors.torch import save_file

    from pretext3d.models import PointNet, save_backbone

    made: dict[str, tuple[Path, str]] = {}
    (folder / "junk.safetensors").write_bytes(b"not safetensors at all")
    made["junk"] = (folder / "junk.safetensors", "not a readable safetensors file")
    (folder / "empty.safetensors").write_bytes(b"")
    made["empty"] = (folder / "empty.safetensors", "not a readable safetensors file")
    good = save_backbone(folder / "good.safetensors", PointNet(emb_dims=16), "pointnet", {"emb_dims": 16})
    (folder / "cut.safetensors").write_bytes(good.read_bytes()[:-100])
    made["cut"] = (folder / "cut.safetensors", "not a readable safetensors file")
    save_file({"w": torch.zeros(2)}, str(folder / "meta.safetensors"),
              metadata={"format": "pretext3d-backbone/1", "backbone": "pointnet", "config": "{broken"})
    made["metadata"] = (folder / "meta.safetensors", "damaged pretext3d metadata")
    save_file({"w": torch.zeros(2)}, str(folder / "unknown.safetensors"),
              metadata={"format": "pretext3d-backbone/1", "backbone": "transformer", "config": "{}"})
    made["unknown backbone"] = (folder / "unknown.safetensors", "unknown backbone 'transformer'")
    save_file({"w": torch.zeros(2)}, str(folder / "misfit.safetensors"),
              metadata={"format": "pretext3d-backbone/1", "backbone": "pointnet", "config": "{}"})
    made["weights that do not fit"] = (folder / "misfit.safetensors", "weights do not fit pointnet")
    torch.save({"model": {"layer.weight": torch.zeros(2)}}, folder / "unknown.pth")
    made["unknown reference"] = (folder / "unknown.pth", "neither a pretext3d checkpoint nor weights of a known")
    torch.save({"code": Path("x")}, folder / "pickled.pth")  # an object weights_only=True refuses to build
    made["pickled code"] = (folder / "pickled.pth", "cannot be read as weights")
    (folder / "text.pth").write_text("hello")
    made["not torch"] = (folder / "text.pth", "cannot be read as weights")
    (folder / "run").mkdir()
    made["unfinished run"] = (folder / "run", "without backbone.safetensors")
    made["missing"] = (folder / "nowhere.safetensors", "does not exist")
    return made


def test_each_bad_checkpoint_gets_one_clear_line(tmp_path):
    data = tmp_path / "two.npz"
    data.write_bytes(_npz(**_good()))
    for what, (path, problem) in _checkpoints(tmp_path).items():
        status, _, err = run_cli(["evaluate", "linear-svm", "--data", str(data), "--checkpoint", str(path),
                                  "--points", "32", "--no-cache", "--quiet"])
        assert_one_clear_line(status, err, path.name, problem)
    status, _, err = run_cli(["evaluate", "linear-svm", "--data", str(data), "--checkpoint",
                              str(tmp_path / "good.safetensors"), "--backbone", "dgcnn", "--points", "32", "--quiet",
                              "--no-cache"])
    assert_one_clear_line(status, err, "good.safetensors", "holds a pointnet backbone, not a dgcnn")


# --- recipes and overrides: refused before any work ---------------------------------------------

BAD_RECIPES = {  # file name -> (bytes, what the line says)
    "broken.yaml": (b"method: parae\nsteps: [1, 2\n", "not valid YAML"),
    "aliases.yaml": (b"a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                     b"c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nmethod: parae\nsteps: 1\n", "may not use YAML aliases"),
    "latin1.yaml": (b"# recette mod\xe8le\nmethod: parae\nsteps: 1\n", "not UTF-8 text"),
    "list.yaml": (b"- method: parae\n", "a recipe is a mapping"),
    "unknown.yaml": (b"method: parae\nsteps: 1\nlearning_rate: 0.1\n", "unknown recipe key 'learning_rate'"),
    "nomethod.yaml": (b"steps: 1\n", "method must be one of"),
    "nolength.yaml": (b"method: parae\n", "give steps or epochs"),
    "tags.yaml": (b"method: !!python/object/apply:os.system ['true']\nsteps: 1\n", "not valid YAML"),
    "modelkey.yaml": (b"method: parae\nsteps: 1\nmodel: {partitons: 8}\n", "its settings: backbone, partitions"),
}


@pytest.mark.parametrize("name", sorted(BAD_RECIPES))
def test_each_bad_recipe_gets_one_clear_line(name, tmp_path):
    content, problem = BAD_RECIPES[name]
    (tmp_path / name).write_bytes(content)
    status, _, err = run_cli(["pretrain", "--recipe", str(tmp_path / name), "--out", str(tmp_path / "run")])
    assert_one_clear_line(status, err, name if problem not in ("its settings: backbone, partitions",) else "model:", problem)
    assert not (tmp_path / "run" / "recipe.json").exists()  # nothing a retry would trip over


BAD_OVERRIDES = [
    ("checkpoint_every=0", "checkpoint_every must be a positive integer"),
    ("log_every=0", "log_every must be a positive integer"),
    ("optimizer.lr=fast", "optimizer.lr must be a positive number"),
    ("optimizer.lr=-1", "optimizer.lr must be a positive number"),
    ("optimizer.name=lbfgs", "optimizer.name must be one of adam, adamw, sgd"),
    ("schedule.name=linear", "schedule.name must be one of cosine, step, constant"),
    ("keep_checkpoints=-1", "keep_checkpoints must be a positive integer"),
    ("keep_checkpoints=0", "keep_checkpoints must be a positive integer"),
    ("checkpoint_every=-1", "checkpoint_every must be a positive integer"),
    ("batch_size=true", "batch_size must be a positive integer"),
    ("data_options.points=0", "data_options.points must be a positive integer"),
    ("grad_clip=abc", "grad_clip must be a positive number or null"),
    ("device=gpu7", "device must be auto, cpu, cuda, cuda:N or mps"),
    ("amp=1", "amp must be true or false"),
    ("seed=1.5", "seed must be an integer"),
    ("epochs=-2", "epochs must be a positive number or null"),
    ("data_options.augment={rotat: false}", "unknown recipe key data_options.augment.rotat"),
    ("optimizer.betas=[0.9]", "optimizer.betas must be two numbers in [0, 1)"),
    ("data=[1, 2]", "data must be a path"),
    ("model={a: &x [1], b: *x}", "may not use YAML aliases"),
]


@pytest.mark.parametrize("override, problem", BAD_OVERRIDES)
def test_each_bad_override_is_refused_before_any_work(override, problem, tmp_path):
    status, _, err = run_cli(["pretrain", "--recipe", "parae_cpu", "--out", str(tmp_path / "run"), override])
    assert_one_clear_line(status, err, override.split("=")[0].split(".")[-1], problem)
    assert not (tmp_path / "run" / "recipe.json").exists()


def test_a_device_the_machine_lacks_is_refused_before_any_work(tmp_path):
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the GPUs this machine has
    status, _, err = run_cli(["pretrain", "--recipe", "parae_cpu", "--out", str(tmp_path / "run"), f"device={missing}"])
    assert_one_clear_line(status, err, missing, "CUDA device(s)")


# --- output locations: checked before the work --------------------------------------------------


def test_each_bad_output_location_gets_one_clear_line(tmp_path):
    data = tmp_path / "two.npz"
    data.write_bytes(_npz(**_good()))
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("x")
    cases = [
        (["evaluate", "linear-svm", "--data", str(data), *QUIET_SVM, "--json", str(tmp_path / "a_folder")],
         "a_folder", "a folder where a file is expected", 1),
        (["evaluate", "linear-svm", "--data", str(data), *QUIET_SVM, "--json", str(tmp_path / "a_file" / "r.json")],
         "a_file", "", 1),
        (["pretrain", "--recipe", "parae_cpu", "--out", str(tmp_path / "a_file")], "a_file", "is not a folder", 2),
        (["prepare", str(data), "--out", str(tmp_path / "a_file"), "--quiet"], "a_file", "", 1),
        (["report", str(tmp_path / "a_folder"), "--out", str(tmp_path / "a_folder")], "a_folder",
         "a folder where a file is expected", 1),
    ]
    for args, names, problem, expected in cases:
        status, _, err = run_cli(args)
        assert_one_clear_line(status, err, names, problem, expected)


# --- prepared stores: files outside the store are never opened -----------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store") / "s"
    status, _, err = run_cli(["prepare", "builtin:train=1,test=1", "--out", str(root), "--views", "2",
                              "--image-size", "32", "--points", "64", "--faces", "32", "--renderer", "splat", "--quiet"])
    assert status == 0, err
    return root


def _copy(store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "s"
    shutil.copytree(store, copy)
    return copy


@pytest.mark.parametrize("target", ["../../outside/x.npz", "/etc/passwd", "objects/../store.json"])
def test_an_index_naming_a_file_outside_the_store_is_refused(store, tmp_path, target):
    copy = _copy(store, tmp_path)
    index = json.loads((copy / "index.json").read_text())
    index["objects"][0]["file"] = target
    (copy / "index.json").write_text(json.dumps(index))
    status, _, err = run_cli(["evaluate", "multiview", "--data", str(copy), "--random-init", "--views", "1",
                              "--no-cache", "--quiet"])
    assert_one_clear_line(status, err, "index.json", "not inside the store's objects/ folder")
    status, out, _ = run_cli(["verify", str(copy), "--quiet"])
    assert status == 1 and "not inside the store's objects/ folder" in out  # verify names it too


def test_records_cannot_point_an_object_at_another_file(store, tmp_path):
    copy = _copy(store, tmp_path)
    index = json.loads((copy / "index.json").read_text())
    key = index["objects"][0]["key"]
    (copy / "records" / "forged.jsonl").write_text(json.dumps(
        {"key": key, "status": "done", "present": {"file": "../../outside/x.npz", "points": 64}, "time": 9e12}) + "\n")
    status, out, _ = run_cli(["verify", str(copy), "--reindex", "--quiet"])
    rebuilt = json.loads((copy / "index.json").read_text())
    assert status == 0 and all(e["file"].startswith("objects/") for e in rebuilt["objects"]), out


def test_damaged_store_files_get_one_clear_line(store, tmp_path):
    cases = {
        "store.json": (b"{broken", "store.json"),
        "index.json": (None, "has no index.json"),
    }
    for name, (content, problem) in cases.items():
        copy = _copy(store, tmp_path / name)
        if content is None:
            (copy / name).unlink()
        else:
            (copy / name).write_bytes(content)
        status, _, err = run_cli(["evaluate", "multiview", "--data", str(copy), "--random-init", "--views", "1",
                                  "--no-cache", "--quiet"])
        assert_one_clear_line(status, err, str(copy), problem)
    copy = _copy(store, tmp_path / "manifest")
    (copy / "manifest.json").write_bytes(b"[]")
    status, _, err = run_cli(["verify", str(copy), "--quiet"])
    assert_one_clear_line(status, err, "manifest.json", "")
    copy = _copy(store, tmp_path / "object")
    victim = sorted((copy / "objects").rglob("*.npz"))[0]
    victim.write_bytes(b"PK\x03\x04garbage")
    status, out, _ = run_cli(["verify", str(copy), "--quiet"])
    assert status == 1 and "BAD" in out and victim.name.replace(".npz", "") in out


def test_a_manifest_key_cannot_leave_the_objects_folder(store, tmp_path):
    from pretext3d.data.errors import DataFormatError
    from pretext3d.data.store import object_path

    for key in ("../x", "./x", "train"):
        with pytest.raises(DataFormatError, match="not <split>/<name>"):
            object_path(tmp_path, key)
    assert object_path(tmp_path, "train/../../etc").parent == tmp_path / "objects" / "train"
