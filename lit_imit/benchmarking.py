"""Synthetic batches and throughput timers for ``scripts/benchmark.py`` (and tests that need a batch).

The batches follow each method's training layout (what its DataModule yields), filled with seeded random
values, so a throughput figure measures the model and the optimizer alone, and a test can build a valid
batch without recording episodes. Kept out of the module files: measuring is not part of a method.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from lit_imit.envs.ravens import geometry as geo


# ---- batches in each method's training layout ----------------------------------------------------------
def act_batch(
    batch_size: int = 8,
    cameras: Sequence[str] = ("top",),
    image_hw: tuple[int, int] = (480, 640),
    state_dim: int = 14,
    action_dim: int = 14,
    chunk_size: int = 100,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Tensor]:
    """ACT's layout: qpos (B, D), uint8 images (B, H, W, 3), raw action chunks with the tails of some rows
    padded (as the last steps of an episode are). Defaults: LeRobot's ACT shape on ALOHA (batch 8, 480x640)."""
    g = torch.Generator().manual_seed(seed)
    h, w = image_hw
    batch: dict[str, Tensor] = {
        "qpos": torch.randn(batch_size, state_dim, generator=g),
        "action": torch.randn(batch_size, chunk_size, action_dim, generator=g),
        "weight": torch.ones(batch_size),
    }
    valid = torch.randint(chunk_size // 2, chunk_size + 1, (batch_size,), generator=g)
    batch["action_is_pad"] = torch.arange(chunk_size)[None, :] >= valid[:, None]
    for cam in cameras:
        batch[f"images/{cam}"] = torch.randint(0, 256, (batch_size, h, w, 3), dtype=torch.uint8, generator=g)
    return {k: v.to(device) for k, v in batch.items()}


def diffusion_batch(
    batch_size: int = 8,
    n_obs_steps: int = 2,
    horizon: int = 16,
    cameras: Sequence[str] = ("top",),
    image_shape: tuple[int, int] = (480, 640),
    state_dim: int = 14,
    action_dim: int = 14,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Diffusion Policy's layout: To observation steps per sample, a horizon of actions in [-1, 1].

    Defaults are LeRobot's Diffusion image setting on ALOHA: batch 8, 2 observation steps of one 480x640
    camera, horizon 16, 14-D qpos and action (use ``crop_shape=[440, 560]`` on the module).
    """
    g = torch.Generator().manual_seed(seed)
    batch = {
        "qpos": torch.rand(batch_size, n_obs_steps, state_dim, generator=g) * 2 - 1,
        "action": torch.rand(batch_size, horizon, action_dim, generator=g) * 2 - 1,
        "action_is_pad": torch.zeros(batch_size, horizon, dtype=torch.bool),
        "weight": torch.ones(batch_size),
    }
    for cam in cameras:
        batch[f"images/{cam}"] = torch.randint(
            0, 256, (batch_size, n_obs_steps, *image_shape, 3), dtype=torch.uint8, generator=g
        )
    return batch


def identity_stats(state_dim: int = 14, action_dim: int = 14) -> dict[str, dict[str, Tensor]]:
    """Normalisation statistics under which synthetic qpos and actions in [-1, 1] are already normalised."""
    stats = {}
    for key, dim in (("qpos", state_dim), ("action", action_dim)):
        stats[key] = {"mean": torch.zeros(dim), "std": torch.ones(dim), "min": -torch.ones(dim), "max": torch.ones(dim)}
    return stats


def cliport_batch(batch_size: int = 1, hw: tuple[int, int] = geo.HEIGHTMAP_SHAPE, seed: int = 0,
                  device: str | torch.device = "cpu") -> dict[str, Any]:
    """CLIPort's layout: decisions of uint8 colour, heights in metres, an instruction and pick/place labels."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    return {
        "color": torch.randint(0, 256, (batch_size, h, w, 3), dtype=torch.uint8, generator=g).to(device),
        "height": (torch.rand(batch_size, h, w, generator=g) * 0.05).to(device),
        "instruction": ["put the red blocks in a green bowl"] * batch_size,
        "pick_pixel": torch.stack([torch.randint(0, h, (batch_size,), generator=g),
                                   torch.randint(0, w, (batch_size,), generator=g)], dim=1).to(device),
        "place_pixel": torch.stack([torch.randint(0, h, (batch_size,), generator=g),
                                    torch.randint(0, w, (batch_size,), generator=g)], dim=1).to(device),
        "place_theta": (torch.rand(batch_size, generator=g) * 2 * math.pi - math.pi).to(device),
        "weight": torch.ones(batch_size, device=device),
    }


# ---- timers ---------------------------------------------------------------------------------------------
def _synchronize(device_type: str) -> None:
    if device_type == "cuda":
        torch.cuda.synchronize()


def _first_optimizer(configured: Any) -> torch.optim.Optimizer:
    """The optimizer of whatever ``configure_optimizers`` returned (an optimizer or Lightning's dict)."""
    return configured["optimizer"] if isinstance(configured, Mapping) else configured


def measure_train_throughput(
    module: Any,
    batch: Mapping[str, Any],
    steps: int = 3,
    warmup: int = 1,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Samples/s of full optimizer steps (the module's training losses, backward, its optimizer) on a batch
    already in memory — what a training step costs without data loading.

    ``warmup`` steps run first, untimed (allocator, oneDNN/cuDNN kernel selection, compilation).
    ``autocast_dtype=torch.bfloat16`` measures what ``Trainer(precision="bf16-mixed")`` runs. The batch size
    is the length of ``batch["weight"]``, which every method's layout carries.
    """
    module.train()
    optimizer = _first_optimizer(module.configure_optimizers())
    device_type = next(module.parameters()).device.type

    def step() -> float:
        ctx = torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
        with ctx:
            loss = module.training_losses(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    for _ in range(warmup):
        step()
    _synchronize(device_type)
    start, start_cpu = time.perf_counter(), time.process_time()
    losses = [step() for _ in range(steps)]
    _synchronize(device_type)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return {
        "samples_per_s": steps * len(batch["weight"]) / elapsed,
        "step_s": elapsed / steps,
        # process CPU seconds per step: on a shared CPU, wall time mostly measures the neighbours
        "cpu_s_per_step": cpu / steps,
        "last_loss": losses[-1],
    }


def read_step_times(path: str | os.PathLike) -> dict[str, dict[int, float]]:
    """The stamps ``callbacks.step_timer.StepTimer`` wrote: ``{"steps": {step: perf_counter s}, "unix": {...}}``.

    A missing or unreadable file, or one without the ``steps`` object, is an error naming the file: the fit it
    came from did not reach its first stamped step (its log says why) or something else wrote the file.
    """
    import json

    try:
        record = json.loads(open(path).read())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: no step times (the fit ended before its first stamped step?)") from err
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file of step times: {err}") from err
    if not isinstance(record, dict) or not isinstance(record.get("steps"), dict):
        raise ValueError(f"{path}: no 'steps' object (not written by callbacks.step_timer.StepTimer)")
    return {key: {int(step): float(t) for step, t in record.get(key, {}).items()} for key in ("steps", "unix")}


def steady_rate(stamps: Mapping[int, float], first: int, last: int, batch_size: int) -> dict[str, float]:
    """Steady-state rate between two stamped steps: ``(last - first)`` updates over the seconds between the end
    of step ``first`` and the end of step ``last``, so the start-up before ``first`` (imports, statistics,
    workers starting, kernel selection) is left out and everything a run does between them (loading, logging,
    checkpoints) is in. A missing stamp is an error naming the steps that were stamped."""
    missing = [s for s in (first, last) if s not in stamps]
    if missing:
        raise ValueError(f"steps {missing} were not stamped (stamped: {sorted(stamps)}); did the run stop early?")
    if last <= first:
        raise ValueError(f"the last timed step ({last}) must come after the first ({first})")
    seconds = stamps[last] - stamps[first]
    if seconds <= 0:
        raise ValueError(f"step {last} is stamped {seconds:.3g} s after step {first}: not a monotonic clock")
    steps_per_s = (last - first) / seconds
    return {"steps_per_s": steps_per_s, "samples_per_s": steps_per_s * batch_size, "step_s": 1 / steps_per_s,
            "timed_steps": last - first, "timed_s": seconds}


def measure_rate(call: Callable[[], Any], items: int, repeat: int = 3, device_type: str = "cpu") -> float:
    """Items/s of ``call`` (run once untimed first), e.g. CLIPort decisions/s of ``predict`` on a batch."""
    call()
    _synchronize(device_type)
    start = time.perf_counter()
    for _ in range(repeat):
        call()
    _synchronize(device_type)
    return repeat * items / (time.perf_counter() - start)


# ---- model FLOPs and the machine's peak ----------------------------------------------------------------
def count_train_flops(module: Any, batch: Mapping[str, Any], autocast_dtype: torch.dtype | None = None,
                      loss_fn: Callable[[], Tensor] | None = None) -> dict[str, float]:
    """FLOPs of one training step's forward and backward (``torch.utils.flop_counter``: matmuls, convolutions,
    attention; elementwise ops and the optimizer are not counted, as is usual for model FLOPs).

    Returns ``total`` and ``conv`` (forward + backward convolutions), so a row can say how much of the step
    the convolutions are. ``loss_fn`` replaces ``module.training_losses(batch)["loss"]`` for modules whose
    benchmark uses another loss entry point.
    """
    from torch.utils.flop_counter import FlopCounterMode

    module.train()
    device_type = next(module.parameters()).device.type
    counter = FlopCounterMode(display=False)
    ctx = torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with counter:
        with ctx:
            loss = loss_fn() if loss_fn is not None else module.training_losses(batch)["loss"]
        loss.backward()
    module.zero_grad(set_to_none=True)
    by_op = counter.get_flop_counts().get("Global", {})
    conv = sum(v for op, v in by_op.items() if "convolution" in str(op))
    return {"total": float(counter.get_total_flops()), "conv": float(conv)}


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return fields
    for line in text.split("\n\n", 1)[0].splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            fields[key.strip()] = value.strip()
    return fields


#: set to the CPU's all-core boost clock (GHz) where the machine hides it (VMs report the nominal clock)
CLOCK_ENV = "LIT_IMIT_CPU_CLOCK_GHZ"


def _max_clock_ghz(cpuinfo: Mapping[str, str]) -> float:
    """$LIT_IMIT_CPU_CLOCK_GHZ when set; else the highest clock the kernel reports (cpufreq's maximum); else
    /proc/cpuinfo's, which in a VM is the nominal clock, below the boost the cores actually run at."""
    if os.environ.get(CLOCK_ENV):
        return float(os.environ[CLOCK_ENV])
    try:
        return int(open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read()) / 1e6
    except (OSError, ValueError):
        return float(cpuinfo.get("cpu MHz", "0") or 0) / 1000


def _cores(cpuinfo: Mapping[str, str]) -> int:
    """Physical cores this process may run on: its CPUs divided by the threads per core (SMT siblings share
    one core's vector units)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    siblings, cores = int(cpuinfo.get("siblings", 0) or 0), int(cpuinfo.get("cpu cores", 0) or 0)
    threads_per_core = siblings // cores if siblings and cores and siblings >= cores else 1
    return max(1, cpus // max(1, threads_per_core))


def cpu_peak_flops(precision: str = "32", cpuinfo: Mapping[str, str] | None = None,
                   cores: int | None = None, clock_ghz: float | None = None) -> tuple[float, str]:
    """(peak FLOP/s, how it was derived) of this CPU for fp32 (``"32"``) or bf16 (``"bf16-mixed"``).

    peak = cores x clock x FP32 lanes per FMA x FMA pipes x 2 (an FMA is two FLOPs), with these rules:
    AVX-512 gives 16 fp32 lanes, AVX2 8, SSE 4; two FMA pipes per core (Intel server cores since Skylake-SP
    Gold, AMD since Zen 1); AMD's Zen 4 (family 25 with AVX-512) runs a 512-bit FMA as two halves on its two
    256-bit pipes, so it counts as 8 lanes x 2 pipes. bf16: AMX tiles (amx_bf16) do 1024 bf16 FMAs per cycle
    per core; AVX512_BF16's dot products do two bf16 multiply-adds per fp32 lane (twice the fp32 rate);
    without either, bf16 math runs at the fp32 rate after conversion. A nominal clock (a VM's) understates
    turbo, so the fraction of peak is an upper bound; ``measure_gemm_flops`` gives the measured ceiling that
    rows also report.
    """
    info = dict(_cpuinfo() if cpuinfo is None else cpuinfo)
    flags = set(info.get("flags", "").split())
    cores = _cores(info) if cores is None else cores
    clock = _max_clock_ghz(info) if clock_ghz is None else clock_ghz
    zen4 = info.get("vendor_id") == "AuthenticAMD" and info.get("cpu family") == "25" and "avx512f" in flags
    if "avx512f" in flags and not zen4:
        lanes, isa = 16, "AVX-512"
    elif "avx2" in flags or zen4:
        lanes, isa = 8, "AVX-512 on 256-bit pipes (Zen 4)" if zen4 else "AVX2"
    else:
        lanes, isa = 4, "SSE"
    pipes = 2 if "fma" in flags or "avx512f" in flags else 1
    per_cycle, how = lanes * pipes * 2, f"{isa}: {lanes} fp32 lanes x {pipes} FMA pipes x 2"
    if precision != "32":
        if "amx_bf16" in flags:
            per_cycle, how = 2048, "AMX bf16: 1024 FMAs x 2"
        elif "avx512_bf16" in flags:
            per_cycle, how = per_cycle * 2, f"AVX512_BF16 dot products: 2 x ({how})"
        else:
            how = f"no bf16 units, the fp32 rate: {how}"
    peak = cores * clock * 1e9 * per_cycle
    clock_from = (f"${CLOCK_ENV}" if os.environ.get(CLOCK_ENV) and clock_ghz is None
                  else "given" if clock_ghz is not None else "reported")
    return peak, (f"{cores} cores x {clock:.2f} GHz ({clock_from}) x {per_cycle} FLOP/cycle ({how}) = "
                  f"{peak / 1e9:.0f} GFLOP/s")


@functools.lru_cache(maxsize=None)
def measure_gemm_flops(device_type: str = "cpu", precision: str = "32", n: int = 2048, repeat: int = 5) -> float:
    """Measured FLOP/s of a square n x n matrix product (2 n^3 FLOPs) in fp32, or in bf16 for ``bf16-mixed``:
    the rate the best-tuned kernel (MKL / oneDNN / cuBLAS) reaches on this machine with torch's threads.

    A VM's nominal clock makes the data-sheet peak a guess; this ceiling is measured, so a model's
    ``fraction_of_gemm`` says how far its step is from what this machine does on its easiest workload.
    Cached per process: rows of one run share one measurement. Measure on a quiet machine.
    """
    device = torch.device("cuda" if device_type == "cuda" else "cpu")
    dtype = torch.float32 if precision == "32" else torch.bfloat16
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device, dtype)
    b = torch.randn(n, n, generator=generator).to(device, dtype)
    torch.mm(a, b)  # kernel selection, page faults
    _synchronize(device.type)
    start = time.perf_counter()
    for _ in range(repeat):
        torch.mm(a, b)
    _synchronize(device.type)
    return 2.0 * n ** 3 * repeat / (time.perf_counter() - start)


#: dense peak TFLOP/s of the GPUs we are lent (NVIDIA's data sheets, SXM parts): fp32 (non-tensor), bf16 tensor
GPU_PEAK_TFLOPS = {"H100": {"32": 66.9, "bf16-mixed": 989.4}, "H200": {"32": 66.9, "bf16-mixed": 989.4}}


def peak_flops(device: torch.device, precision: str = "32") -> tuple[float | None, str]:
    """(peak FLOP/s, derivation) of ``device`` (a CPU's over the cores torch's threads use); (None, why) for a
    GPU this table does not know."""
    if device.type != "cuda":  # the cores torch computes on: its intra-op threads, at most the physical cores
        info = _cpuinfo()
        return cpu_peak_flops(precision, info, cores=min(_cores(info), torch.get_num_threads()))
    name = torch.cuda.get_device_name(device)
    for key, table in GPU_PEAK_TFLOPS.items():
        if key in name:
            return table[precision] * 1e12, f"{name}: {table[precision]} TFLOP/s dense ({precision}, data sheet)"
    return None, f"{name}: no peak on record"


def peak_at_least_measured(peak: float | None, derivation: str, measured: float) -> tuple[float | None, str]:
    """The data-sheet peak, raised to a measured rate above it. A VM reports its nominal clock while the cores
    boost above it (the 2-core Zen 4 box: 2.60 GHz reported), so the derived peak can fall below what a matrix
    product reaches and the fractions of it would be overstated; the derivation then says by how much the
    clock was understated."""
    if peak is None or measured <= peak:
        return peak, derivation
    return measured, (f"{derivation}; raised to the measured GEMM rate {measured / 1e9:.0f} GFLOP/s: the clock "
                      f"taken is at least {measured / peak:.2f}x too low")


def flops_fields(flops: Mapping[str, float], step_s: float, device: torch.device, precision: str) -> dict[str, Any]:
    """The FLOP/s columns of a training row: model FLOPs per step, achieved GFLOP/s, the data-sheet peak, the
    measured matrix-product ceiling (``measure_gemm_flops``) and the fraction of each."""
    gemm = measure_gemm_flops(device.type, precision)
    peak, derivation = peak_at_least_measured(*peak_flops(device, precision), gemm)
    achieved = flops["total"] / step_s
    return {
        "model_gflop_per_step": round(flops["total"] / 1e9, 3),
        "conv_share_of_flops": round(flops["conv"] / flops["total"], 3) if flops["total"] else 0.0,
        "achieved_gflops": round(achieved / 1e9, 2),
        "peak_gflops": round(peak / 1e9, 1) if peak else None,
        "fraction_of_peak": round(achieved / peak, 3) if peak else None,
        "peak_derivation": derivation,
        "gemm_gflops": round(gemm / 1e9, 1),
        "fraction_of_gemm": round(achieved / gemm, 3),
    }
