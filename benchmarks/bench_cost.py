#!/usr/bin/env python
"""What does SDTPS cost on top of its backbone? Time, parameters, FLOPs and memory.

For one model (default ``sdtps_clip_vit_b16`` at 256x128, M=3 modalities, random weights) in one
process it measures, on the same input (B samples = B*M images):

* the median time of a training step (forward + backward, no optimizer step) of the **full
  model**, of the **backbone alone** (on the ``B*M`` images) and of the **SDTPS head alone**
  (guide + SDTPS + BNNecks + classifiers on precomputed backbone tokens that require grad, as
  they do inside the full model); the three are timed round-robin, so a busy machine slows
  them alike;
* the inference time per sample (eval mode, no grad) of the full model and of the backbone;
* parameter counts: backbone, guide, SDTPS block (score MLP, TokenAggregation), BNNeck
  BatchNorms, classifiers, total;
* FLOPs of a training step and of a forward pass, full model vs backbone
  (``torch.utils.flop_counter.FlopCounterMode``; timm's fused attention is switched to its
  explicit matmul form while counting, because the counter has no formula for the CPU fused
  kernel);
* the peak memory of a training step with ``score_grad=False`` vs ``True``, each in a fresh
  subprocess: on CUDA ``torch.cuda.max_memory_allocated`` (after ``reset_peak_memory_stats``);
  on the CPU the peak resident set during the step minus the resident set before it (Linux:
  ``VmHWM`` after resetting it through ``/proc/self/clear_refs``; elsewhere the growth of
  ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which on Linux a child inherits from its
  parent and is therefore not used there); plus, exactly, the bytes of activations autograd
  saves for backward (``torch.autograd.graph.saved_tensors_hooks``, unique storages,
  parameters excluded).

It prints the ratios full/backbone and checks the target "the SDTPS part adds at most 3 % to
the training step and fewer than 1 M parameters", for the SDTPS block alone and for the whole
head (guide + SDTPS + BNNecks, with and without the classifiers).

    python benchmarks/bench_cost.py --batch 4 --iters 5            # CPU, ~3 min on 2 cores
    python benchmarks/bench_cost.py --device cuda --batch 32 --iters 20
    python benchmarks/bench_cost.py --smoke                        # tiny model, seconds
    python benchmarks/bench_cost.py --block --device cpu --batch 16 --threads 2 --iters 20

``--block`` times only the SDTPS block (B=16, M=3, N=128, C=512 by default, forward + backward)
in its stacked form against :class:`PerModalitySDTPS`, a plain loop over modalities with one
``nn.Linear`` per modality and the same math, interleaved, and prints the ratio of the minima.

``--out FILE`` writes the markdown report between ``<!-- bench_cost:begin -->`` and
``<!-- bench_cost:end -->`` of FILE (the rest of FILE is kept).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os.path as osp
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from _common import command_line, machine, now
from _common import write_section as _write_section
from torch import nn

from torchreid_sdtps.models import net as _net

__all__ = ["build", "param_breakdown", "time_steps", "count_flops", "saved_activation_bytes",
           "measure_memory", "run", "format_report", "main"]

BEGIN, END = "<!-- bench_cost:begin -->", "<!-- bench_cost:end -->"
MODELS = ("sdtps_clip_vit_b16", "sdtps_vit_b16", "sdtps_vit_tiny")
#: ``--smoke``: a 1-block, 48-wide ViT at 64x32 (the tests' size)
SMOKE_OVERRIDES = dict(depth=1, embed_dim=48, num_heads=3)
TIME_TARGET = 0.03  # the SDTPS part may add at most 3 % to the training step
PARAM_TARGET = 1_000_000  # ... and fewer than 1 M parameters


# ----------------------------------------------------------------------------- building
def build(args: argparse.Namespace, score_grad: bool = False) -> nn.Module:
    """The model (random weights, ``loss="triplet"``) on ``args.device``, in training mode."""
    factory = getattr(_net, args.model)
    overrides = dict(SMOKE_OVERRIDES) if args.smoke else {}
    torch.manual_seed(0)
    model = factory(args.num_classes, loss="triplet", pretrained=False,
                    img_size=(args.height, args.width), score_grad=score_grad, **overrides)
    return model.to(args.device).train()


def make_batch(args: argparse.Namespace, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images ``(B, M, 3, H, W)`` and labels with 2 images per identity (fixed seed)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, model.num_modalities, 3, args.height, args.width, generator=g)
    pids = torch.arange(args.batch) // 2 % args.num_classes
    return x.to(args.device), pids.to(args.device)


def _count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def param_breakdown(model: nn.Module) -> dict[str, int]:
    """Parameter counts of every part (``sdtps_block`` = score MLP + TokenAggregation)."""
    necks = [model.neck_sdtps, model.neck_ori]
    parts = {
        "backbone": _count(model.backbone),
        "guide": _count(model.guide),
        "sdtps_score_mlp": _count(model.sdtps.score_mlp),
        "sdtps_aggregation": _count(model.sdtps.aggregate),
        "sdtps_block": _count(model.sdtps),
        "bnneck_bn": sum(_count(n.bn) for n in necks),
        "classifiers": sum(_count(n.classifier) for n in necks),
        "total": _count(model),
    }
    parts["head_no_classifiers"] = parts["guide"] + parts["sdtps_block"] + parts["bnneck_bn"]
    parts["head_with_classifiers"] = parts["head_no_classifiers"] + parts["classifiers"]
    return parts


class _Precomputed(nn.Module):
    """Stands in for the backbone: returns fixed ``(cls, patches)`` whatever the input, so the
    model's own forward times only guide + SDTPS + heads."""

    def __init__(self, like: nn.Module, cls: torch.Tensor, patches: torch.Tensor) -> None:
        super().__init__()
        self.cls, self.patches = cls, patches
        self.out_dim, self.num_patches = like.out_dim, like.num_patches
        self.img_size = getattr(like, "img_size", None)

    def forward(self, x: torch.Tensor, cam_label: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls, self.patches


@contextlib.contextmanager
def _head_only(model: nn.Module, x: torch.Tensor) -> Iterator[None]:
    """Swap in :class:`_Precomputed` tokens (leaf tensors that require grad, as the backbone's
    outputs do inside the full model)."""
    backbone = model.backbone
    with torch.no_grad():
        cls, patches = backbone(x.flatten(0, 1))
    stub = _Precomputed(backbone, cls.requires_grad_(), patches.requires_grad_())
    model.backbone = stub
    try:
        yield
    finally:
        model.backbone = backbone


# ----------------------------------------------------------------------------- steps
def _loss_full(model: nn.Module, x: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
    logits, feats = model(x)
    return sum(F.cross_entropy(lg, pids) for lg in logits) + sum(f.pow(2).mean() for f in feats)


def _loss_backbone(model: nn.Module, x: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
    cls, patches = model.backbone(x.flatten(0, 1))
    return cls.pow(2).mean() + patches.pow(2).mean()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _train_step(model: nn.Module, loss_fn: Callable, x: torch.Tensor, pids: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    loss_fn(model, x, pids).backward()


def time_steps(model: nn.Module, x: torch.Tensor, pids: torch.Tensor, iters: int, warmup: int,
               device: str) -> dict[str, list[float]]:
    """Seconds per training step of ``full``, ``backbone`` and ``head`` (round-robin)."""
    steps: dict[str, Callable[[], None]] = {
        "full": lambda: _train_step(model, _loss_full, x, pids),
        "backbone": lambda: _train_step(model, _loss_backbone, x, pids),
    }
    times: dict[str, list[float]] = {k: [] for k in ("full", "backbone", "head")}
    for i in range(warmup + iters):
        for name, step in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
        with _head_only(model, x):
            _sync(device)
            t0 = time.perf_counter()
            _train_step(model, _loss_full, x, pids)
            _sync(device)
            if i >= warmup:
                times["head"].append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return times


@torch.no_grad()
def time_inference(model: nn.Module, x: torch.Tensor, iters: int, warmup: int,
                   device: str) -> dict[str, float]:
    """Median seconds per *sample* (B*M images / B) in eval mode: full model and backbone."""
    model.eval()
    out: dict[str, list[float]] = {"full": [], "backbone": []}
    try:
        for i in range(warmup + iters):
            for name, fn in (("full", lambda: model(x)),
                             ("backbone", lambda: model.backbone(x.flatten(0, 1)))):
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                if i >= warmup:
                    out[name].append((time.perf_counter() - t0) / x.shape[0])
    finally:
        model.train()
    return {k: statistics.median(v) for k, v in out.items()}


@contextlib.contextmanager
def _explicit_attention(model: nn.Module) -> Iterator[None]:
    """timm attention in its matmul form (FlopCounterMode cannot count the CPU fused kernel)."""
    attns = [m for m in model.modules() if hasattr(m, "fused_attn")]
    old = [m.fused_attn for m in attns]
    for m in attns:
        m.fused_attn = False
    try:
        yield
    finally:
        for m, f in zip(attns, old):
            m.fused_attn = f


def count_flops(model: nn.Module, x: torch.Tensor, pids: torch.Tensor) -> dict[str, int]:
    """FLOPs of a training step (forward + backward) and of a forward pass: full, backbone and
    head alone (FlopCounterMode counts matmuls/convolutions, 2 FLOPs per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    def flops(fn: Callable[[], Any]) -> int:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        return int(counter.get_total_flops())

    out = {}
    with _explicit_attention(model):
        out["train_full"] = flops(lambda: _train_step(model, _loss_full, x, pids))
        out["train_backbone"] = flops(lambda: _train_step(model, _loss_backbone, x, pids))
        with _head_only(model, x):
            out["train_head"] = flops(lambda: _train_step(model, _loss_full, x, pids))
        with torch.no_grad():
            out["forward_full"] = flops(lambda: model(x))
            out["forward_backbone"] = flops(lambda: model.backbone(x.flatten(0, 1)))
    model.zero_grad(set_to_none=True)
    return out


# ----------------------------------------------------------------------------- SDTPS block: stacked vs loop
class PerModalitySDTPS(nn.Module):
    """The SDTPS block written plainly, as the reference for the stacked form's speed.

    A Python loop over the ``M`` modalities with one ``nn.Linear`` / ``nn.LayerNorm`` per
    modality and per layer, computing the same math as :class:`~torchreid_sdtps.models.sdtps.SDTPS`
    with hard top-K selection (the default ``selection="topk"``). :meth:`from_stacked` copies the
    weights of a stacked block, so both give the same outputs.
    """

    def __init__(self, stacked: nn.Module) -> None:
        super().__init__()
        self.beta, self.ratio, self.num_modalities = stacked.beta, stacked.ratio, stacked.num_modalities
        m = range(stacked.num_modalities)
        mlp, aggr = stacked.score_mlp, stacked.aggregate
        self.score_fc1 = nn.ModuleList(_linear(mlp.fc1, i) for i in m)
        self.score_fc2 = nn.ModuleList(_linear(mlp.fc2, i) for i in m)
        self.aggr_norm = nn.ModuleList(_layer_norm(aggr.norm, i) for i in m)
        self.aggr_fc1 = nn.ModuleList(_linear(aggr.weight.fc1, i) for i in m)
        self.aggr_fc2 = nn.ModuleList(_linear(aggr.weight.fc2, i) for i in m)
        self.aggr_scale = nn.Parameter(aggr.scale.detach().clone().flatten())

    def forward(self, patches: torch.Tensor, guide: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``patches (B, M, N, C)``, ``guide (B, M, C)`` -> ``(tokens (B, M, N_c+1, C), score (B, M, N))``."""
        from torchreid_sdtps.models.sdtps import minmax_normalize, num_keep

        n_mod, n = patches.shape[1], patches.shape[2]
        k = num_keep(n, self.ratio)
        guide_n = F.normalize(guide, dim=-1)  # (B, M, C)
        tokens, scores = [], []
        for m in range(n_mod):
            p = patches[:, m]  # (B, N, C)
            with torch.no_grad():
                sim = minmax_normalize(F.normalize(p, dim=-1) @ guide_n.transpose(1, 2), dim=1)  # (B, N, M)
            s_self = sim[..., m]
            s_cross = sim.sum(dim=-1) - s_self
            s_pred = torch.sigmoid(self.score_fc2[m](F.gelu(self.score_fc1[m](p)))).squeeze(-1)
            score = (1 - 2 * self.beta) * s_pred + self.beta * ((2.0 / (n_mod - 1)) * s_cross + 2 * s_self)
            order = score.detach().argsort(dim=-1, descending=True)
            keep, drop = order[:, :k], order[:, k:]
            kept = p.gather(1, keep.unsqueeze(-1).expand(-1, -1, p.shape[-1]))  # D = 1 on kept tokens
            dropped = p.gather(1, drop.unsqueeze(-1).expand(-1, -1, p.shape[-1]))
            extra = (score.gather(1, drop).softmax(dim=-1).unsqueeze(1) @ dropped)  # (B, 1, C)
            h = self.aggr_fc2[m](F.gelu(self.aggr_fc1[m](self.aggr_norm[m](kept))))  # (B, K, N_c)
            w = (h.transpose(1, 2) * self.aggr_scale[m]).softmax(dim=-1)  # (B, N_c, K)
            tokens.append(torch.cat([w @ kept, extra], dim=1))
            scores.append(score)
        return torch.stack(tokens, dim=1), torch.stack(scores, dim=1)


def _linear(stacked: nn.Module, m: int) -> nn.Linear:
    """Modality ``m`` of a ``StackedLinear`` (weight ``(M, in, out)``) as an ``nn.Linear``."""
    lin = nn.Linear(stacked.in_features, stacked.out_features)
    with torch.no_grad():
        lin.weight.copy_(stacked.weight[m].t())
        lin.bias.copy_(stacked.bias[m])
    return lin


def _layer_norm(stacked: nn.Module, m: int) -> nn.LayerNorm:
    """Modality ``m`` of a ``StackedLayerNorm`` as an ``nn.LayerNorm``."""
    ln = nn.LayerNorm(stacked.dim, eps=stacked.eps)
    with torch.no_grad():
        ln.weight.copy_(stacked.weight[m])
        ln.bias.copy_(stacked.bias[m])
    return ln


def compare_block(batch: int = 16, modalities: int = 3, patches: int = 128, width: int = 512,
                  runs: int = 20, threads: int = 2, seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """Seconds of one forward + backward of the stacked SDTPS block and of :class:`PerModalitySDTPS`
    (same weights, same input), timed interleaved; ``ratio`` = min stacked / min loop of the
    wall-clock times. The process CPU time of each run is recorded too (``cpu_ratio``): on a
    shared machine it is less disturbed by other processes than the wall clock."""
    from torchreid_sdtps.models.sdtps import SDTPS, num_aggregated

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        stacked = SDTPS(width, num_aggregated(patches, 0.5, 0.5), num_modalities=modalities).train()
        loop = PerModalitySDTPS(stacked).train().to(device)
        stacked.to(device)
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, modalities, patches, width, generator=g).to(device).requires_grad_()
        guide = torch.randn(batch, modalities, width, generator=g).to(device).requires_grad_()
        steps = {"stacked": lambda: stacked(x, guide).tokens, "loop": lambda: loop(x, guide)[0]}
        times: dict[str, list[float]] = {k: [] for k in steps}
        cpu: dict[str, list[float]] = {k: [] for k in steps}
        for i in range(runs + 1):  # run 0 warms up
            for name, fn in steps.items():
                x.grad = guide.grad = None
                _sync(device)
                t0, c0 = time.perf_counter(), time.process_time()
                fn().square().mean().backward()
                _sync(device)
                if i:
                    times[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
        with torch.no_grad():
            diff = (stacked(x, guide).tokens - loop(x, guide)[0]).abs().max().item()
    finally:
        torch.set_num_threads(old_threads)
    best = {k: min(v) for k, v in times.items()}
    return {"shape": dict(B=batch, M=modalities, N=patches, C=width), "threads": threads, "runs": runs,
            "device": device, "machine": machine(device),
            "min_s": best, "median_s": {k: statistics.median(v) for k, v in times.items()},
            "ratio": best["stacked"] / best["loop"], "cpu_min_s": {k: min(v) for k, v in cpu.items()},
            "cpu_ratio": min(cpu["stacked"]) / min(cpu["loop"]), "max_abs_diff": diff}


def format_block(r: dict[str, Any], command: str) -> str:
    """Markdown lines for :func:`compare_block`."""
    s = r["shape"]
    return "\n".join([
        "### SDTPS block: stacked vs per-modality loop (`benchmarks/bench_cost.py --block`)", "",
        f"`{command}`: B={s['B']}, M={s['M']}, N={s['N']}, C={s['C']}, forward + backward, "
        f"{r['threads']} threads, {r['runs']} interleaved runs each; {r['machine']}.", "",
        "| implementation | min wall (s) | median wall (s) | min process CPU (s) |", "|---|---:|---:|---:|",
        *(f"| {k} | {r['min_s'][k]:.4f} | {r['median_s'][k]:.4f} | {r['cpu_min_s'][k]:.4f} |"
          for k in ("stacked", "loop")),
        "", f"ratio stacked / loop (min wall): **{r['ratio']:.3f}** (min CPU: {r['cpu_ratio']:.3f}); "
            f"max |difference| of the outputs {r['max_abs_diff']:.2e}",
    ])


# ----------------------------------------------------------------------------- memory
def saved_activation_bytes(model: nn.Module, x: torch.Tensor, pids: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for backward in one training step (unique storages,
    parameters excluded): the activation memory of the step, exactly."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr != 0:
            seen[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = _loss_full(model, x, pids)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def _proc_status_bytes(key: str) -> int | None:
    """``VmHWM`` / ``VmRSS`` of this process from ``/proc/self/status`` (Linux), in bytes."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _cpu_step_peak(step: Callable[[], None]) -> tuple[int, str]:
    """Peak resident memory of ``step`` above the resident memory before it, and the method.

    Linux: reset the peak mark (``/proc/self/clear_refs``), run, read ``VmHWM - VmRSS(before)``.
    Elsewhere: the growth of ``ru_maxrss``. ``ru_maxrss`` alone is unreliable in a subprocess
    on Linux: it starts at the *parent's* peak (inherited through fork/exec), so a child of a
    large parent reports no growth.
    """
    if _proc_status_bytes("VmHWM") is not None and _reset_peak_rss():
        before = _proc_status_bytes("VmRSS") or 0
        step()
        return (_proc_status_bytes("VmHWM") or 0) - before, (
            "peak RSS during one training step minus RSS before it (VmHWM after resetting it "
            "through /proc/self/clear_refs), fresh process")
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    step()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return after - before, "growth of ru_maxrss over one training step, fresh process"


def memory_child(args: argparse.Namespace) -> dict[str, Any]:
    """One fresh process, one ``score_grad`` value: peak memory of one training step."""
    model = build(args, score_grad=args.score_grad)
    x, pids = make_batch(args, model)
    out: dict[str, Any] = {"score_grad": args.score_grad}
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _train_step(model, _loss_full, x, pids)
        torch.cuda.synchronize()
        out["peak_bytes"] = torch.cuda.max_memory_allocated() - base
        out["method"] = "torch.cuda.max_memory_allocated() during the step, minus memory allocated before it"
    else:
        out["peak_bytes"], out["method"] = _cpu_step_peak(lambda: _train_step(model, _loss_full, x, pids))
    out["saved_bytes"] = saved_activation_bytes(model, x, pids)
    return out


def measure_memory(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """``score_grad`` False and True, each in a fresh subprocess of this script."""
    results = {}
    for flag in (False, True):
        cmd = [sys.executable, osp.abspath(__file__), "--memory-child", *args.child_argv]
        if flag:
            cmd.append("--score-grad")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"memory subprocess {' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        results[f"score_grad={flag}"] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


# ----------------------------------------------------------------------------- report
def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement of this script, as a dict (also what ``--json`` prints)."""
    model = build(args)
    x, pids = make_batch(args, model)
    times = time_steps(model, x, pids, args.iters, args.warmup, args.device)
    result: dict[str, Any] = {
        "model": args.model, "device": args.device, "batch": args.batch,
        "modalities": model.num_modalities, "img_size": [args.height, args.width],
        "num_classes": args.num_classes, "iters": args.iters, "warmup": args.warmup,
        "machine": machine(args.device),
        "width": int(model.backbone.out_dim), "num_patches": int(model.backbone.num_patches),
        "params": param_breakdown(model),
        "train_step_s": {k: statistics.median(v) for k, v in times.items()},
        "train_step_all_s": times,
        "infer_per_sample_s": time_inference(model, x, args.iters, args.warmup, args.device),
        "flops": count_flops(model, x, pids),
    }
    result["memory"] = measure_memory(args) if args.memory else {}
    return result


def _ratios(r: dict[str, Any]) -> dict[str, float]:
    t, p, f = r["train_step_s"], r["params"], r["flops"]
    return {
        "time_full_over_backbone": t["full"] / t["backbone"],
        "time_head_over_backbone": t["head"] / t["backbone"],
        "params_full_over_backbone": p["total"] / p["backbone"],
        "flops_train_full_over_backbone": f["train_full"] / f["train_backbone"],
        "flops_forward_full_over_backbone": f["forward_full"] / f["forward_backbone"],
        "infer_full_over_backbone": r["infer_per_sample_s"]["full"] / r["infer_per_sample_s"]["backbone"],
    }


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def targets(r: dict[str, Any]) -> list[str]:
    """The target lines, PASS/FAIL."""
    q, p = _ratios(r), r["params"]
    overhead_diff = q["time_full_over_backbone"] - 1
    overhead_head = q["time_head_over_backbone"]
    overhead_flops = q["flops_train_full_over_backbone"] - 1
    return [
        f"time (head alone / backbone step) {100 * overhead_head:.2f}% <= 3%: "
        f"{_verdict(overhead_head <= TIME_TARGET)}",
        f"time ((full - backbone) / backbone step) {100 * overhead_diff:+.2f}% <= 3%: "
        f"{_verdict(overhead_diff <= TIME_TARGET)} (a difference of two noisy medians)",
        f"FLOPs ((full - backbone) / backbone, training step) {100 * overhead_flops:.2f}% <= 3%: "
        f"{_verdict(overhead_flops <= TIME_TARGET)}",
        f"params, SDTPS block only (score MLP + TokenAggregation) {p['sdtps_block']:,} < 1M: "
        f"{_verdict(p['sdtps_block'] < PARAM_TARGET)}",
        f"params, whole head without classifiers (guide + SDTPS + BNNecks) "
        f"{p['head_no_classifiers']:,} < 1M: {_verdict(p['head_no_classifiers'] < PARAM_TARGET)}",
        f"params, whole head with both classifiers ({r['num_classes']} classes) "
        f"{p['head_with_classifiers']:,} < 1M: {_verdict(p['head_with_classifiers'] < PARAM_TARGET)}",
    ]


def format_report(r: dict[str, Any], command: str) -> str:
    """Markdown report of :func:`run`'s dict."""
    t, p, f, q = r["train_step_s"], r["params"], r["flops"], _ratios(r)
    inf = r["infer_per_sample_s"]
    m = r["modalities"]
    lines = [
        "### Cost of SDTPS (`benchmarks/bench_cost.py`)",
        "",
        f"- command: `{command}`",
        f"- machine: {r['machine']}; device `{r['device']}`",
        f"- date: {now()}",
        f"- model `{r['model']}` (random weights), input {r['batch']} samples x {m} modalities "
        f"= {r['batch'] * m} images of {r['img_size'][0]}x{r['img_size'][1]}, C={r['width']}, "
        f"N={r['num_patches']}, {r['num_classes']} classes; {r['iters']} timed iterations after "
        f"{r['warmup']} warm-up, medians",
        "",
        "| training step (forward + backward) | median time (s) | FLOPs (G) |",
        "| --- | --- | --- |",
        f"| full model | {t['full']:.4f} | {f['train_full'] / 1e9:.2f} |",
        f"| backbone alone (same {r['batch'] * m} images) | {t['backbone']:.4f} | "
        f"{f['train_backbone'] / 1e9:.2f} |",
        f"| SDTPS head alone (guide + SDTPS + heads, precomputed tokens) | {t['head']:.4f} | "
        f"{f['train_head'] / 1e9:.3f} |",
        "",
        "| ratio full / backbone | value |",
        "| --- | --- |",
        f"| training-step time | {q['time_full_over_backbone']:.4f} |",
        f"| head-alone time / backbone time | {q['time_head_over_backbone']:.4f} |",
        f"| parameters | {q['params_full_over_backbone']:.4f} |",
        f"| FLOPs, training step | {q['flops_train_full_over_backbone']:.4f} |",
        f"| FLOPs, forward | {q['flops_forward_full_over_backbone']:.4f} |",
        f"| inference time per sample ({1e3 * inf['full']:.1f} ms full, "
        f"{1e3 * inf['backbone']:.1f} ms backbone) | {q['infer_full_over_backbone']:.4f} |",
        "",
        "| parameters | count | share of total |",
        "| --- | --- | --- |",
    ]
    names = [("backbone", "backbone"), ("guide", "guide (LN 2C + Linear 2C->C, per modality)"),
             ("sdtps_score_mlp", "SDTPS score MLP (C->C/4->1)"),
             ("sdtps_aggregation", "SDTPS TokenAggregation"), ("sdtps_block", "**SDTPS block**"),
             ("bnneck_bn", "BNNeck BatchNorms (2)"), ("classifiers", "classifiers (2)"),
             ("head_no_classifiers", "**whole head** without classifiers"),
             ("head_with_classifiers", "whole head with classifiers"), ("total", "**total**")]
    for key, label in names:
        lines.append(f"| {label} | {p[key]:,} | {100 * p[key] / p['total']:.2f}% |")
    if r["memory"]:
        lines += ["", "| peak memory of a training step | score_grad=False | score_grad=True |",
                  "| --- | --- | --- |"]
        a, b = r["memory"]["score_grad=False"], r["memory"]["score_grad=True"]
        lines.append(f"| {a['method']} | {a['peak_bytes'] / 2**20:.1f} MiB | "
                     f"{b['peak_bytes'] / 2**20:.1f} MiB |")
        lines.append(f"| activations saved for backward (exact) | {a['saved_bytes'] / 2**20:.2f} MiB | "
                     f"{b['saved_bytes'] / 2**20:.2f} MiB |")
    lines += ["", "Targets (the SDTPS part adds at most 3 % to the training step and fewer than "
                  "1 M parameters):", ""]
    lines += [f"- {t_}" for t_ in targets(r)]
    c = r["width"]
    lines += ["", f"Note: the guide's prescribed per-modality Linear 2C->C alone has "
                  f"{m} x (2C x C + C) = {m * (2 * c * c + c):,} parameters at C={c} (plus "
                  f"{m * 4 * c:,} in its LayerNorm), so the 1 M parameter target cannot hold for "
                  "the whole head with the guide as specified; the SDTPS block itself is well "
                  "under it."]
    return "\n".join(lines)


def write_section(path: str, body: str) -> None:
    """Replace this script's marked section of ``path`` (shared with the synthetic study)."""
    _write_section(path, body, BEGIN, END)


# ----------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4, help="samples per batch (x M images)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up iterations")
    parser.add_argument("--model", default="sdtps_clip_vit_b16", choices=MODELS)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=171, help="171 = RGBNT201's train ids")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the two memory subprocesses")
    parser.add_argument("--out", default="", help="markdown file whose bench_cost section is (re)written")
    parser.add_argument("--json", action="store_true", help="also print the raw results as JSON")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sdtps_vit_tiny (1 block, C=48) at 64x32, batch 2, 1 iteration")
    parser.add_argument("--block", action="store_true",
                        help="time only the SDTPS block, stacked vs a per-modality loop (--batch, "
                             "--iters runs, --threads; --modalities, --patches, --dim)")
    parser.add_argument("--modalities", type=int, default=3, help="--block: M")
    parser.add_argument("--patches", type=int, default=128, help="--block: N")
    parser.add_argument("--dim", type=int, default=512, help="--block: C")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--score-grad", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.height, args.width = "sdtps_vit_tiny", 64, 32
        args.batch, args.iters, args.warmup, args.num_classes = 2, 1, 0, 5
    if args.block and (args.smoke or args.out):
        parser.error("--block prints its own table; it does not combine with --smoke or --out")
    if args.batch < 2 or args.iters < 1 or args.warmup < 0:
        parser.error("need --batch >= 2 (BatchNorm in training), --iters >= 1, --warmup >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    # what a memory subprocess needs to rebuild the same model and batch
    args.child_argv = ["--device", args.device, "--batch", str(args.batch), "--model", args.model,
                       "--height", str(args.height), "--width", str(args.width),
                       "--num-classes", str(args.num_classes), "--threads", str(args.threads)]
    if args.smoke:
        args.child_argv.append("--smoke")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure, print the report (and the target lines), optionally write ``--out``."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        out = memory_child(args)
        print(json.dumps(out))
        return out
    command = command_line("bench_cost.py", argv)
    if args.block:
        block = compare_block(args.batch, args.modalities, args.patches, args.dim, args.iters,
                              args.threads or torch.get_num_threads(), device=args.device)
        print(format_block(block, command))
        if args.json:
            print(json.dumps(block, indent=2))
        return block
    result = run(args)
    text = format_report(result, command)
    result["report"] = text
    result["ratios"] = _ratios(result)
    print(text)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "report"}, indent=2))
    if args.out:
        write_section(args.out, text)
        print(f"\nwritten: {args.out}")
    return result


if __name__ == "__main__":
    main()
