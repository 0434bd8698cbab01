"""Helpers every stage uses, defined once: printing on rank 0, atomic files and
checksums, CPU thread counts and an ordered process-pool map, dtype and peak-FLOP/s
detection, the dataclass command line, the run logger, a robust JSONL reader,
user-facing errors (exit code 2), an output-folder lock, and clean interrupts.

Nothing here knows about Llama 3; the stage files import what they need:

    from common import print0, atomic_write_json, parse_config, read_jsonl, UsageError
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
import typing
from dataclasses import asdict, field

import torch


# -----------------------------------------------------------------------------
# 1. Printing


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def print0(*args, **kwargs):
    """print on rank 0 only (keeps `if rank == 0` out of the logic), flushed."""
    if rank() == 0:
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


# -----------------------------------------------------------------------------
# 2. Files: atomic writes and checksums
#
# A file is written to a temporary name in the same folder, flushed to disk, then
# renamed over the target: a run killed at any moment leaves either the old file or
# the new one, never half of one (§3.3.4 asks for reliable restarts).


def fsync_dir(path: str):
    """Make a rename inside `path` durable (no-op where directories cannot be synced)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write_fn):
    """Call write_fn(tmp_path), then rename tmp_path over `path` (same folder)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".tmp-")
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(folder)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_bytes(path: str, data: bytes):
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    return atomic_write(path, write)


def atomic_write_text(path: str, text: str):
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj, indent: int = 2):
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_torch_save(obj, path: str):
    """torch.save, atomically. Save only tensors and plain containers: loaders read
    with weights_only=True and refuse anything else."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return h.hexdigest()
            h.update(block)


# -----------------------------------------------------------------------------
# 3. CPU threads and worker processes, dtypes and peak FLOP/s


def busy_cores(seconds: float = 0.2) -> float:
    """How many cores other processes keep busy right now: /proc/stat's idle and busy
    ticks over `seconds` (this process sleeps meanwhile). Falls back to the 1-minute load
    average where /proc/stat does not exist (macOS). The load average is the wrong signal
    between the stages of one pipeline: the stage that just ended (2 threads) holds it
    above 1.5 for ~20 s after it exits, and the next stage would wrongly go to 1 thread."""
    def ticks():
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:]]
        idle = cpu[3] + (cpu[4] if len(cpu) > 4 else 0)  # idle + iowait
        return sum(cpu[:8]) - idle, sum(cpu[:8])         # (busy, total); guest ticks are in user
    try:
        busy0, total0 = ticks()
        time.sleep(seconds)
        busy1, total1 = ticks()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cores = os.cpu_count() or 1
    return cores * (busy1 - busy0) / max(1, total1 - total0)


def cpu_threads(requested: int = 0) -> int:
    """Threads per process on CPU: `requested` if > 0; else cores / local ranks,
    unless other jobs already keep the machine busy (busy_cores() >= cores - 0.5): then
    1, because two threads that wait on each other whenever one is descheduled are
    slower than one (docs/NOTES.md has the measurement)."""
    if requested > 0:
        return requested
    cores = os.cpu_count() or 1
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local_ranks >= cores:
        return 1
    return 1 if busy_cores() >= cores - 0.5 else cores // local_ranks


def set_threads(requested: int = 0, device="cpu") -> int:
    """torch.set_num_threads(cpu_threads(requested)) on CPU; returns the count."""
    if torch.device(device).type != "cpu":
        return torch.get_num_threads()
    n = cpu_threads(requested)
    torch.set_num_threads(n)
    return n


def pmap(fn, items, workers, initializer=None, initargs=()):
    """map(fn, items) over `workers` processes (fork), order preserved -> deterministic.
    Falls back to a plain loop for one worker or one item (process start-up costs ~50 ms)."""
    if initializer is not None:
        initializer(*initargs)                # the serial path needs the globals too
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    with ctx.Pool(workers, initializer=initializer, initargs=initargs) as pool:
        return pool.map(fn, items, chunksize=1)


def split_even(items, parts, size_of=len):
    """[a..z] -> `parts` contiguous chunks of about equal total size (for pmap)."""
    if parts <= 1 or len(items) <= 1:
        return [items]
    total = sum(size_of(x) for x in items) or 1
    chunks, cur, size = [], [], 0
    for x in items:
        cur.append(x)
        size += size_of(x)
        if size >= total * (len(chunks) + 1) / parts and len(chunks) < parts - 1:
            chunks.append(cur)
            cur = []
    chunks.append(cur)
    return [c for c in chunks if c]


DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def parse_dtype(name) -> torch.dtype:
    """'fp32' | 'bf16' | 'fp16' (or a torch.dtype) -> torch.dtype."""
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}; use one of fp32, bf16, fp16")
    return DTYPES[name]


def has_bf16(device) -> bool:
    """Whether the device has bf16 matrix units: CUDA with bf16 support, or a CPU with
    avx512_bf16 / AMX (there bf16 matmuls run ~2x faster than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def auto_dtype(name: str, device) -> torch.dtype:
    """'auto' -> bf16 where the hardware has it, else fp32; other names as parse_dtype."""
    if name == "auto":
        return torch.bfloat16 if has_bf16(device) else torch.float32
    return parse_dtype(name)


GPU_PEAK_BF16 = {"h100": 989e12, "h200": 989e12, "a100": 312e12}  # dense bf16 FLOP/s (SXM)


def peak_flops(device, dtype: torch.dtype) -> tuple[float, str]:
    """Peak FLOP/s of one device, for MFU. CUDA: the datasheet bf16 peak (989 TFLOP/s
    for an H100; §3.3 reports 38-43% BF16 MFU against it). CPU: no datasheet figure is
    worth trusting, so we time a 1024x1024 matmul in `dtype` with this process's
    threads (~0.2 s) -- an achievable peak, which makes CPU MFU look better than GPU
    MFU against a datasheet."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_BF16.items():
            if key in name.lower():
                return value, f"{name} datasheet bf16 peak"
        return float("nan"), f"{name}: unknown peak"
    n = 1024
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b  # warm-up
    reps, t0 = 8, time.perf_counter()
    for _ in range(reps):
        a @ b
    rate = 2 * n ** 3 * reps / (time.perf_counter() - t0)
    return rate, f"measured {n}x{n} {str(dtype).replace('torch.', '')} matmul, {torch.get_num_threads()} thread(s)"


# -----------------------------------------------------------------------------
# 4. The command line: a dataclass, overridable with --key value


def arg(default, help: str):
    """A dataclass field that carries its command-line help text."""
    return field(default=default, metadata={"help": help})


def config_parser(config_class, parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """argparse for a dataclass: every field becomes `--field-name value` (kebab-case),
    bools `--flag / --no-flag`, help from the field's metadata."""
    hints = typing.get_type_hints(config_class)
    parser = parser or argparse.ArgumentParser(description=(config_class.__doc__ or "").strip())
    for f in dataclasses.fields(config_class):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        help_text = (f.metadata.get("help", "") + f" (default: {f.default!r})").replace("%", "%%")
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=f.default, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=f.default, help=help_text)
    return parser


def parse_config(config_class, argv=None, show: bool = True):
    """Parse argv into a config_class instance; calls its validate() if it has one
    (a bad value exits with code 2 and a message naming the flag); prints the
    config on rank 0."""
    parser = config_parser(config_class)
    cfg = config_class(**vars(parser.parse_args(argv)))
    if hasattr(cfg, "validate"):
        try:
            cfg.validate()
        except UsageError as e:
            parser.error(str(e))
    if show and rank() == 0:
        print(f"{config_class.__name__}:")
        for k, v in asdict(cfg).items():
            print(f"  {k:26s} {v!r}")
    return cfg


def flag(name: str) -> str:
    """A config field's command-line spelling: max_steps -> --max-steps."""
    return "--" + name.replace("_", "-")


# -----------------------------------------------------------------------------
# 5. User-facing errors: one line and exit code 2, no traceback


class UsageError(ValueError):
    """Bad input from the user (a flag, a file, a checkpoint): the message names the
    problem (file, line, field) and the command exits with code 2."""


def cli(main_fn):
    """Wrap a command's main(argv) -> int: a UsageError prints 'error: ...' on stderr
    and returns 2 instead of a traceback."""
    def wrapped(argv=None):
        try:
            return main_fn(argv)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            return 2
    wrapped.__name__, wrapped.__doc__ = main_fn.__name__, main_fn.__doc__
    return wrapped


# -----------------------------------------------------------------------------
# 6. JSONL that never stops a run: every bad line is located and counted

