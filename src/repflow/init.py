"""``repflow init FOLDER``: a commented starting config for one's own images, chosen from the folder and machine.

It reads the folder (classes, image count, sizes, whether the images are greyscale) and chooses what a new
user gets wrong first (issue 22): the channels, a resolution the images have, a patch size whose tokens hold
at most ~48 values in pixel space (a v-predicting SiT gives noise above that: README, "JiT"), an encoder
input size giving as many tokens as the model has, and a batch size and step count that fit a time budget on
this machine, measured with timed training steps of the chosen model. Each choice is a YAML line with its reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .folder_survey import Survey, survey

RESOLUTIONS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
MAX_TOKEN_VALUES = 48  # values per pixel-space token for the v-predicting families (SiT, REPA, REG, DSD)
JIT_TOKEN_VALUES = 768  # JiT predicts x: large patches work (its 16 x 16 x 3), through a narrow bottleneck
CPU_TOKENS, GPU_TOKENS = 64, 256  # at most 8 x 8 tokens on a CPU (a step near a second), 16 x 16 on a GPU
# JiT's tiny CPU recipe (a 32-wide bottleneck) takes tokens of up to 256 values (its demo: 16 x 16 x 1) on a 4 x 4
# grid: on the README's shapes folder 32 px / patch 8 drew circles, squares and (weak) triangles in 15 CPU minutes
# where 48 px / patch 12 (432 values) lost the triangles, at the same 16 tokens and step time
JIT_CPU_TOKEN_VALUES, JIT_CPU_TOKENS = 256, 16
# batches of 64 at lr 2e-3: 1.5x the step of 32; in the same 15 min the triangles came out larger (README: shapes)
JIT_CPU_BATCH, JIT_CPU_LR = 64, 2e-3
AUTO = {"cpu": "jit", "cuda": "reg"}  # --method auto: x-prediction shows shapes within a CPU quarter hour (README)
# the recipe each method starts from: a demo preset (small, tested on CPU), and its patch rule
RECIPES = {
    "sit": ("demo-fashion-sit", MAX_TOKEN_VALUES),
    "repa": ("demo-fashion-repa", MAX_TOKEN_VALUES),
    "reg": ("demo-fashion-reg", MAX_TOKEN_VALUES),
    "jit": ("demo-fashion-jit", JIT_TOKEN_VALUES),
    "dsd": ("demo-fashion-dsd", MAX_TOKEN_VALUES),
    "rae": ("demo-fashion-rae-ditdh", 0),  # and stage 1, RAE_DECODER: two configs (the RAE section below)
}


def choose_patch(resolution: int, channels: int, max_values: int, min_tokens: int = 16) -> int:
    """The largest patch dividing the resolution whose token holds at most ``max_values`` pixel values and that
    leaves at least ``min_tokens`` tokens."""
    fits = [p for p in range(1, resolution + 1) if resolution % p == 0 and p * p * channels <= max_values
            and (resolution // p) ** 2 >= min_tokens]  # fmt: skip
    return fits[-1] if fits else 1


def choose_size(side: int, channels: int, max_values: int, max_tokens: int) -> tuple[int, int]:
    """(resolution, patch): the largest usual training size the images have (no upsampling) whose patches obey
    the token rule with at most ``max_tokens`` tokens (compute grows with their number, attention with its
    square)."""
    for resolution in sorted((r for r in RESOLUTIONS if r <= side), reverse=True):
        patch = choose_patch(resolution, channels, max_values)
        if (resolution // patch) ** 2 <= max_tokens:
            return resolution, patch
    return RESOLUTIONS[0], choose_patch(RESOLUTIONS[0], channels, max_values)


@dataclass(frozen=True)
class Plan:
    method: str
    preset: str
    resolution: int
    patch: int
    encoder_resolution: int  # 0: the method has no encoder
    batch: int
    steps: int
    seconds_per_step: float
    cpus: int
    device: str
    minutes: float
    decoder_steps: int = 0  # RAE's stage 1 (its patch: ``patch``, the decoder's)
    decoder_seconds: float = 0.0
    lr: float = 0.0  # 0: the recipe's


def plan(s: Survey, method: str, minutes: float, device: str = "") -> Plan:
    import torch

    from .runtime.cpus import cpus_per_process

    if method not in RECIPES:
        raise ValueError(f"repflow init --method must be one of {', '.join(RECIPES)}, got {method!r}")
    preset, max_values = RECIPES[method]
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cpu = device == "cpu"
    jit_cpu = cpu and method == "jit"
    cap = token_cap(method, device)
    max_values = JIT_CPU_TOKEN_VALUES if jit_cpu else max_values
    if method == "rae":
        resolution, patch = choose_latent_size(s.side, cap)
    else:
        resolution, patch = choose_size(s.side, s.channels, max_values, cap)
    encoder = resolution // patch * 4 if method in ("repa", "reg") else 0  # the tiny encoder: patch 4, as many tokens
    batch = (JIT_CPU_BATCH if jit_cpu else 32) if cpu else 256
    draft = Plan(method, preset, resolution, patch, encoder, batch, 0, 0.0, cpus_per_process(), device, minutes,
                 lr=JIT_CPU_LR if jit_cpu else 0.0)  # fmt: skip
    if method == "rae":  # two stages share the time
        minutes /= 2
        seconds = time_step(s, draft, stage="decoder")
        draft = Plan(**{**draft.__dict__, "decoder_seconds": seconds, "decoder_steps": _steps(minutes, seconds)})
    seconds = time_step(s, draft)
    return Plan(**{**draft.__dict__, "steps": _steps(minutes, seconds), "seconds_per_step": seconds})


def token_cap(method: str, device: str) -> int:
    if device != "cpu":
        return GPU_TOKENS
    return JIT_CPU_TOKENS if method == "jit" else CPU_TOKENS


LOOP_SHARE = 0.85  # of the time left to the steps: logging, checkpoints and the closing samples take the rest


def _steps(minutes: float, seconds: float) -> int:
    return max(100, int(minutes * 60 * LOOP_SHARE / seconds) // 100 * 100)


def overrides(s: Survey, p: Plan, stage: str = "") -> list[str]:
    """The plan as dotted overrides of its preset (what the YAML sets; RAE's ``stage`` "decoder": stage 1)."""
    if p.method == "rae":
        return rae_overrides(s, p, stage)
    items = ["data.dataset=image_folder", f"data.root={s.root}", f"data.resolution={p.resolution}",
             f"data.channels={s.channels}", f"model.patch_size={p.patch}", f"train.batch_size={p.batch}",
             f"train.steps={p.steps}", f"model.num_classes={len(s.classes)}", *unguided(s)]  # fmt: skip
    if p.lr:
        items.append(f"train.lr={p.lr}")
    items.append(f"model.arch={arch_name(p.method, p.patch)}")
    if p.encoder_resolution:
        items.append(f"encoders.0.resolution={p.encoder_resolution}")
    return items


def unguided(s: Survey) -> list[str]:
    """A flat folder (no classes) samples without classifier-free guidance (the recipes guide with classes)."""
    return [] if s.classes else ["sample.cfg=1"]


def unguided_lines(s: Survey) -> list[str]:
    return (
        ["sample:", "  cfg: 1  # no class folders: no classifier-free guidance (needs labels)"] if unguided(s) else []
    )


def arch_name(method: str, patch: int) -> str:
    """The family's tiny size with the nearest patch it has (model.patch_size decides: patch 12 -> JiT-T/8)."""
    from .models.dsd_net import DSD_ARCHS
    from .models.jit import JIT_ARCHS
    from .models.presets import ARCHS

    prefix, table = {"dsd": ("DSD", DSD_ARCHS), "jit": ("JiT", JIT_ARCHS)}.get(method, ("SiT", ARCHS))
    tiny = [k for k in table if k.startswith(f"{prefix}-T/")]
    return min(tiny, key=lambda k: (abs(int(k.rsplit("/", 1)[1]) - patch), int(k.rsplit("/", 1)[1])))


def time_step(s: Survey, p: Plan, repeats: int = 5, stage: str = "", min_seconds: float = 2.0) -> float:
    """Seconds of a training step of the planned config here: the real loop on the folder's images in a scratch
    run (after a warm-up step, the median of ``repeats`` steps or more, up to 50, until ``min_seconds`` passed: 2
    planned 0.24 s for a 0.19 s run, 5 quick ones 0.16 s for 0.126 s; a small folder is decoded first, as kept
    after a run's first epoch). RAE's decoder (``stage`` "decoder") runs its discriminator and GAN, as at the end."""
    import contextlib
    import io
    import tempfile

    from .config import load_config
    from .train.loop import Trainer

    quiet = ["train.sample_num=0"]  # the folder's own images: reading and resizing them is part of a step
    if stage == "decoder":
        quiet += ["method.disc_start=0", "method.gan_start=0"]
    cfg = load_config(RAE_DECODER if stage == "decoder" else p.preset, [*overrides(s, p, stage), *quiet])
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        trainer = Trainer(cfg, Path(tmp) / "timing", resume=False)
        if hasattr(trainer.dataset, "keep_all"):  # a small folder is decoded once, then kept: time those steps
            trainer.dataset.keep_all()
        times: list[float] = []
        while len(times) <= repeats or (sum(times[1:]) < min_seconds and len(times) <= 50):
            start = time.perf_counter()
            float(trainer.train_step()["loss"])  # waits for the step (a GPU runs ahead otherwise)
            times.append(time.perf_counter() - start)
        trainer._release()
    return sorted(times[1:])[len(times[1:]) // 2]


def render(s: Survey, p: Plan, command: str, path: Path) -> str | tuple[str, str]:
    """The commented YAML: the preset it builds on, then each chosen value with its reason."""
    what = {"sit": "SiT", "repa": "SiT + REPA", "reg": "SiT + REG (+ REPA)", "jit": "JiT (x-prediction)",
            "dsd": "DSD", "rae": "RAE"}[p.method]  # fmt: skip
    shown = ", ".join(s.classes[:8]) + (" ..." if len(s.classes) > 8 else "")
    classes = f"{len(s.classes)} classes ({shown})" if s.classes else "no class folders (unconditional)"
    sizes = ", ".join(f"{w}x{h}" for w, h in s.sizes)
    colour = "greyscale" if s.channels == 1 else "colour"
    tokens = (p.resolution // p.patch) ** 2
    values = p.patch * p.patch * s.channels
    rule = ("JiT predicts x, so large patches work" if p.method == "jit" else
            f"a v-predicting model gives noise above ~{MAX_TOKEN_VALUES} values a token: README, JiT")  # fmt: skip
    cap = token_cap(p.method, p.device)
    header = [
        f"# written by `{command}`: {s.count} images, {classes}, {colour}, most common sizes {sizes}",
        "# Every value below was chosen for this folder and machine; edit any of them.",
    ]
    if p.method == "rae":
        return render_rae(s, p, header, cap, path)
    lines = [
        *header,
        "# `repflow train THIS.yaml --dry-run` prints the whole resolved config; `repflow train THIS.yaml --out",
        "# runs/NAME` trains (rerun to resume), then `repflow sample runs/NAME` and `repflow eval runs/NAME --ref",
        f"# image_folder --data-root {s.root}` (the images prepared at the run's size, as training saw them).",
        f"inherit: {p.preset}  # the recipe: {what} (its model, optimiser and sampling settings)",
        f"name: {s.root.name}",
        "data:",
        "  dataset: image_folder",
        f"  root: {s.root}",
        f"  resolution: {p.resolution}  # the images' median short side is {s.side} px; the largest usual size <= it "
        f"with at most {cap} tokens on this {p.device.upper()}",
        f"  channels: {s.channels}  # {colour} images" + ("" if s.channels == 3 else " (kept as one channel)"),
        "  workers: auto  # loader processes, chosen for the CPUs this process may use (shown at start-up)",
        "model:",
        f"  arch: {arch_name(p.method, p.patch)}",
        f"  patch_size: {p.patch}  # {p.patch}x{p.patch}x{s.channels} = {values} values a token ({rule}); "
        f"{tokens} tokens",
        f"  num_classes: {len(s.classes)}  # the class folders, in sorted order"
        + ("" if s.classes else " (0: unconditional)"),
    ]
    if p.encoder_resolution:
        grid = p.encoder_resolution // 4
        lines += [
            "encoders:",
            "  - name: tiny  # repflow's packaged offline encoder (SimCLR on Fashion-MNIST); for real photos use",
            "    # dinov2-vitb14 with path: /weights/dinov2_vitb14.pth (README, REPA and REG)",
            f"    resolution: {p.encoder_resolution}  # {grid}x{grid} tokens of its 4-pixel patches, as many as the "
            "model's",
        ]
    lines += unguided_lines(s) + train_lines(p.batch, p.steps, p.seconds_per_step, p.minutes, p.cpus)
    if p.lr:
        lines.insert(-1, f"  lr: {p.lr:g}  # for batches of {p.batch}, not the recipe's (README: shapes)")
    return "\n".join(lines)


def train_lines(batch: int, steps: int, seconds: float, minutes: float, cpus: int) -> list[str]:
    return [
        "train:",
        f"  batch_size: {batch}",
        f"  steps: {steps}  # ~{minutes:g} min: one step of this config took {seconds:.2f} s here "
        f"({cpus} CPUs available to this process, measured by repflow init on these images; "
        f"{LOOP_SHARE:.0%} of the time, the rest for logs, checkpoints and the closing samples)",
        "  threads: auto  # compute threads: OMP_NUM_THREADS if set, else the CPUs left after the loader workers",
        f"  ckpt_every: {max(100, steps // 4 // 100 * 100)}  # rerunning the same command resumes from the newest",
        f"  log_every: {max(10, steps // 40 // 10 * 10)}",
        "",
    ]


# -- RAE: two stages, two configs -----------------------------------------------------------------------------
# ``repflow init FOLDER --method rae``: RAE's two stages as two configs (``init`` does the survey, timing and
# writing). Stage 1 trains a decoder from a frozen encoder's patch tokens back to pixels; ``repflow rae stats``
# measures the latent's statistics; stage 2 trains DiT^DH in that latent. Both configs read the same images at
# the same size: one latent token per ``codec.decoder_patch`` pixels, whose count is what the token cap bounds
# (the pixel-space token rule does not apply: a token is the encoder's 128 values whatever its pixels).
RAE_DECODER = "demo-fashion-rae-decoder"
ENCODER_PATCH = 4  # the packaged tiny encoder's patch: it sees the latent grid x 4 pixels


def choose_latent_size(side: int, max_tokens: int, min_tokens: int = 16) -> tuple[int, int]:
    """(resolution, decoder patch): the largest usual size the images have (no upsampling) with a latent grid
    of ``min_tokens``..``max_tokens`` tokens, at the smallest such patch (the most tokens: RAE's 16 x 16 at 256 px
    on a GPU)."""
    for resolution in sorted((r for r in RESOLUTIONS if r <= side), reverse=True):
        fits = [p for p in range(1, resolution + 1) if resolution % p == 0
                and min_tokens <= (resolution // p) ** 2 <= max_tokens]  # fmt: skip
        if fits:
            return resolution, fits[0]
    return RESOLUTIONS[0], RESOLUTIONS[0] // 4


def rae_files(path: Path) -> tuple[Path, Path, str, str]:
    """(stage-2 YAML, stage-1 YAML, the decoder's run, the statistics file) for the config path ``path``."""
    decoder = path.with_name(f"{path.stem}-decoder.yaml")
    return path, decoder, f"runs/{decoder.stem}", f"{path.stem}-stats.safetensors"


def gan_starts(steps: int) -> tuple[int, int]:
    """(discriminator start, GAN-term start): the demo's proportions, 600 and 800 of 1200 steps (RAE: epochs 6
    and 8 of 16)."""
    return steps // 2, steps * 2 // 3


def rae_overrides(s: Survey, p: Plan, stage: str) -> list[str]:
    """The plan as dotted overrides of the stage's preset (``decoder``: stage 1; else stage 2)."""
    items = ["data.dataset=image_folder", f"data.root={s.root}", f"data.resolution={p.resolution}",
             "data.channels=3", f"codec.decoder_patch={p.patch}", f"train.batch_size={p.batch}"]  # fmt: skip
    if stage == "decoder":
        disc, gan = gan_starts(p.decoder_steps)
        return [*items, f"train.steps={p.decoder_steps}", f"method.disc_start={disc}", f"method.gan_start={gan}"]
    return [*items, f"train.steps={p.steps}", f"model.num_classes={len(s.classes)}", *unguided(s)]


def render_rae(s: Survey, p: Plan, header: list[str], cap: int, path: Path) -> tuple[str, str]:
    """(stage-2 YAML, stage-1 YAML), commented."""
    _, decoder_yaml, decoder_run, stats = rae_files(path)
    grid = p.resolution // p.patch
    data = [
        "data:",
        "  dataset: image_folder",
        f"  root: {s.root}",
        f"  resolution: {p.resolution}  # the images' median short side is {s.side} px; the largest usual size <= it "
        f"whose latent has at most {cap} tokens on this {p.device.upper()}",
        "  channels: 3  # the frozen encoder reads RGB"
        + (" (greyscale images are replicated)" if s.channels == 1 else ""),
        "  workers: auto  # loader processes, chosen for the CPUs this process may use (shown at start-up)",
        "codec:",
        f"  decoder_patch: {p.patch}  # {p.resolution}/{p.patch}: a {grid}x{grid} latent of the tiny encoder's "
        f"128-d tokens (it sees {grid * ENCODER_PATCH} px)",
    ]
    order = [f"#   1. repflow train {decoder_yaml} --out {decoder_run}     # stage 1: the decoder",
             f"#   2. repflow rae stats {path} --out {stats}     # the latent's statistics, one pass",
             f"#   3. repflow train {path} --out runs/{path.stem}     # stage 2: DiT^DH in the latent"]  # fmt: skip
    stage2 = [
        *header,
        "# RAE trains in two stages; run, in order:",
        *order,
        f"inherit: {p.preset}  # the recipe: RAE stage 2, DiT^DH with the dimension-dependent time shift",
        f"name: {s.root.name}",
        *data,
        f"  decoder: {decoder_run}  # stage 1's run (step 1)",
        f"  stats: {stats}  # written by step 2",
        "model:",
        f"  num_classes: {len(s.classes)}  # the class folders, in sorted order"
        + ("" if s.classes else " (0: unconditional)"),
        *unguided_lines(s),
        *train_lines(p.batch, p.steps, p.seconds_per_step, p.minutes / 2, p.cpus),
    ]
    disc, gan = gan_starts(p.decoder_steps)
    stage1 = [
        f"# stage 1 of RAE for {s.root} (the decoder), written with {path.name}: train it first",
        *order,
        f"inherit: {RAE_DECODER}  # the recipe: a ViT decoder, L1 + LPIPS (when its weights are set) + GAN",
        f"name: {s.root.name}-decoder",
        *data,
        "method:",
        f"  disc_start: {disc}  # the discriminator from half of training, the GAN term from two thirds (the demo's",
        f"  gan_start: {gan}  # proportions, RAE's epochs 6 and 8 of 16)",
        *train_lines(p.batch, p.decoder_steps, p.decoder_seconds, p.minutes / 2, p.cpus),
    ]
    return "\n".join(stage2), "\n".join(stage1)


def write_config(folder: str | Path, method: str = "auto", out: str | Path = "", minutes: float = 0.0,
                 device: str = "", command: str = "repflow init") -> tuple[Path, Plan]:  # fmt: skip
    """Survey ``folder``, plan for this machine and write the YAML (refusing to replace an existing file)."""
    import torch

    s = survey(folder)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    method = AUTO[device] if method == "auto" else method
    p = plan(s, method, minutes or (15.0 if device == "cpu" else 60.0), device)
    path = Path(out or f"{s.root.name}.yaml")
    paths = rae_files(path)[:2] if method == "rae" else (path,)  # RAE: stage 2's, then stage 1's
    for f in paths:
        if f.exists():
            raise FileExistsError(f"'{f}' exists; choose another --out or remove it")
    path.parent.mkdir(parents=True, exist_ok=True)
    texts = render(s, p, command, path)
    for f, text in zip(paths, (texts,) if isinstance(texts, str) else texts, strict=True):
        f.write_text(text)
    return path, p
