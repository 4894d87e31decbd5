"""Fault injection: full and read-only disks, killed workers, concurrent runs on one folder,
damaged and unfinished checkpoints, failed starts. Each gives one clear answer and loses
nothing a re-run would trust."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretext3d.utils.lock import FolderBusy, folder_lock
from tests.test_bad_inputs import assert_one_clear_line, run_cli

TINY_PARAE = [
    "model.backbone_config={encoder_widths: [16, 32], decoder_widths: [32], skip_layer: 0, pooling: max}",
    "model.partitions=8", "data_options.points=64", "data_options.builtin={train: 2, test: 1}",
    "batch_size=8", "amp=false", "steps=6", "log_every=1", "num_workers=0", "checkpoint_every=2", "keep_checkpoints=3",
    "device=cpu",
]
SMALL_STORE = ["--views", "2", "--image-size", "32", "--points", "64", "--faces", "32", "--renderer", "splat"]


def _full_disk_after(calls: int):
    """A replacement for a write function that fails like a full disk from its ``calls``-th call on."""
    count = {"n": 0}

    def fail(*args, **kwargs):
        count["n"] += 1
        if count["n"] >= calls:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fail.original(*args, **kwargs)

    return fail


# --- full and read-only disks ---------------------------------------------------------------------


def test_a_full_disk_stops_prepare_and_a_rerun_finishes_the_store(tmp_path, monkeypatch):
    failing = _full_disk_after(6)  # the disk fills while the fourth object is written
    failing.original = os.fsync
    monkeypatch.setattr(os, "fsync", failing)
    out = tmp_path / "store"
    status, _, err = run_cli(["prepare", "builtin:train=1,test=1", "--out", str(out), *SMALL_STORE, "--quiet"])
    assert_one_clear_line(status, err, str(out / "objects"), "No space left on device (the disk is full", 1)
    records = [json.loads(line) for f in (out / "records").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert records and all(r["status"] == "done" for r in records)  # a full disk is never recorded as bad data
    assert not list(out.rglob("*.tmp"))  # nothing half-written
    monkeypatch.undo()
    status, out_text, err = run_cli(["prepare", "builtin:train=1,test=1", "--out", str(out), *SMALL_STORE, "--quiet"])
    assert status == 0 and "0 failed" in out_text, err
    status, out_text, _ = run_cli(["verify", str(out), "--quiet"])
    assert status == 0 and out_text.rstrip().endswith("OK"), out_text


def _mount_tmpfs(folder: Path, options: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    return result.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small or read-only tmpfs needs root")
def test_real_full_and_read_only_disks(tmp_path):
    small, readonly = tmp_path / "small", tmp_path / "readonly"
    if not _mount_tmpfs(small, "size=64k"):
        pytest.skip("this machine does not allow mounting a tmpfs (container without the capability)")
    try:
        assert _mount_tmpfs(readonly, "size=1m,ro")
        try:
            status, _, err = run_cli(["prepare", "builtin:train=3,test=1", "--out", str(small / "store"), *SMALL_STORE,
                                      "--quiet"])
            assert_one_clear_line(status, err, str(small / "store"), "No space left on device", 1)
            status, _, err = run_cli(["prepare", "builtin:train=1,test=1", "--out", str(readonly / "store"),
                                      *SMALL_STORE, "--quiet"])
            assert_one_clear_line(status, err, str(readonly / "store"), "Read-only file system", 1)
            status, _, err = run_cli(["pretrain", "--recipe", "parae_cpu", "--out", str(readonly / "run"), *TINY_PARAE])
            assert_one_clear_line(status, err, str(readonly / "run"), "Read-only file system", 1)
        finally:
            subprocess.run(["umount", str(readonly)], check=False)
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_a_full_disk_at_a_checkpoint_stops_pretraining_and_the_run_resumes(tmp_path, monkeypatch):
    import safetensors.torch

    calls = {"n": 0}
    original = safetensors.torch.save_file

    def full_after_first(*args, **kwargs):  # the checkpoint of step 2 is written, the one of step 4 is not
        calls["n"] += 1
        if calls["n"] >= 2:  # as safetensors reports it
            raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
        return original(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", full_after_first)
    run = tmp_path / "run"
    status, _, err = run_cli(["pretrain", "--recipe", "parae_cpu", "--out", str(run), *TINY_PARAE])
    assert_one_clear_line(status, err, "model.safetensors", "No space left on device", 1)
    assert [p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith(".")] == ["step-0000002"]
    monkeypatch.undo()
    status, _, err = run_cli(["pretrain", "--recipe", "parae_cpu", "--out", str(run), "--resume", *TINY_PARAE])
    assert status == 0, err
    assert not list((run / "checkpoints").glob(".step-*"))  # the unfinished one was removed
    whole = tmp_path / "whole"
    assert run_cli(["pretrain", "--recipe", "parae_cpu", "--out", str(whole), *TINY_PARAE])[0] == 0
    resumed, uninterrupted = load_file(str(run / "backbone.safetensors")), load_file(str(whole / "backbone.safetensors"))
    assert all(torch.equal(resumed[k], v) for k, v in uninterrupted.items())


# --- run folders --------------------------------------------------------------------------------


def test_a_failed_start_leaves_the_folder_reusable(tmp_path):
    run = tmp_path / "run"
    status, _, err = run_cli(["pretrain", "--recipe", "parae_cpu", "--out", str(run), *TINY_PARAE,
                              f"data={tmp_path / 'missing.npz'}"])
    assert status == 2 and "missing.npz" in err
    status, _, err = run_cli(["pretrain", "--recipe", "parae_cpu", "--out", str(run), *TINY_PARAE, "steps=2"])
    assert status == 0, err  # the same folder, no "already holds a run"
    status, _, err = run_cli(["pretrain", "--recipe", "parae_cpu", "--out", str(run), *TINY_PARAE])
    assert_one_clear_line(status, err, str(run), "already holds a run; pass --resume")


def test_a_second_run_into_a_busy_folder_is_refused_and_a_killed_one_leaves_no_lock(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with folder_lock(run):
        status, _, err = run_cli(["pretrain", "--recipe", "parae_cpu", "--out", str(run), *TINY_PARAE])
        assert_one_clear_line(status, err, str(run), "another pretext3d run is using this folder")
        with pytest.raises(FolderBusy, match=f"pid {os.getpid()}"):
            with folder_lock(run):
                pass
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pretext3d.utils.lock import folder_lock\n"
                               f"with folder_lock({str(run)!r}):\n    print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(FolderBusy):
        with folder_lock(run):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with folder_lock(run):  # the kernel released the killed holder's lock
        pass


def test_two_prepares_of_one_shard_are_refused_but_shards_run_side_by_side(tmp_path):
    out = tmp_path / "store"
    out.mkdir()
    with folder_lock(out, "prepare", ".lock-0-of-1"):
        status, _, err = run_cli(["prepare", "builtin:train=1,test=1", "--out", str(out), *SMALL_STORE, "--quiet"])
        assert_one_clear_line(status, err, str(out), "another pretext3d prepare of shard 0/1")
        status, _, err = run_cli(["prepare", "builtin:train=1,test=1", "--out", str(out), *SMALL_STORE, "--quiet",
                                  "--shard", "1/2"])
        assert status == 0, err


def test_resume_falls_back_past_a_damaged_checkpoint_and_says_so(tmp_path):
    run, whole = tmp_path / "run", tmp_path / "whole"
    assert run_cli(["pretrain", "--recipe", "parae_cpu", "--out", str(whole), *TINY_PARAE])[0] == 0
    assert run_cli(["pretrain", "--recipe", "parae_cpu", "--out", str(run), *TINY_PARAE])[0] == 0
    newest = run / "checkpoints" / "step-0000006"
    (newest / "model.safetensors").write_bytes(b"damaged")
    (run / "checkpoints" / ".step-0000008.tmp-12345").mkdir()  # a write a killed process left behind
    (run / "backbone.safetensors").unlink()
    status, _, err = run_cli(["pretrain", "--recipe", "parae_cpu", "--out", str(run), "--resume", *TINY_PARAE])
    assert status == 0, err
    assert "step-0000006 is damaged" in err and "resuming from step 4" in err
    assert "removed .step-0000008.tmp-12345" in err
    resumed, uninterrupted = load_file(str(run / "backbone.safetensors")), load_file(str(whole / "backbone.safetensors"))
    assert all(torch.equal(resumed[k], v) for k, v in uninterrupted.items())


def test_a_checkpoint_without_its_weights_does_not_count(tmp_path):
    from pretext3d.engine.checkpoint import training_checkpoints

    run = tmp_path / "run"
    assert run_cli(["pretrain", "--recipe", "parae_cpu", "--out", str(run), *TINY_PARAE, "steps=4"])[0] == 0
    (run / "checkpoints" / "step-0000004" / "model.safetensors").unlink()
    assert [p.name for p in training_checkpoints(run)] == ["step-0000002"]


# --- killed workers -------------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """Processes whose ancestry (through /proc) reaches ``pid``, or that a reaping init adopted
    but whose command line names the store (orphans keep their command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
            if ppid == pid:
                found.append(int(entry.name))
    return found + [d for child in found for d in _descendants(child)]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to follow processes")
def test_kill_9_of_prepare_with_workers_leaves_no_process(tmp_path):
    out = tmp_path / "store"
    marker = str(out)
    main = subprocess.Popen([sys.executable, "-m", "pretext3d.cli", "prepare", "builtin:train=6,test=1", "--out", marker,
                             "--workers", "2", "--views", "4", "--image-size", "64", "--quiet"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and len(_descendants(main.pid)) < 2:  # wait for the workers
        time.sleep(0.2)
    workers = _descendants(main.pid)
    assert len(workers) >= 2, "the workers never started"
    main.send_signal(signal.SIGKILL)
    main.wait()
    # a spawned worker still importing when its parent dies exits once it runs its initializer,
    # which takes longer on a loaded machine
    deadline = time.time() + 60
    alive = workers
    while time.time() < deadline and alive:
        alive = [p for p in workers if Path(f"/proc/{p}").exists() and "zombie" not in
                 Path(f"/proc/{p}/status").read_text(errors="replace").lower()]
        time.sleep(0.2)
    assert alive == [], f"left running after kill -9: {alive}"
    status, text, err = run_cli(["prepare", "builtin:train=6,test=1", "--out", marker, "--views", "4",
                                 "--image-size", "64", "--quiet"])
    assert status == 0 and "0 failed" in text, err  # the re-run finishes what the killed one started


def test_a_run_started_before_a_recipe_key_existed_still_resumes(tmp_path):
    import shutil

    run = tmp_path / "run"
    assert run_cli(["pretrain", "--recipe", "parae_cpu", "--out", str(run), *TINY_PARAE])[0] == 0
    recipe = json.loads((run / "recipe.json").read_text())
    del recipe["paper_setting"]  # as written by an earlier version
    (run / "recipe.json").write_text(json.dumps(recipe))
    shutil.rmtree(run / "checkpoints" / "step-0000006")
    (run / "backbone.safetensors").unlink()
    status, _, err = run_cli(["pretrain", "--recipe", "parae_cpu", "--out", str(run), "--resume", *TINY_PARAE])
    assert status == 0 and "resuming from step 4" in err, err