MAX_JSON_DEPTH = 64            # no record of ours nests deeper; 100k brackets would recurse
MAX_LINE_BYTES = 64 << 20      # one record of 64 MB is a broken file, not a document


def _json_depth_ok(line: str, limit: int) -> bool:
    """Cheap check that brackets nest at most `limit` deep (counting inside strings
    too, which can only over-count: such a line is then parsed iteratively below)."""
    if line.count("[") + line.count("{") <= limit:
        return True
    depth = 0
    for ch in line:  # only reached for lines with many brackets
        if ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def parse_json_line(line: bytes | str, max_depth: int = MAX_JSON_DEPTH):
    """One JSON value from one line, or raise ValueError with a short reason (invalid
    UTF-8, invalid JSON, nesting deeper than max_depth, an integer too long to
    convert). Never RecursionError."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"invalid UTF-8 at byte {e.start}") from None
    if not _json_depth_ok(line, max_depth):
        raise ValueError(f"nested deeper than {max_depth} levels")
    try:
        return json.loads(line)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    except ValueError as e:  # JSONDecodeError, and int() of > 4,300 digits
        msg = str(e).split("\n")[0]
        raise ValueError(f"invalid JSON ({msg[:120]})") from None


def read_jsonl(path: str, max_line_bytes: int = MAX_LINE_BYTES, max_depth: int = MAX_JSON_DEPTH,
               opener=open):
    """Yield (line_no, value, error) for every non-blank line of a JSONL file: value is
    the parsed JSON and error None, or value None and error a short reason ("invalid
    UTF-8 at byte 3", "invalid JSON (...)", "line of 70000000 bytes"). The caller
    counts and reports "path:line_no: error" and keeps going. Lines are 1-based."""
    with opener(path, "rb") as f:
        for line_no, raw in enumerate(_lines(f, max_line_bytes), 1):
            if raw is None:
                yield line_no, None, f"line longer than {max_line_bytes} bytes"
                continue
            if not raw.strip():
                continue
            try:
                yield line_no, parse_json_line(raw, max_depth), None
            except ValueError as e:
                yield line_no, None, str(e)


def _lines(f, max_bytes):
    """Lines of a binary file; a line over max_bytes is skipped (yields None) without
    ever holding more than max_bytes of it in memory."""
    while True:
        line = f.readline(max_bytes + 1)
        if not line:
            return
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while True:  # drain the rest of the oversized line
                more = f.readline(1 << 20)
                if not more or more.endswith(b"\n"):
                    break
            yield None
            continue
        yield line


# -----------------------------------------------------------------------------
# 7. One run per output folder, and processes that die with their launcher


class OutputLock:
    """An exclusive lock on OUT/.lock (fcntl.flock: the kernel releases it when the
    process dies, so a killed run never leaves a stale lock). A second run on the same
    folder raises UsageError naming the holder's pid. Use as a context manager or call
    acquire()/release(); under torchrun only rank 0 needs to take it. A process that
    already holds the lock takes it again at once (a stage run twice in one process)."""

    _held: dict = {}  # lock path -> fd, for locks this process holds (re-entrant)

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.path = os.path.abspath(os.path.join(out_dir, ".lock"))
        self.fd = None

    def acquire(self):
        import fcntl
        if self.path in OutputLock._held:  # this process already runs in this folder
            return self
        os.makedirs(self.out_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UsageError(f"{self.out_dir} is in use by another run (pid {holder}); "
                             f"wait for it to finish or use another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = OutputLock._held[self.path] = fd
        return self

    def release(self):
        if self.fd is not None:
            import fcntl
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            OutputLock._held.pop(self.path, None)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def die_with_parent(sig: int = signal.SIGTERM):
    """Linux: ask the kernel to send `sig` to this process when its parent dies (a
    killed torchrun must not leave its ranks training and writing checkpoints).
    No-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() == 1:  # the parent died before prctl: we are an orphan already
            os.kill(os.getpid(), sig)
    except (OSError, AttributeError):
        pass


class Interrupts(contextlib.AbstractContextManager):
    """SIGINT / SIGTERM as a flag instead of an exception in the middle of a step.

        with Interrupts() as stop:
            while ...:
                train_step()
                if stop.signal:      # save a checkpoint, then exit(stop.exit_code)
                    ...

    The first signal sets `signal` (signal.SIGINT or SIGTERM). torchrun forwards a
    terminal's Ctrl-C to ranks that got it already, so a repeat within `grace` seconds
    is the same request; a later one restores the default behaviour and re-raises it
    (a user who presses Ctrl-C again after a while means it). exit_code is 128 + the
    signal number: 130 for SIGINT, 143 for SIGTERM, as a shell reports them."""

    def __init__(self, signals=(signal.SIGINT, signal.SIGTERM), grace: float = 2.0):
        self.signals, self.grace, self.signal, self._old, self._since = signals, grace, None, {}, 0.0

    def _handler(self, signum, frame):
        if self.signal is None:
            self.signal, self._since = signum, time.monotonic()
        elif time.monotonic() - self._since > self.grace:  # asked again: stop waiting
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            os.kill(os.getpid(), signum)

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signal) if self.signal else 0

    def __enter__(self):
        import threading
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}
        return False


