"""``repflow bench gpu``: the speed of training and sampling in one command that fits a short GPU window.

Rows, in order of importance (a time budget skips the rest, saying so): SiT-XL/2 + REG at 256 px on cached
latents and features (eager at 256, the official REG step beside it with ``--official``; compiled and eager
at the largest batch that fits; 256 with activation checkpointing), its sampling (Heun 50 and Euler-Maruyama
50, guidance batched over the whole path, and the official sampler), then JiT-B/16 at 256 px and DiT^DH-XL on
RAE latents (eager and compiled at the largest batch, 256 with checkpointing). One table is printed and the
rows are written to ``gpu_bench.csv`` and ``gpu_bench.json`` in ``--out``.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import functools
import json
import platform
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..build import build_method
from ..models.flops import forward_flops
from .cases import TINY_SIT, Case, cases, with_train
from .common import bench_config, bench_env, peak_matmul_flops
from .stages import STAGES
from .step import Row, largest_batch, measure_step, release
from .throughput import measure_sampling, train_flops

PARTS = ("sit", "sample", "jit", "dit_dh")


@dataclass(frozen=True)
class GpuBenchSpec:
    out: Path
    tiny: bool = False
    device: str = "auto"
    precision: str = "auto"
    parts: tuple[str, ...] = PARTS
    official: str = ""  # a checkout of github.com/Martinser/REG
    repeats: int = 5
    warmup: int = 2
    batch: int = 256  # the fixed batch (eager, checkpointed, official); the largest batch is searched
    max_batch: int = 1024
    sample_batch: int = 256
    sample_steps: int = 50
    cfg: float = 1.5
    budget_s: float = 420.0


class Suite:
    def __init__(self, spec: GpuBenchSpec):
        self.spec = spec
        self.official = None
        if spec.official:  # first: a wrong folder is refused before any measurement
            from .official_reg import OfficialREG

            self.official = OfficialREG(spec.official)
        name = spec.device if spec.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(name)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        from ..runtime.precision import use_bf16

        self.bf16 = use_bf16(self.device, spec.precision)
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        self.peak = peak_matmul_flops(self.device, dtype, n=512 if spec.tiny else 0)
        self.deadline = time.perf_counter() + spec.budget_s
        self.rows: list[Row] = []

    # -- helpers -------------------------------------------------------------------------------------------
    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(format_row(row), flush=True)
        return row

    def attempt(self, case: str, what: str, batch: int, measure: Callable[[], Row]) -> Row:
        """One row; a row that fails (out of memory, an error in the official code) says so in its note and the
        command goes on: a short GPU window is not spent twice."""
        try:
            return self.add(measure())
        except Exception as err:  # noqa: BLE001 (reported in the row and on stderr)
            traceback.print_exc()
            release(self.device)
            kind = "out of memory" if isinstance(err, torch.cuda.OutOfMemoryError) else type(err).__name__
            return self.add(Row(case, what, batch, note=f"failed: {kind}: {str(err).splitlines()[0][:150]}"))

    def due(self, case: str, what: str, batch: int = 0, needs_s: float = 0.0) -> bool:
        """Whether ``needs_s`` seconds are left of the budget; else the row is written as skipped."""
        if time.perf_counter() + needs_s < self.deadline:
            return True
        self.add(Row(case, what, batch, note=f"skipped: past the {self.spec.budget_s:.0f} s budget"))
        return False

    def config(self, case: Case, batch: int, *extra: str):
        return case.build(batch, [f"train.precision={self.spec.precision}", *extra])

    def train(self, case: Case, what: str, cfg, note: str = "") -> Row:
        # a compiled row spends a minute or two compiling an XL model before its first step
        needs = 120.0 if cfg.train.compile and self.device.type == "cuda" else 0.0
        if not self.due(case.name, what, cfg.train.batch_size, needs):
            return self.rows[-1]
        if cfg.train.compile and self.device.type == "cpu" and self.spec.tiny:
            note = "skipped: --tiny on a CPU (inductor takes minutes here; tests/bench checks the compiled step)"
            return self.add(Row(case.name, what, cfg.train.batch_size, note=note))
        s = self.spec

        def measure() -> Row:
            row = measure_step(case.name, what, cfg, self.device, self.peak, s.repeats, s.warmup)
            row.note = f"{row.note}; {note}" if note else row.note
            return row

        return self.attempt(case.name, what, cfg.train.batch_size, measure)

    # -- parts ---------------------------------------------------------------------------------------------
    def family(self, key: str, with_fixed: bool) -> None:
        """Eager at the fixed batch (SiT: beside the official step), eager and compiled at the largest batch,
        the fixed batch with activation checkpointing."""
        s, case = self.spec, cases(self.spec.tiny)[key]
        fixed = self.config(case, s.batch)
        if with_fixed:
            self.train(case, "train", fixed)
            if self.official is not None and self.due(case.name, "official train", s.batch):
                from .official_reg import measure_official_step

                with torch.device("meta"):
                    flops = train_flops(fixed, build_method(fixed, bench_env(fixed)).model, s.batch)
                self.attempt(case.name, "official train", s.batch, lambda: measure_official_step(
                    self.official, fixed, self.device, self.peak, s.repeats, flops, s.warmup))  # fmt: skip
        if self.due(case.name, "largest batch"):
            try:
                batch, how = largest_batch(fixed, self.device, s.max_batch)
            except torch.cuda.OutOfMemoryError:
                batch, how = s.batch, "the probe ran out of memory: the fixed batch"
                release(self.device)
            biggest = with_train(fixed, batch_size=batch)
            if not (with_fixed and batch == s.batch):  # else measured above
                self.train(case, "train", biggest, f"largest batch: {how}")
            self.train(case, "train+compile", with_train(biggest, compile=True), f"largest batch: {how}")
        self.train(case, "train+ckpt", with_train(fixed, grad_checkpointing=True))

    def sampling(self) -> None:
        s, case = self.spec, cases(self.spec.tiny)["sit"]
        for sampler, label in (("heun", "heun"), ("sde", "sde")):
            what = f"sample {label}{s.sample_steps} cfg"
            if not self.due(case.name, what, s.sample_batch):
                continue
            opts = [f"sample.batch_size={s.sample_batch}", f"sample.sampler={sampler}", "sample.cfg_interval=[0,1]",
                    f"sample.steps={s.sample_steps}", f"sample.cfg={s.cfg}"]  # guided at every step  # fmt: skip
            cfg = self.config(case, s.batch, *opts)

            def measure(cfg=cfg, what=what) -> Row:
                release(self.device)
                m = measure_sampling(cfg, "reg", self.device, self.peak, repeats=1)
                release(self.device)
                return Row(case.name, what, m.batch, m.images_per_s, m.step_ms, m.tflops, m.mfu, m.peak_mem_gib,
                           note="guided: one call of twice the batch per evaluation")  # fmt: skip

            self.attempt(case.name, what, s.sample_batch, measure)
            if sampler == "sde" and self.official is not None and self.due(case.name, "official sde"):
                from .official_reg import measure_official_sde

                with torch.device("meta"):
                    per_call = forward_flops(_network(cfg), 1)
                run = functools.partial(measure_official_sde, self.official, cfg, self.device, self.peak,
                                        s.sample_steps, s.cfg, per_call)  # fmt: skip
                self.attempt(case.name, "official sde", s.sample_batch, run)
        self.one_step()

    def one_step(self) -> None:
        """MeanFlow's one-step path at the same size (its guidance is trained in: one unguided call)."""
        s, what = self.spec, "sample mean1 (MeanFlow)"
        arch, extra = ("SiT-T/2", list(TINY_SIT[:3])) if s.tiny else ("SiT-XL/2", [])
        if not self.due(f"{arch} MeanFlow", what, s.sample_batch):
            return
        opts = [*extra, f"train.precision={s.precision}", f"sample.batch_size={s.sample_batch}", "sample.sampler=mean",
                "sample.steps=1", "sample.cfg=1.0"]  # fmt: skip

        def measure() -> Row:
            release(self.device)
            m = measure_sampling(bench_config(arch, "meanflow", s.batch, opts), "meanflow", self.device, self.peak)
            release(self.device)
            return Row(f"{arch} MeanFlow", what, m.batch, m.images_per_s, m.step_ms, m.tflops, m.mfu, m.peak_mem_gib,
                       note="one network call per image")  # fmt: skip

        self.attempt(f"{arch} MeanFlow", what, s.sample_batch, measure)

    def run(self) -> list[Row]:
        for part in self.spec.parts:
            if part == "sample":
                self.sampling()
            else:
                self.family(part, with_fixed=part == "sit")
        return self.rows

    def title(self) -> str:
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else platform.processor() or "CPU"
        kind = "bf16" if self.bf16 else "fp32"
        return (f"repflow bench gpu{' --tiny' if self.spec.tiny else ''} on {self.device.type} ({gpu}), torch "
                f"{torch.__version__}, {kind}; MFU of the measured {kind} matmul peak "
                f"{self.peak / 1e12:.4g} TFLOP/s; commit {commit()}; {today()}")  # fmt: skip


