"""``train.report_to``: W&B in offline mode holds the logged keys, the preview grids and the resolved config, and a
resumed run appends to the same W&B run; TensorBoard stays the default; bad settings are one line each."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import pytest

from repflow.cli import main
from repflow.eval import online
from repflow.train.loop import Trainer

from ..conftest import TINY, tiny_config
from ..eval.conftest import fake_inception_env, fake_inception_file  # noqa: F401, F811 (fixtures used here)

EVAL = ["train.eval_every=2", "train.eval.num_samples=6", "train.eval.ref_count=12"]


def wandb_records(path: Path) -> list:
    """The records of an offline W&B run file (``run-<id>.wandb``): W&B's LevelDB-style log (a 7-byte header,
    32 KiB blocks of chunks ``crc32 (4) | length (2) | kind (1) | data``), each record a ``Record`` protobuf."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind not in (1, 2, 3, 4) or pos + 7 + length > len(data):  # the unwritten (or preallocated) tail
            break
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            rec = pb.Record()
            with contextlib.suppress(DecodeError):  # a record W&B's service was still writing: the checks say
                rec.ParseFromString(buf)  # what must be there, so a lost one fails them, not the reader
                out.append(rec)
            buf = b""
    return out


def logged(path: Path) -> tuple[str, dict[int, set[str]], set[str]]:
    """(run id, step -> history keys logged at it, config keys) of one offline run file."""
    run_id, steps, config = "", {}, set()
    for rec in wandb_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run_id = rec.run.run_id
            config |= {item.key for item in rec.run.config.update}
        elif kind == "history":
            keys = {item.key or "/".join(item.nested_key) for item in rec.history.item}
            steps.setdefault(rec.history.step.num, set()).update(keys)
    return run_id, steps, config


def test_wandb_offline_logs_losses_lrs_evaluations_grids_and_config_and_a_resume_continues_the_run(
    tmp_path,
    monkeypatch,
    fake_inception_env,  # noqa: F811
):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    cfg = tiny_config(*EVAL, "train.report_to=[tensorboard,wandb]", "train.sample_every=2")
    Trainer(cfg, run, hooks=online.training_hooks(cfg)).fit(stop_at=2)
    Trainer(cfg, run, hooks=online.training_hooks(cfg)).fit()  # resumes at step 2
    files = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2  # one offline directory per process, as W&B writes them
    # W&B's service process writes the files after `wandb.finish()` returns (seen under load: a file with no
    # history yet): read them until both processes' steps are there, for at most a minute
    for _ in range(120):
        (first_id, first, config), (second_id, second, _) = logged(files[0]), logged(files[1])
        if sorted(first) == [1, 2] and sorted(second) == [3, 4]:
            break
        time.sleep(0.5)
    # the same W&B run: W&B names each process's file after the run id it used (run-<id>.wandb); the run record
    # inside may be written late by W&B's service process, so it is checked only where it is present
    run_id = (run / "wandb" / "run_id").read_text().strip()
    assert [f.name for f in files] == [f"run-{run_id}.wandb"] * 2
    assert {first_id, second_id} - {""} <= {run_id}
    assert sorted(first) == [1, 2] and sorted(second) == [3, 4]  # the resumed process appends
    assert {"train/loss", "train/lr", "train/flow_x", "train/grad_norm"} <= first[1]
    assert "eval/fid" in first[2] and "eval/fid" in second[4]
    assert any(k.startswith("samples/ema") for k in second[4])  # the preview grid (at the last step)
    assert {"model", "train", "sample", "data"} <= config  # the resolved config
    assert list((files[1].parent / "files" / "media" / "images").rglob("*.png"))
    assert list((run / "tb").glob("events.out.tfevents.*"))  # the list: TensorBoard as well


def test_without_wandb_installed_report_to_wandb_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError, as when it is absent
    code = main(
        ["train", "demo-fashion-sit", *TINY, "train.steps=1", "train.report_to=wandb", "--out", str(tmp_path / "run")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "train.report_to names wandb, which is not installed" in err and "repflow[track]" in err


@pytest.mark.parametrize(
    "value, expected",
    [("wandbx", "unknown tracker 'wandbx'; choose from tensorboard, wandb, none"), ("[none,wandb]", "none alone")],
)
def test_bad_trackers_are_one_line(value, expected, capsys):
    assert main(["train", "demo-fashion-sit", *TINY, f"train.report_to={value}", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err


def test_report_to_none_writes_metrics_jsonl_only(tmp_path):
    Trainer(tiny_config("train.steps=2", "train.report_to=none"), tmp_path).fit()
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2
    assert not (tmp_path / "tb").exists() and not (tmp_path / "wandb").exists()


def test_tensorboard_is_the_default_and_gets_the_losses_and_the_config(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config("train.steps=2")
    assert cfg.train.report_to == ("tensorboard",)
    Trainer(cfg, tmp_path).fit()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    assert {"train/loss", "train/lr"} <= set(events.Tags()["scalars"])
    (text,) = [e for e in events.Tensors("config/text_summary")]
    assert "batch_size: 8" in text.tensor_proto.string_val[0].decode()