# -----------------------------------------------------------------------------
# Run control: the step every rank stops at, the time budget, the ETA (pretrain.train)


def agreed_signal(interrupts, dist) -> int:
    """The signal number every rank acts on after this step (0: none). A terminal's
    Ctrl-C reaches all ranks, a scheduler's SIGTERM may reach one first: the ranks take
    the maximum over all of them, so they all stop at the same step (one scalar
    all-reduce per step)."""
    signum = int(interrupts.signal or 0)
    if dist.world_size > 1:
        flag_t = torch.tensor(signum, device=dist.device)
        torch.distributed.all_reduce(flag_t, op=torch.distributed.ReduceOp.MAX)
        signum = int(flag_t)
    return signum


def fit_time_budget(cfg, step: int, total_steps: int, per_step: float, overhead: float,
                    elapsed: float, dist) -> int:
    """The number of steps that ends training within cfg.time_budget_min, from the
    seconds per step measured so far (warm-up/compilation left out) plus evaluation and
    checkpoint seconds per step (before the first of those: 15% of a step), with 5% of
    the budget kept for the end (last evaluation, averaging, export). Never more than
    cfg.max_steps, never fewer than step + 1; every rank agrees (the minimum)."""
    per_step_all = per_step + (overhead if overhead > 0 else 0.15 * per_step)
    fit = step + int((0.95 * cfg.time_budget_min * 60 - elapsed) / per_step_all)
    fit_t = torch.tensor(min(cfg.max_steps, max(step + 1, fit)), device=dist.device)
    if dist.world_size > 1:  # every rank must agree on the schedule
        torch.distributed.all_reduce(fit_t, op=torch.distributed.ReduceOp.MIN)
    new_total = int(fit_t)
    if new_total != total_steps and (abs(new_total - total_steps) >= 0.05 * total_steps or step < 10):
        print0(f"time budget {cfg.time_budget_min:g} min at {per_step:.2f} s/step (+{overhead:.2f} s/step "
               f"eval and checkpoints): {new_total} steps (was {total_steps})")
        if cfg.anneal_steps > new_total:
            print0(f"{flag('anneal_steps')} {cfg.anneal_steps} is longer than the shortened run: annealing all")
    return new_total


def timed_steps(step_times: list[float], compile: bool) -> list[float]:
    """The step times that measure the speed: not the first step (warm-up: allocations,
    first kernels) nor, with --compile, the second (compilation can spill into it);
    the last 20 of the others. [9.0, 0.5, 0.4] -> [0.5, 0.4]; with compile -> [0.4]."""
    return step_times[(2 if compile else 1):][-20:]


def eta_record(timed: list[float], steps_left: int, overhead: float, compile: bool) -> dict:
    """The log's ETA: steps left x (mean timed step + eval/checkpoint seconds per step);
    before any timed step, what the run is doing instead of a wrong estimate."""
    if not timed:
        return {"eta": "compiling" if compile else "warm-up"}
    return {"eta_s": round(steps_left * (sum(timed) / len(timed) + overhead), 1)}


# -----------------------------------------------------------------------------
# 8. Runs: the logger (print + JSONL + PNG), a finished run's record, claiming OUT


