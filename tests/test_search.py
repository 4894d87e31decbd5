"""Cross-modal search (``pretext3d index / search / serve``, ``pretext3d.search``): an index of
the built-in shapes round-trips (each object finds itself first, class-mates rank above the
rest), scores equal ``evaluate retrieval`` on the same data, a re-index after adding, changing
and removing files equals a fresh index, so does a re-run after kill -9 and a merge of shards;
the server answers its API, survives a corpus of bad uploads, and its page shows results for a
search made through the page in headless chromium."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from pretext3d.cli import main
from pretext3d.data import export_builtin_meshes
from pretext3d.data.meshes import load_mesh
from pretext3d.data.prepare import prepare
from pretext3d.data.store import StoreSettings, decode_images, read_index, read_object, store_file

SMALL = StoreSettings(points=128, views=2, image_size=32, faces=64)
DATA = "builtin:train=2,test=1"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("search")


@pytest.fixture(scope="module")
def store(root) -> Path:
    out = root / "store"
    prepare(DATA, out, SMALL, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def run(root, store) -> Path:
    """A small CrossPoint run (shared point/image space) trained for a few steps."""
    out = root / "cp"
    assert main(["pretrain", "--recipe", "crosspoint_cpu", "--out", str(out), f"data={store}", "steps=6", "batch_size=8",
                 "data_options.points=128", "data_options.image_size=32", "num_workers=0",
                 "model.backbone_config={emb_dims: 32, widths: [16]}", "model.hidden_dim=16",
                 "model.projection_dim=8"]) == 0
    return out


@pytest.fixture(scope="module")
def index(root, run) -> Path:
    out = root / "index"
    assert main(["index", DATA, "--checkpoint", str(run), "--out", str(out), "--views", "2", "--quiet"]) == 0
    return out


def _same_index(a: Path, b: Path, atol: float = 1e-5) -> None:
    """Two indexes hold the same objects (ids, digests, classes, order) and vectors."""
    from pretext3d.search import open_index

    first, second = open_index(a), open_index(b)
    strip = lambda objects: [{k: o[k] for k in ("id", "digest", "class", "label", "split")} for o in objects]  # noqa: E731
    assert strip(first.objects) == strip(second.objects)
    assert first.modalities == second.modalities
    for m in first.modalities:
        np.testing.assert_allclose(first.vectors(m), second.vectors(m), atol=atol)
    assert [first.thumbnail(i) for i in range(len(first))] == [second.thumbnail(i) for i in range(len(second))]


# --- round trip ---------------------------------------------------------------------------------


def test_an_index_round_trips_and_class_mates_rank_first(index):
    from pretext3d.search import open_index

    opened = open_index(index)
    assert len(opened) == 14 * 3 and opened.modalities == ("points", "image")
    info = json.loads((index / "index.json").read_text())
    assert info["space"] == "shared" and info["search"]["points"]["kind"] == "exact"
    for m in opened.modalities:
        vectors = opened.vectors(m)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        for row in range(len(opened)):  # every object's own vector finds itself first
            hits = opened.search_vector(np.asarray(vectors[row]), m, k=3)
            assert hits[0].id == opened.objects[row]["id"] and hits[0].score == pytest.approx(1.0, abs=1e-5)
    # an id query: the object itself first (score 1), then its neighbours
    hits = opened.query(opened.objects[5]["id"], k=4)
    assert hits[0].id == opened.objects[5]["id"] and [h.rank for h in hits] == [1, 2, 3, 4]
    # class-mates rank above the rest: mean precision far above the chance of a random ranking
    scores = opened.evaluate("points", "points")
    chance = 2 / 41  # 2 class-mates among the 41 others
    assert scores["queries"] == 42 and scores["mAP"] > 3 * chance
    blocks = opened.evaluate("points", "points", chunk=5)  # query blocks combine to the same scores
    assert blocks["mAP"] == pytest.approx(scores["mAP"]) and blocks["top_k"] == pytest.approx(scores["top_k"])
    assert blocks["precision_at_k"] == pytest.approx(scores["precision_at_k"])


def test_scores_from_the_index_equal_evaluate_retrieval_on_the_same_store(root, run, store):
    from pretext3d.eval.retrieval import StoreRetrievalConfig, run_store_retrieval
    from pretext3d.search import open_index

    out = root / "index_of_store"
    assert main(["index", str(store), "--checkpoint", str(run), "--out", str(out), "--splits", "test", "--quiet"]) == 0
    opened = open_index(out)
    assert len(opened) == 14 and (out / "store").exists() is False  # a store SOURCE is read in place
    report = run_store_retrieval(StoreRetrievalConfig(data=str(store), checkpoint=str(run), num_points=128,
                                                      use_cache=False, progress=False), log=lambda _: None)
    for pair in ("points->image", "image->points"):
        mine = opened.evaluate(*pair.split("->"), split="test")
        theirs = report["results"][pair]
        assert mine["mAP"] == pytest.approx(theirs["mAP"], abs=1e-9)
        assert mine["top_k"] == pytest.approx(theirs["top_k"], abs=1e-9)


def test_search_by_files_of_every_kind_and_by_id(index, root, tmp_path, capsys):
    from PIL import Image

    from pretext3d.search import open_index

    opened = open_index(index)
    meshes = export_builtin_meshes(tmp_path / "meshes", seed=0, train=1, test=0)
    mesh_file = next(meshes.rglob("chair_0000.off"))
    cloud = tmp_path / "cloud.npy"
    np.save(cloud, load_mesh(mesh_file).vertices.astype(np.float32))
    entry = next(e for e in read_index(root / "index" / "store")["objects"] if e["name"] == "chair_0001")
    arrays = read_object(store_file(root / "index" / "store", entry["file"]))
    images, _ = decode_images(arrays["images_png"], arrays["image_offsets"], [0])
    photo = tmp_path / "view.png"
    Image.fromarray(images[0]).save(photo)
    text_cloud = tmp_path / "cloud.xyz"
    np.savetxt(text_cloud, arrays["points"])
    for query, kind in ((mesh_file, "points"), (cloud, "points"), (text_cloud, "points"), (photo, "image")):
        out = tmp_path / f"{Path(query).stem}.json"
        assert main(["search", str(index), str(query), "--k", "5", "--json", str(out)]) == 0
        answer = json.loads(out.read_text())
        assert answer["query_modality"] == kind and answer["modality"] == kind and len(answer["hits"]) == 5
        assert [h["rank"] for h in answer["hits"]] == [1, 2, 3, 4, 5]
        assert all(a["score"] >= b["score"] for a, b in zip(answer["hits"], answer["hits"][1:]))
    # the stored cloud of an indexed object finds that object first, through the whole query path
    hits = opened.query(arrays["points"], k=1)
    assert hits[0].id == entry["key"]
    # cross-modal: an image query searches the points, and a mesh the images
    assert main(["search", str(index), str(photo), "--modality", "points", "--k", "3"]) == 0
    assert main(["search", str(index), str(mesh_file), "--modality", "image", "--k", "3"]) == 0
    assert main(["search", str(index), entry["key"], "--query-modality", "image", "--k", "3"]) == 0
    printed = capsys.readouterr().out
    assert f"{entry['key']} (image) -> image" in printed
    assert main(["search", str(index), "test/no_such_object"]) == 2
    assert "neither a file nor the id of an indexed object" in capsys.readouterr().err


# --- updates, kills and shards ------------------------------------------------------------------


def _write_off(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    lines = ["OFF", f"{len(vertices)} {len(faces)} 0", *(" ".join(map(str, v)) for v in vertices),
             *("3 " + " ".join(map(str, f)) for f in faces)]
    path.write_text("\n".join(lines) + "\n")


def test_a_re_index_after_add_change_remove_equals_a_fresh_index(run, tmp_path, capsys):
    folder = export_builtin_meshes(tmp_path / "meshes", seed=0, train=1, test=0)
    spare = tmp_path / "spare"
    shutil.move(str(folder / "vase"), spare)  # a class added later
    incremental = tmp_path / "incremental"
    common = ["--checkpoint", str(run), "--views", "2", "--quiet"]
    assert main(["index", str(folder), "--out", str(incremental), *common]) == 0
    assert "13 object(s) embedded now, 0 kept" in capsys.readouterr().out
    shutil.move(str(spare), folder / "vase")  # add
    chair = next(folder.rglob("chair_0000.off"))
    mesh = load_mesh(next(folder.rglob("table_0000.off")))
    _write_off(chair, mesh.vertices, mesh.faces)  # change: the chair's file now holds a table
    next(folder.rglob("lamp_0000.off")).unlink()  # remove
    assert main(["index", str(folder), "--out", str(incremental), *common]) == 0
    out = capsys.readouterr().out
    assert "2 object(s) embedded now, 11 kept from before" in out  # the vase and the changed chair only
    fresh = tmp_path / "fresh"
    assert main(["index", str(folder), "--out", str(fresh), *common]) == 0
    _same_index(incremental, fresh)
    from pretext3d.search import open_index

    opened = open_index(incremental)
    assert not any(o["name"] == "lamp_0000" for o in opened.objects)
    # the changed chair's prepared object was made again: its stored cloud is the table's now
    assert len(list((incremental / "chunks").glob("*.npz"))) == 1  # chunks compacted
    assert len([p for p in incremental.iterdir() if p.name.startswith("gen-")]) == 1  # the old generation is gone


def test_kill_9_during_indexing_then_a_re_run_gives_the_same_index(run, tmp_path):
    source = "builtin:train=3,test=1"
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "pretext3d.cli", "index", source, "--checkpoint", str(run), "--out", str(killed),
               "--views", "2", "--batch-size", "2", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if len(list((killed / "chunks").glob("*.npz"))) >= 3:  # in the middle of embedding
            break
        time.sleep(0.05)
    assert process.poll() is None, "the index finished before it could be killed: " + process.stderr.read().decode()[-500:]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "index.json").exists()
    assert main(["index", source, "--checkpoint", str(run), "--out", str(killed), "--views", "2", "--quiet"]) == 0
    fresh = tmp_path / "fresh"
    assert main(["index", source, "--checkpoint", str(run), "--out", str(fresh), "--views", "2", "--quiet"]) == 0
    _same_index(killed, fresh)
    assert not list(killed.rglob("*.tmp"))


def test_shards_indexed_apart_merge_into_the_fresh_index(run, index, tmp_path, capsys):
    parts = [tmp_path / "part0", tmp_path / "part1"]
    for i, part in enumerate(parts):
        assert main(["index", DATA, "--checkpoint", str(run), "--out", str(part), "--views", "2", "--shard", f"{i}/2",
                     "--quiet"]) == 0
        assert not (part / "index.json").exists()
    assert "pretext3d index merge" in capsys.readouterr().out
    assert main(["index", "merge", str(parts[0]), str(parts[1]), "--quiet"]) == 0
    _same_index(parts[0], index)
    from pretext3d.search import open_index

    assert len(open_index(parts[0]).views(open_index(parts[0]).objects[-1]["id"])) == 2  # views copied too


def test_an_index_refuses_other_weights_and_unknown_modalities(run, index, root, tmp_path, capsys):
    other = root / "cp_other"
    assert main(["pretrain", "--recipe", "crosspoint_cpu", "--out", str(other), f"data={root / 'store'}", "steps=1",
                 "batch_size=8", "data_options.points=128", "data_options.image_size=32", "num_workers=0", "seed=3",
                 "model.backbone_config={emb_dims: 32, widths: [16]}", "model.hidden_dim=16",
                 "model.projection_dim=8"]) == 0
    assert main(["index", DATA, "--checkpoint", str(other), "--out", str(index), "--views", "2", "--quiet"]) == 2
    assert "was indexed with other settings or weights" in capsys.readouterr().err
    assert main(["index", DATA, "--checkpoint", str(run), "--out", str(tmp_path / "m"), "--modalities", "mesh"]) == 2
    assert "cannot index the mesh modality" in capsys.readouterr().err
    assert main(["search", str(tmp_path), "x.png"]) == 2
    assert "not a finished pretext3d index" in capsys.readouterr().err


# --- the server -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(index):
    from pretext3d.search.server import create_app

    with warnings.catch_warnings():  # Starlette's test client warns that it will move from httpx
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

        return TestClient(create_app(index, max_upload_bytes=200_000))


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_api_lists_shows_and_searches(client):
    info = client.get("/api/info").json()
    assert info["objects"] == 42 and info["modalities"] == ["points", "image"] and "chair" in info["classes"]
    page = client.get("/api/objects", params={"offset": 2, "limit": 2, "cls": "chair"}).json()
    assert page["total"] == 3 and [o["class"] for o in page["objects"]] == ["chair"]
    row = page["objects"][0]["row"]
    thumb = client.get(f"/api/thumbnail/{row}")
    assert thumb.status_code == 200 and thumb.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get(f"/api/views/{row}").json()["views"] == 2
    assert client.get(f"/api/view/{row}/1").content[:4] == b"\x89PNG"
    answer = client.get("/api/search", params={"row": row, "k": 5, "modality": "image"}).json()
    assert answer["query_modality"] == "points" and answer["modality"] == "image" and len(answer["hits"]) == 5
    upload = client.post("/api/search", files={"file": ("q.npy", _npy(np.random.default_rng(0).random((300, 3))))},
                         data={"k": "4"})
    assert upload.status_code == 200 and len(upload.json()["hits"]) == 4
    image = client.post("/api/search", files={"file": ("q.png", _png(np.full((40, 40, 3), 200, np.uint8)))},
                        data={"modality": "points"})
    assert image.json()["query_modality"] == "image" and image.json()["modality"] == "points"
    assert "<title>pretext3d search</title>" in client.get("/").text


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


BAD_UPLOADS = {
    "empty.obj": (b"", "is empty"),
    "truncated.png": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "not a readable image"),
    "truncated.npy": (_npy(np.zeros((50, 3)))[:90], "npy"),
    "wrong.exe": (b"MZ\x90\x00", "not a query file type"),
    "notamesh.off": (b"hello world\n", "OFF"),
    "huge.npy": (b"\x00" * 300_000, "limit"),
    "nan.npy": (_npy(np.full((20, 3), np.nan)), "NaN"),
    "nan.xyz": (b"0 0 0\nnan 1 2\n1 1 1\n", "NaN"),
    "flat.npy": (_npy(np.ones((20, 3))), "same point"),
    "strings.npy": (_npy(np.array(["a", "b"])), "shape"),
    "../../escape.npy": (_npy(np.random.default_rng(0).random((30, 3))), None),  # a name is never a path
}


def test_bad_uploads_each_get_a_clear_error_and_the_server_stays_up(client, tmp_path):
    before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("pretext3d-upload-*"))
    for name, (data, expected) in BAD_UPLOADS.items():
        response = client.post("/api/search", files={"file": (name, data)})
        if expected is None:
            assert response.status_code == 200, response.text
            continue
        assert response.status_code in (400, 413), (name, response.text)
        message = response.json()["error"]
        assert expected.lower() in message.lower(), (name, message)
        assert "/tmp/" not in message and "query." not in message  # the upload's name, not the temporary file
    assert client.post("/api/search", data={"k": "3"}).json()["error"].startswith("no file")

    def chunked_body():  # no Content-Length: the body is cut off as it arrives
        yield b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.npy\"\r\n\r\n"
        for _ in range(40):
            yield b"\x00" * 10_000
    chunked = client.post("/api/search", content=chunked_body(),
                          headers={"content-type": "multipart/form-data; boundary=x"})
    assert chunked.status_code == 413 and "limit" in chunked.json()["error"]
    assert client.get("/api/search", params={"row": "abc"}).status_code == 400
    assert client.get("/api/thumbnail/100000").status_code == 400
    assert client.get("/api/search", params={"row": 0, "k": 0}).status_code == 400
    assert client.get("/api/search", params={"row": 0}).status_code == 200  # still serving
    assert set(Path(os.environ.get("TMPDIR", "/tmp")).glob("pretext3d-upload-*")) == before  # uploads removed


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (apt-get install chromium) for the page check")
def test_the_page_shows_results_of_searches_made_through_it(index, tmp_path):
    from tests_helpers import DevTools

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "pretext3d.cli", "serve", str(index), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(f"http://127.0.0.1:{port}/api/info", server)
        meshes = export_builtin_meshes(tmp_path / "meshes", seed=0, train=1, test=0)
        mesh_file = next(meshes.rglob("chair_0000.off"))
        with DevTools(_chromium(), tmp_path / "profile") as page:
            page.open(f"http://127.0.0.1:{port}/")
            page.wait("document.body.dataset.ready === '1'")
            assert page.eval("document.querySelectorAll('#gallery .card').length") == 42
            page.upload("#file", mesh_file)  # a search by a mesh, through the page's file input
            page.wait("document.body.dataset.searched === '1'")
            assert page.eval("document.querySelectorAll('#results .card').length") == 12
            assert page.eval("document.getElementById('error').style.display") != "block"
            page.screenshot(tmp_path / "mesh.png")
            page.eval("document.querySelector('#gallery .card').click()")  # search by clicking an object
            page.wait("document.body.dataset.searched === '2'")
            page.wait("document.querySelectorAll('#views img').length === 2")
            bad = tmp_path / "bad.png"
            bad.write_bytes(b"not an image")
            page.upload("#file", bad)
            page.wait("document.body.dataset.failed === '1'")
            assert "not a readable image" in page.eval("document.getElementById('error').textContent")
        assert (tmp_path / "mesh.png").stat().st_size > 20_000
        assert server.poll() is None  # still serving
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def _wait_for(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    import urllib.request

    deadline = time.time() + seconds
    while time.time() < deadline:
        if server.poll() is not None:
            raise AssertionError("the server stopped: " + server.stderr.read().decode()[-2000:])
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {seconds} s")


# --- readers and digests --------------------------------------------------------------------------


def test_query_files_are_read_by_kind_and_a_ply_without_faces_is_a_cloud(tmp_path):
    import trimesh

    from pretext3d.search.queries import QueryError, read_query_file

    cloud = np.random.default_rng(0).random((64, 3))
    trimesh.PointCloud(cloud).export(tmp_path / "cloud.ply")
    trimesh.creation.box().export(tmp_path / "box.ply")
    assert read_query_file(tmp_path / "cloud.ply").kind == "points"
    assert read_query_file(tmp_path / "box.ply").kind == "mesh"
    np.savetxt(tmp_path / "n.txt", np.hstack([cloud, cloud]))
    assert read_query_file(tmp_path / "n.txt").value.shape == (64, 3)
    (tmp_path / "two.txt").write_text("1 2\n3 4\n")
    with pytest.raises(QueryError, match="two.txt.*columns"):
        read_query_file(tmp_path / "two.txt")
    with pytest.raises(QueryError, match="no such file"):
        read_query_file(tmp_path / "missing.obj")


def test_an_obj_digest_follows_its_material_and_texture(tmp_path):
    from pretext3d.data.sources import _files_digest

    (tmp_path / "m.obj").write_text("mtllib m.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    (tmp_path / "m.mtl").write_text("newmtl a\nmap_Kd tex.png\n")
    (tmp_path / "tex.png").write_bytes(b"one")
    first = _files_digest(tmp_path / "m.obj")
    (tmp_path / "tex.png").write_bytes(b"two")
    assert _files_digest(tmp_path / "m.obj") != first
    (tmp_path / "tex.png").write_bytes(b"one")
    assert _files_digest(tmp_path / "m.obj") == first


def test_the_approximate_index_reports_its_recall_and_is_refused_when_it_is_poor(monkeypatch):
    from pretext3d.search import vectors as faiss_side

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 32))
    clustered = (centres[rng.integers(0, 20, 3000)] + 0.3 * rng.standard_normal((3000, 32))).astype(np.float32)
    clustered /= np.linalg.norm(clustered, axis=1, keepdims=True)
    assert faiss_side.build_faiss(clustered, "auto", above=5000).kind == "exact"  # small: exact
    built = faiss_side.build_faiss(clustered, "auto", above=1000)
    assert built.kind == "hnsw" and built.recall >= faiss_side.MIN_RECALL
    described = built.describe()
    assert described["recall_queries"] == 1000 and described["efSearch"] in faiss_side.EF_SEARCH_STEPS
    # recall is measured, not assumed: the same vectors against an unreachable bar keep exact search
    monkeypatch.setattr(faiss_side, "MIN_RECALL", 1.01)
    refused = faiss_side.build_faiss(clustered, "auto", above=1000)
    assert refused.kind == "exact" and "exact search kept" in refused.describe()["note"]
    assert refused.describe()["hnsw_refused"]["efSearch"] == faiss_side.EF_SEARCH_STEPS[-1]
    assert faiss_side.build_faiss(clustered, "always", above=10 ** 9).kind == "hnsw"  # asked for: kept
    found, _ = faiss_side.recall_against_exact(faiss_side.exact_index(clustered), clustered)
    assert found == 1.0  # exact search against itself: the check can tell right from wrong


def test_index_actions_are_found_after_the_programs_own_options():
    from pretext3d.cli_search import index_actions

    assert index_actions(["index", "merge", "a", "b"]) == ["index-merge", "a", "b"]
    assert index_actions(["--threads", "2", "index", "evaluate", "x"]) == ["--threads", "2", "index-evaluate", "x"]
    assert index_actions(["--threads=auto", "index", "merge", "x"]) == ["--threads=auto", "index-merge", "x"]
    assert index_actions(["index", "merge_folder", "--out", "x"]) == ["index", "merge_folder", "--out", "x"]
    assert index_actions(["search", "index", "merge"]) == ["search", "index", "merge"]