def _network(cfg):
    from ..build import method_class

    return method_class(cfg).inference_networks(cfg)["model"]


def commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def today() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _f(value: float, fmt: str, width: int) -> str:
    return f"{value:{width}{fmt}}" if value == value else f"{'-':>{width}s}"  # NaN: not measured


HEAD = (f"{'case':13s} {'what':18s} {'batch':>5s} {'img/s':>8s} {'ms/it':>8s} {'TFLOP/s':>8s} {'MFU':>6s} "
        f"{'mem GiB':>7s} " + " ".join(f"{s[:5]:>6s}" for s in STAGES) + f" {'syncs':>5s}  note")  # fmt: skip


def format_row(r: Row) -> str:
    split = " ".join(_f(r.split_ms.get(s, float("nan")), ".1f", 6) for s in STAGES)
    syncs = f"{r.host_syncs:5d}" if r.host_syncs >= 0 else f"{'-':>5s}"
    return (f"{r.case:13s} {r.what:18s} {r.batch:5d} {_f(r.images_per_s, '.1f', 8)} {_f(r.ms_per_iter, '.1f', 8)} "
            f"{_f(r.tflops, '.2f', 8)} {_f(r.mfu, '.1%', 6)} {_f(r.peak_mem_gib, '.2f', 7)} {split} {syncs}  "
            f"{r.note}")  # fmt: skip