class RunLogger:
    """One line per log call on rank 0, the same record appended to OUT/log.jsonl,
    and plot() draws OUT/loss.png from the whole log (surviving restarts: a resumed
    run appends, and for a step logged twice the later record wins)."""

    def __init__(self, out_dir: str, dist):
        self.out_dir, self.dist = out_dir, dist
        self.path = os.path.join(out_dir, "log.jsonl")
        if dist.is_main:
            os.makedirs(out_dir, exist_ok=True)

    def log(self, step: int, **metrics):
        if not self.dist.is_main:
            return
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        parts = [f"step {step:5d}"]
        for k, v in metrics.items():
            if k == "eta_s":
                k, v = "eta", f"{int(v) // 60}m{int(v) % 60:02d}s"
            elif k == "tok_s":
                k, v = "tok/s", f"{v:,.0f}"
            elif isinstance(v, float):
                v = f"{v:.2e}" if k == "lr" else f"{v:.1%}" if k == "mfu" else f"{v:.4f}"
            parts.append(f"{k} {v}")
        print(" | ".join(parts), flush=True)

    def records(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        # A run killed mid-write can leave half a last line: skip what does not parse.
        return [r for _, r, error in read_jsonl(self.path) if error is None and isinstance(r, dict)]

    def plot(self, keys=("loss", "val_loss", "val_loss_avg"), path=None, title=None, ylabel="loss (nats/token)"):
        """PNG of the given metrics against step (rank 0); a key may be (key, label)."""
        if not self.dist.is_main:
            return None
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        labels = dict(k if isinstance(k, tuple) else (k, k) for k in keys)
        series = {k: {} for k in labels}
        for r in self.records():
            for k in labels:
                if r.get(k) is not None:
                    series[k][r["step"]] = r[k]  # later records win
        fig, ax = plt.subplots(figsize=(7, 4))
        for k, points in series.items():
            if points:
                steps = sorted(points)
                ax.plot(steps, [points[s] for s in steps], marker="o" if len(steps) < 30 else None,
                        markersize=3, label=labels[k])
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(title or os.path.basename(os.path.abspath(self.out_dir)))
        ax.grid(alpha=0.3)
        ax.legend()
        path = path or os.path.join(self.out_dir, "loss.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    def write_json(self, name: str, obj: dict):
        if self.dist.is_main:  # atomic: a killed run never leaves half a report
            atomic_write_json(os.path.join(self.out_dir, name), obj)


def finished_run(out: str) -> dict | None:
    """The saved report of a finished run in `out` (OUT/final exists and
    OUT/report.json says "done"), else None. A stage's main calls it first so that
    re-running a finished command says so and leaves its record intact."""
    path = os.path.join(out, "report.json")
    if not (os.path.isdir(os.path.join(out, "final")) and os.path.isfile(path)):
        return None
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return None  # unreadable: not a finished record, the run may redo it
    return report if isinstance(report, dict) and report.get("status") == "done" else None


# How a run is carried out, not what it computes: a finished run may be asked for again with these changed.
HOW_FIELDS = {"out", "resume", "threads", "device", "log_every", "keep_checkpoints"}


def changed_settings(cfg) -> str:
    """What differs between cfg and the OUT/config.json of the run already in cfg.out
    ('n_train 20000 -> 30, ...'; '' when nothing does or there is no config.json)."""
    try:
        with open(os.path.join(cfg.out, "config.json")) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return ""
    now = json.loads(json.dumps(asdict(cfg)))  # tuples -> lists, as saved
    diffs = [f"{k} {saved[k]!r} -> {v!r}" for k, v in now.items()
             if k not in HOW_FIELDS and k in saved and saved[k] != v]
    return ", ".join(diffs[:5]) + (f" and {len(diffs) - 5} more" if len(diffs) > 5 else "")


def claim_output(out: str, dist) -> None:
    """Called by every stage's main right after setup_distributed, before anything is
    written: rank 0 locks OUT (common.OutputLock; a second run on the same folder
    stops with the first one's pid, on every rank), and ranks launched by torchrun
    ask to die with it (common.die_with_parent: a killed torchrun must not leave its
    ranks training and writing checkpoints)."""
    if "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_WORLD_SIZE" in os.environ:
        die_with_parent()
    error = ""
    if dist.is_main:
        try:
            OutputLock(out).acquire()
        except UsageError as e:
            error = str(e)
    if dist.world_size > 1:  # every rank must stop, not only rank 0
        message = [error]
        torch.distributed.broadcast_object_list(message, src=0)
        error = message[0]
    if error:
        raise UsageError(error)
