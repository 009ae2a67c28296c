"""The core's contract: a method is trained by the one loop whatever its phases; resume is exact; registries
explain unknown names; generation is importable without training; the layering has no cycles."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from repflow.config import ConfigError, load_config
from repflow.data import ResumableBatchSampler
from repflow.runtime.lookup import load_checkpoint
from repflow.train.loop import Trainer

from ..conftest import tiny_config
from ..train.test_distributed import assert_close, launch
from . import toy_gan  # noqa: F401  (registers the toy method)

ROOT = Path(__file__).resolve().parents[2]
GAN = ("method.kind=toy_gan", "train.steps=4", "train.ckpt_every=2", "train.grad_clip=0.5")


def all_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {k: v.clone() for k, v in trainer.method.state_dict().items()}
    out.update({f"ema.{k}": v.clone() for k, v in trainer.ema.state_dict(0.9).items()})
    for name, opt in trainer.state.optimizers.items():
        for i, s in opt.state_dict()["state"].items():
            out.update({f"{name}.{i}.{k}": v.clone() for k, v in s.items()})
    return out


def test_two_phase_method_trains_checkpoints_and_resumes_bit_for_bit(tmp_path):
    cfg = tiny_config(*GAN)
    straight = Trainer(cfg, tmp_path / "a")
    assert [p.name for p in straight.state.phases] == ["generator", "critic"]
    critic_before = [p.clone() for p in straight.method.critic.parameters()]
    straight.fit(stop_at=1)  # step 0: the critic's phase has not started
    assert all(torch.equal(a, b) for a, b in zip(critic_before, straight.method.critic.parameters(), strict=True))
    straight.fit()
    assert not torch.equal(critic_before[0], straight.method.critic[1].weight)
    Trainer(cfg, tmp_path / "b").fit(stop_at=2)
    resumed = Trainer(cfg, tmp_path / "b")
    assert resumed.step == 2
    resumed.fit()
    a, b = all_weights(straight), all_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ckpt = load_checkpoint(tmp_path / "a")
    assert set(ckpt.weight_names()) == {"model", "critic", "target", "ema-0.9"}
    assert set(ckpt.state()["optimizer"]) == {"generator", "critic"}
    metrics = (tmp_path / "a" / "metrics.jsonl").read_text()
    assert '"lr_critic": 0.003' in metrics and '"loss_critic"' in metrics and '"grad_norm_critic"' in metrics
    assert (tmp_path / "a" / "samples" / "step-00000004.png").is_file()  # the method's own preview


def test_after_step_moves_the_ema_target_as_specified(tmp_path):
    trainer = Trainer(tiny_config(*GAN), tmp_path)
    m = trainer.cfg.method.momentum
    for _ in range(3):
        target = [t.clone() for t in trainer.method.target.parameters()]
        trainer.train_step()
        for old, new, p in zip(target, trainer.method.target.parameters(), trainer.method.model.parameters(),
                               strict=True):  # fmt: skip
            assert torch.equal(new, old * m + p * (1 - m))
            assert new.grad is None  # the target is not trained


@pytest.mark.slow
def test_two_phase_method_with_two_processes_matches_one(tmp_path):
    single = Trainer(tiny_config(*GAN), tmp_path / "single")
    single.fit()
    launch(2, "tests/methods/toy_worker.py", str(tmp_path / "ddp"), "4", *GAN[1:])
    ckpt = load_checkpoint(tmp_path / "ddp")
    assert ckpt.state()["world_size"] == 2
    for name in ("model", "critic", "target"):
        assert_close(ckpt.weights(name), getattr(single.method, name).state_dict())


def test_resume_with_another_batch_size_continues_at_the_same_image(tmp_path):
    Trainer(tiny_config("train.steps=2", "train.ckpt_every=2", "train.batch_size=8"), tmp_path).fit()
    resumed = Trainer(tiny_config("train.steps=4", "train.batch_size=4", "train.lr=2e-3"), tmp_path)
    assert resumed.state.images_seen == 16 and resumed.step == 2
    stream = ResumableBatchSampler(64, 4, seed=0)
    assert next(resumed.loader).indices.tolist() == [i for i, _ in stream.items(4, 0)]  # images 16..19
    assert "train.batch_size: 8 -> 4" in resumed.notices and "train.lr: 0.001 -> 0.002" in resumed.notices
    resumed.train_step()
    assert resumed.optimizer.param_groups[0]["lr"] == 2e-3  # the new learning rate is applied, not ignored
    assert resumed.state.images_seen == 20


@pytest.mark.parametrize("fixture", ["legacy-v0.1", "legacy-v0.2-ditdh"])
def test_runs_of_older_repflow_sample_as_before_and_resume(tmp_path, fixture):
    """Runs written by repflow 0.1 (one objective, terms in a list, a LambdaLR state) and 0.2 (a DiT^DH of SiT
    blocks, before the official backbone) keep their architecture, their samples and their training."""
    import shutil

    import numpy as np

    from repflow.flow.generate import sample_images
    from repflow.sample.load import load_run

    run = tmp_path / "legacy"
    shutil.copytree(ROOT / "tests" / "fixtures" / fixture, run)
    loaded = load_run(run)
    images, _ = sample_images(loaded.denoiser, loaded.cfg.sample, range(4))
    assert torch.equal(images, torch.from_numpy(np.load(run / "samples-0-3.npy")))
    trainer = Trainer(loaded.cfg.replace(**{"train.steps": 3}), run)
    assert trainer.step == 2 and trainer.state.images_seen == 16
    trainer.fit()
    assert trainer.step == 3
    if fixture == "legacy-v0.1":
        assert set(load_checkpoint(run).weights("objective")) == {
            f"terms.repa.projectors.0.{i}.{w}" for i in (0, 2, 4) for w in ("weight", "bias")
        }
    else:
        assert loaded.cfg.model.backbone == "sit"


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "method.kind=gan",
            "unknown method.kind 'gan'; choose from dsd, flow, manifold, meanflow, rae_decoder, repa_e, simclr",
        ),  # fmt: skip
        ("model.family=unet", "unknown model.family 'unet'; choose from ddt, dit_dh, dsd, jit, lightningdit, sit"),
        ("codec.kind=vq", "unknown codec.kind 'vq'; choose from pixel, rae, sd_vae"),
        ("dispersiv.enabled=true", "unknown config key 'dispersiv'; did you mean 'dispersive'"),
    ],
)
def test_unknown_registry_names_list_the_choices(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def _imports(path: Path, package: str) -> set[str]:
    """Top-level repflow sub-packages (or modules) a file imports, lazily or not."""
    tree = ast.parse(path.read_text())
    parts = path.relative_to(ROOT / "src").with_suffix("").parts
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = list(parts[: len(parts) - node.level])
                target = base + (node.module.split(".") if node.module else [])
                names = [target + [a.name] for a in node.names] if not node.module else [target]
            else:
                names = [node.module.split(".")] if node.module else []
            found.update(n[1] for n in names if len(n) > 1 and n[0] == package)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith(f"{package}."))
    return found


def assert_acyclic(graph: dict[str, set[str]]) -> None:
    """Depth-first search; a cycle fails naming its path."""
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*trail, node, nxt])}")
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_packages_import_each_other_without_cycles():
    src = ROOT / "src" / "repflow"
    graph: dict[str, set[str]] = {}
    for path in src.rglob("*.py"):
        rel = path.relative_to(src).parts
        unit = rel[0].removesuffix(".py")
        if unit == "__init__":
            continue
        graph.setdefault(unit, set()).update(_imports(path, "repflow") - {unit, "__version__"})
    assert graph["train"].isdisjoint({"sample"}) and graph["sample"].isdisjoint({"train"})
    assert "commands" not in set().union(*(v for k, v in graph.items() if k not in ("cli", "commands")))
    assert_acyclic(graph)


def test_modules_inside_a_package_import_each_other_without_cycles():
    """Module by module, lazy imports included (``runtime.checkpoint`` and ``runtime.exported`` once imported each
    other inside functions); edges into the top package (its ``__version__``) are left out."""
    src = ROOT / "src"
    files = {".".join(f.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): f
             for f in (src / "repflow").rglob("*.py")}  # fmt: skip
    graph: dict[str, set[str]] = {}
    for name, f in files.items():
        package = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                deps.update(m for m in [target, *(f"{target}.{a.name}" for a in node.names)] if m in files)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in files)
        graph[name] = deps - {name, "repflow"}
    assert_acyclic(graph)


def test_generation_imports_without_the_training_stack():
    code = ("import sys, repflow.sample.load, repflow.sample.sharded, repflow.flow.generate, repflow.methods; "
            "bad = sorted(m for m in sys.modules if m.startswith(('repflow.train', 'repflow.commands'))); "
            "print(bad); sys.exit(1 if bad else 0)")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_import_repflow_makes_the_vision_libraries_importable():
    code = "import repflow, torchvision, timm, transformers, diffusers.models; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]
