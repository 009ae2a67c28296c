import json

from repflow.train.logging import loss_panels, plot_loss


def test_every_loss_gets_a_panel_and_negative_ones_stay_visible(tmp_path):
    rows = [{"step": s, "loss": 0.4 - 0.1 * s, "flow_x": 0.5, "repa": -0.1 * s, "lr": 1e-3, "grad_norm": 1.0,
             "img_per_s": 9.0} for s in range(1, 6)]  # fmt: skip
    panels = loss_panels(rows)
    assert list(panels) == ["loss", "flow_x", "repa"]  # totals first; lr, grad norm, speed are not losses
    steps, values, log = panels["loss"]
    assert steps == [1, 2, 3, 4, 5] and min(values) < 0 and not log  # the negative total is drawn, linearly
    assert panels["flow_x"][2] is True  # a positive term keeps its log scale
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plot_loss(metrics, tmp_path / "loss.png").stat().st_size > 1000


def test_evaluations_join_their_step_row_and_get_a_panel(tmp_path):
    from repflow.train.logging import RunLogger

    logger = RunLogger(tmp_path, 10, 0)
    for step in (1, 2):
        logger.log(step, {"loss": 1.0 / step}, 8)
    logger.extend_row(2, {"eval/fid": 50.0})  # after the step-2 row: it joins it
    logger.extend_row(3, {"eval/fid": 40.0})  # no row for step 3 (e.g. the log was cut): a row of its own
    logger.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("loss"), r.get("eval/fid")) for r in rows] == [(1, 1.0, None), (2, 0.5, 50.0),
                                                                            (3, None, 40.0)]  # fmt: skip
    panels = loss_panels(rows)  # the last row holds no loss: the losses still get their panel
    assert list(panels) == ["loss", "eval/fid"] and panels["eval/fid"][:2] == ([2, 3], [50.0, 40.0])
    again = RunLogger(tmp_path, 10, 3)
    assert again.has_values(3, "eval/") and not again.has_values(3, "probe/")
    again.close()


def test_start_up_lines_name_the_real_patch_and_the_time_shift_and_skip_unused_data(tmp_path):
    """What the run says it is: the arch with the patch it was given (not the preset name's), DiT^DH's time
    shift, and no data line for a method that draws its own points (the manifold toy)."""
    from repflow.config import load_config
    from repflow.train.loop import Trainer

    from ..conftest import tiny_config

    cfg = tiny_config("model.arch=SiT-T/8", "model.patch_size=4", "model.hidden_size=64", "flow.time.shift=2.5")
    lines = Trainer(cfg, tmp_path / "flow").describe()
    said = "\n".join(lines)
    assert "model SiT-T/4 " in said and "time shift 2.5" in said and said.startswith("data: synthetic")
    unshifted = "\n".join(Trainer(tiny_config(), tmp_path / "plain").describe())
    assert "time shift" not in unshifted
    toy = load_config("toy-manifold", ["method.dim=8", "method.width=16", "method.depth=2"])
    toy_lines = Trainer(toy, tmp_path / "toy").describe()
    assert not any(line.startswith("data:") for line in toy_lines) and toy_lines[0].startswith("method manifold")