def ratios(rows: list[Row]) -> list[str]:
    """repflow over the official code: each official row against repflow's row at its settings (training:
    eager at the same batch; sampling: the same sampler), and against repflow's fastest row of that kind."""
    measured = [r for r in rows if r.images_per_s == r.images_per_s]  # NaN: skipped or out of memory
    lines = []
    for off in (r for r in measured if r.what.startswith("official ")):
        training = off.what == "official train"
        mine = [r for r in measured if r.case == off.case and not r.what.startswith("official ")
                and (r.what.startswith("train") if training else r.what.startswith("sample sde"))]  # fmt: skip
        same = [r for r in mine if (r.what == "train" and r.batch == off.batch) or not training]
        if same:
            best = max(mine, key=lambda r: r.images_per_s)
            lines.append(f"{off.case} {off.what}: repflow / official = {same[0].images_per_s / off.images_per_s:.2f}x "
                         f"({same[0].what}, batch {same[0].batch}); fastest repflow row ({best.what}, batch "
                         f"{best.batch}) {best.images_per_s / off.images_per_s:.2f}x")  # fmt: skip
    return lines


def write(rows: list[Row], title: str, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    flat = []
    for r in rows:
        d = {k: v for k, v in dataclasses.asdict(r).items() if k != "split_ms"}
        d.update({f"{s}_ms": r.split_ms.get(s, float("nan")) for s in STAGES})
        flat.append(d)
    csv_path, json_path = out / "gpu_bench.csv", out / "gpu_bench.json"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(flat[0]) if flat else ["case"])
        w.writeheader()
        w.writerows(flat)
    clean = [{k: (None if isinstance(v, float) and v != v else v) for k, v in d.items()} for d in flat]
    json_path.write_text(json.dumps({"title": title, "ratios": ratios(rows), "rows": clean}, indent=2))
    return csv_path, json_path


def run_gpu_bench(spec: GpuBenchSpec) -> tuple[list[Row], str]:
    suite = Suite(spec)
    title = suite.title()
    print(title + "\n" + HEAD, flush=True)
    rows = suite.run()
    table = "\n".join([title, HEAD, *map(format_row, rows), *ratios(rows)])
    csv_path, json_path = write(rows, title, spec.out)
    print("\n" + table + f"\n(ms per step; split in ms per step; syncs per eager step)\nwritten: {csv_path}, "
          f"{json_path}", flush=True)  # fmt: skip
    return rows, table
