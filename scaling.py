"""
scaling.py -- scaling laws (§3.2.1 of "The Llama 3 Herd of Models"): how large a model
to train for a compute budget, measured at classroom scale on the built-in corpus.

Stage: sizing the model, before pre-training. Llama 3 chose 405B parameters this way:
models of 40M-16B parameters trained at budgets of 6e18-1e22 FLOPs predicted the
compute-optimal size at 3.8e25 FLOPs (402B parameters on 16.55T tokens). The paper's
method has two steps, and this file runs both, with pretrain.py's training loop:

1. IsoFLOPs curves. A budget C buys D = C / (6·N) training tokens for a model of N
   parameters (6 FLOPs per parameter and token: forward 2, backward 4). N counts the
   parameters that multiply: all but the input embedding table, whose lookup costs no
   FLOPs -- the untied output layer stays, it is a matmul (and the largest one in our
   small models); so 6·N·D is the training FLOPs (without attention: ~20% here), as in
   model.flops_per_token. At each budget we train several sizes of one size dial (model.py's
   dial-w: 4 layers of width 16·w, from dial-0.5 = width 8), each with a cosine schedule
   that decays to 10% of its peak (as the paper's scaling runs), and fit a second-degree
   polynomial of the held-out loss against log N through the best size and its two
   neighbours (around_best). Its minimum is the compute-optimal model N*(C), D*(C).
   A power law through the minima, D*(C) = A·C^α (the paper: α = 0.53, A = 0.29), and
   another for the loss there, L*(C) = B·C^-β, predict a larger budget: we extrapolate
   4x past the largest budget, train that model, and compare (Figures 2 and 3).
2. From loss to a capability. The paper relates the negative log-likelihood of the
   correct answer on a benchmark to the benchmark's accuracy with a sigmoid (Figure 4,
   ARC Challenge). Ours: a short SFT (sft.py) of several of the models on tasks.py's
   tasks, then the NLL of the correct answers on held-out tasks against the accuracy.

Then the question the default pipeline asks: which model to pre-train in
pretrain.py's time budget on THIS machine. The tokens per second of each dial size,
measured as pretrain runs (2 ranks under torchrun), turn minutes into FLOPs; the fits
give each size's predicted loss at its FLOPs, and the best is proposed. A fit whose
minima all lie at an edge of the sizes tried (the output prints a WARNING) proposes
nothing trustworthy: then train the candidates in the budget and compare.

Reads:  out/data (data.py builds it if missing), or --data.
Writes: OUT/scaling.json (every run, the fits, the extrapolation, the default budget),
        OUT/isoflops.png (Figure 2), OUT/optimal_tokens.png (Figure 3 and the loss of the
        compute-optimal models), OUT/loss_to_accuracy.png (Figure 4, right),
        OUT/runs/<name>/ (each pre-training run, its log in stdout.log), OUT/sft/<name>/.
        A run already finished in OUT is read back, not trained again.
Run:    python scaling.py --out out/scaling          # the full grid: ~28 min on 2 quiet cores
        python scaling.py --quick --out out/scaling_quick   # a reduced grid: 1.8 min (its minima at an edge: a demo)
        python scaling.py --budgets 1e11,3e11,1e12 --sizes 3   # your own grid

Read next: pretrain.py (whose default model and budget come from this measurement),
then exercises/ex14_scaling_law.py (the two fits by hand).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

import model as M
import pretrain
import sft
from common import UsageError, arg, atomic_write_json, cli, parse_config
from loader import DEFAULT_DATA, TokenStream, ensure_data, split_record

PAPER_ALPHA, PAPER_A = 0.53, 0.29  # §3.2.1: D*(C) = A·C^α, fitted on 6e18 to 1e22 FLOPs

# -----------------------------------------------------------------------------
# 1. Configuration


@dataclass
class ScalingConfig:
    """The scaling-law runs (§3.2.1): every field is a --kebab-case flag."""
    out: str = arg("out/scaling", "where scaling.json, the figures and every run go")
    data: str = arg(DEFAULT_DATA, "data.py output folder")
    quick: bool = arg(False, "a reduced grid (~2 min on 2 cores): fewer budgets, sizes and SFT runs")
    budgets: str = arg("", "compute budgets in FLOPs, comma-separated (default: the full or the quick grid)")
    sizes: int = arg(0, "dial sizes per budget, around a first guess of the optimum (default 5; quick 3)")
    dial: str = arg("0.5,1-16", "the dial sizes available, e.g. '0.5,1-16' (model.py's dial-w: width 16·w)")
    fit_sizes: int = arg(3, "sizes per budget the parabola is fitted to: the best one and its neighbours (0: all)")
    extrapolate: float = arg(4.0, "train the predicted compute-optimal model at this multiple of the largest budget")
    tokens_per_step: int = arg(2048, "the largest batch, in tokens (a budget's batch grows as its square root)")
    seq_len: int = arg(256, "training sequence length")
    max_epochs: float = arg(1.5, "leave out the sizes that would read the training data more often than this "
                                 "(a model this small is far from memorizing it: docs/NOTES.md)")
    sft_runs: int = arg(-1, "models to fine-tune for step 2, spread over the losses (default 5; quick 3; 0: none)")
    sft_steps: int = arg(0, "optimizer steps of each step-2 SFT (default 100; quick 40; sft.py's own is 400)")
    n_eval: int = arg(0, "held-out task prompts of each step-2 SFT (default 200; quick 100)")
    default_minutes: float = arg(4.5, "the pipeline's pre-training time budget (pretrain.py --time-budget-min)")
    speed_dial: str = arg("", "dial sizes whose tokens/s decide the default model (default '1-6'; quick '1-4')")
    speed_ranks: int = arg(2, "ranks of the speed measurement (2: torchrun, as the pipeline; 1: this process)")
    speed_steps: int = arg(12, "optimizer steps of each speed measurement (the first 2 are not counted)")
    speed_repeats: int = arg(-1, "repeats of the speed measurement, interleaved (default 2; quick 1)")
    speed_tokens_per_step: int = arg(pretrain.PretrainConfig.tokens_per_step,
                                     "tokens per step of the speed measurement (pretrain.py's default)")
    jobs: int = arg(0, "grid runs trained at once, each its own process (0: 2 on a CPU of >= 2 cores, else 1)")
    dtype: str = arg("fp32", "the grid runs' pretrain.py --dtype: at these widths fp32 is faster than bf16 on a CPU")
    seed: int = arg(0, "weights and data order of every run")
    threads: int = arg(0, "CPU threads (0 = the cores / ranks rule of common.set_threads)")
    device: str = arg("", "cpu | cuda (default: cuda if available)")

    def validate(self):
        if not self.max_epochs > 0:
            raise UsageError(f"--max-epochs must be > 0 (got {self.max_epochs!r})")
        if self.fit_sizes < 0 or self.fit_sizes in (1, 2):
            raise UsageError(f"--fit-sizes must be 0 (all) or >= 3: a parabola needs three points (got {self.fit_sizes!r})")
        if self.extrapolate < 1:
            raise UsageError(f"--extrapolate must be >= 1 (got {self.extrapolate!r})")
        if self.jobs < 0:
            raise UsageError(f"--jobs must be >= 0 (got {self.jobs!r})")
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise UsageError(f"--dtype must be auto, fp32 or bf16 (got {self.dtype!r})")
        for name, low in (("sft_runs", 0), ("speed_repeats", 1)):  # -1: the grid's default
            if getattr(self, name) < low and getattr(self, name) != -1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= {low} (got {getattr(self, name)!r})")
        if self.speed_steps < 3:
            raise UsageError(f"--speed-steps must be >= 3: the first 2 are not timed (got {self.speed_steps!r})")
        for name in ("tokens_per_step", "seq_len", "speed_ranks", "sft_steps", "n_eval"):
            if getattr(self, name) < (0 if name in ("sft_steps", "n_eval") else 1):  # 0: the grid's default
                raise UsageError(f"--{name.replace('_', '-')} must be > 0 (got {getattr(self, name)!r})")
        if self.tokens_per_step % self.seq_len:
            raise UsageError(f"--tokens-per-step {self.tokens_per_step} is not a multiple of --seq-len {self.seq_len}")


# The two grids. The full one: four budgets from 7e11, the smallest at which the optimum
# lies inside the dial, to 2e12. Below ~7e11 it lies at or under dial-0.5, and the best
# loss there is how far an 8-wide model gets, not a compute-optimal one: a power law
# through those budgets read too shallow a slope and predicted the loss 4x on 0.07-0.30
# nats too high (docs/NOTES.md, 2026-12-06 and 2026-12-07). At 2e12 dial-0.5 reads the
# built-in corpus (3.7M tokens) 1.3 times, the extrapolated run 1.2 times (--max-epochs).
# On 2 quiet cores, two runs at a time, the 20 runs take ~20 minutes (the largest budget
# ~8), the extrapolation ~4.5, the SFTs and the speed measurement ~3 more. A grid above
# (2e12-5.6e12, 43 minutes) errs the other way (+0.21 / +0.26 nats): past ~8e12 the
# corpus bends the frontier.
FULL = dict(budgets="7e11,1e12,1.4e12,2e12", sizes=5, sft_runs=5, sft_steps=100, n_eval=200,
            speed_dial="1-6", speed_repeats=2)
QUICK = dict(budgets="2e10,4e10,8e10", sizes=3, sft_runs=3, sft_steps=40, n_eval=100,
             speed_dial="1-3", speed_repeats=1)


def resolve(cfg: ScalingConfig) -> ScalingConfig:
    """Fill the fields left at their 'default' markers (the field's own default: "", 0
    or -1) from the full or the quick grid; anything given stays (--sft-runs 0: no step 2)."""
    grid = QUICK if cfg.quick else FULL
    marker = {f.name: f.default for f in fields(cfg)}
    for name, value in grid.items():
        if getattr(cfg, name) == marker[name]:
            setattr(cfg, name, value)
    return cfg


def parse_list(text: str, what: str) -> list[float]:
    """'1e11,3e11' -> [1e11, 3e11]; '0.5,3-6' -> [0.5, 3, 4, 5, 6] (a-b: the integers from a to b)."""
    out = []
    try:
        for item in (x.strip() for x in text.split(",")):
            if "-" in item[1:] and "e-" not in item:
                lo, hi = (int(x) for x in item.split("-"))
                out += range(lo, hi + 1)
            elif item:
                out.append(float(item))
    except ValueError:
        raise UsageError(f"{what}: cannot read {text!r} (e.g. '1e11,3e11' or '0.5,3-6')") from None
    return out


# -----------------------------------------------------------------------------
# 2. The size dial, parameters and FLOPs


def dial(w: float, vocab_size: int) -> M.ModelArgs:
    """model.py's dial-w with the data's vocabulary: 4 layers of width 16·w, 4 query
    heads sharing 2 KV heads (GQA), SwiGLU -- every Llama 3 feature at any size. A
    width dial at a fixed depth: its steps are finer than a depth dial's at the small
    end (N grows as w², not as d³), and small models cost less per token. Its smallest,
    dial-0.5 (width 8), has 69K parameters, 65K of them the output layer: a vocabulary of
    8,192 puts a floor under N that a larger budget is needed to climb away from."""
    return M.ModelArgs.from_name(dial_name(w), vocab_size=vocab_size)


def dial_name(w: float) -> str:
    """0.5 -> 'dial-0.5', 4.0 -> 'dial-4'."""
    return f"dial-{w:g}"


def matmul_params(args: M.ModelArgs) -> int:
    """N of C = 6·N·D: the parameters that multiply, i.e. all but the input embedding
    (a lookup); model.flops_per_token at no attention is 6·N. dial-6: 1,192,800."""
    return round(M.flops_per_token(args, 0) / 6)


def non_embedding_params(args: M.ModelArgs) -> int:
    """Kaplan et al.'s count, for the record: without the output layer either."""
    return M.count_params(args) - args.vocab_size * args.dim * (1 if args.tie_embeddings else 2)


def sizes_for_budget(flops: float, dial_sizes: list[int], n_params: dict[int, int], count: int,
                     max_tokens: float) -> list[int]:
    """`count` consecutive dial sizes whose middle one is nearest (in log N) to a first
    guess of the optimum, 20 tokens per parameter (Hoffmann et al.'s rule: C = 6·N·20N);
    shifted inwards at the ends of the dial. Sizes that would train on more than
    max_tokens are left out (the paper does not repeat its data; we allow part of it
    twice at the largest budget, --max-epochs). main() adds a size
    where the best one is at an edge."""
    dial_sizes = [w for w in dial_sizes if flops / (6 * n_params[w]) <= max_tokens]
    guess = math.log(math.sqrt(flops / 120))
    centre = min(range(len(dial_sizes)), key=lambda i: abs(math.log(n_params[dial_sizes[i]]) - guess))
    first = max(0, min(len(dial_sizes) - count, centre - count // 2))
    return dial_sizes[first:first + count]


def peak_lr(args: M.ModelArgs) -> float:
    """Our per-size peak LR, 2e-3 at width 384 (pretrain.py's small-15m), times
    sqrt(384 / width): smaller models take a larger one (§3.2.1 sets it per size,
    2e-4 to 4e-4 for 40M-16B parameters)."""
    return 2e-3 * math.sqrt(384 / args.dim)


# -----------------------------------------------------------------------------
# 3. The fits: IsoFLOPs parabolas, power laws, the sigmoid


def fit_isoflops(params, losses) -> dict:
    """One IsoFLOPs curve: loss ≈ a·x² + b·x + c with x = log10 N (least squares; on an
    IsoFLOPs curve log D = log(C/6) - log N, so this is the paper's parabola in log D).
    -> {"params": N at the vertex 10^(-b/2a), "loss": the fitted loss there, "coeffs": [a, b, c],
    "edge": False when the vertex lies strictly inside the sizes measured}. A curve with no
    minimum (a <= 0), or one more than half a decade beyond the sizes measured, returns
    its best measured point (an edge)."""
    x, y = np.log10(np.asarray(params, dtype=np.float64)), np.asarray(losses, dtype=np.float64)
    a, b, c = np.polyfit(x, y, 2)
    coeffs = [float(a), float(b), float(c)]
    if a <= 0 or not x.min() - 0.5 <= -b / (2 * a) <= x.max() + 0.5:
        i = int(np.argmin(y))
        return {"params": float(10 ** x[i]), "loss": float(y[i]), "coeffs": coeffs, "edge": True}
    vertex = -b / (2 * a)
    return {"params": float(10 ** vertex), "loss": float(c - b * b / (4 * a)), "coeffs": coeffs,
            "edge": not x.min() < vertex < x.max()}


def around_best(runs: list[dict], count: int) -> list[dict]:
    """The `count` runs of one budget (sorted by size) centred on the best one, shifted
    inwards at the ends; count 0: all. A parabola describes an IsoFLOPs curve near its
    minimum; here the sizes far above it train for a few dozen steps and sit near the
    untrained plateau (~7.5 nats), which flattens the curve and pulls a parabola through
    every point off the minimum (docs/NOTES.md compares both fits)."""
    if not count or count >= len(runs):
        return runs
    best = min(range(len(runs)), key=lambda i: runs[i]["val_loss"])
    first = max(0, min(len(runs) - count, best - count // 2))
    return runs[first:first + count]


def fit_power_law(x, y) -> tuple[float, float]:
    """y = A·x^α as a straight line in log-log (least squares on the logs) -> (A, α).
    compute [1e20, 1e22], tokens [2e10, 2e11] -> (2.0, 0.5)."""
    alpha, log_a = np.polyfit(np.log(np.asarray(x, dtype=np.float64)), np.log(np.asarray(y, dtype=np.float64)), 1)
    return float(math.exp(log_a)), float(alpha)


def sigmoid(x, x0: float, k: float, floor: float = 0.0):
    """Accuracy as a function of the NLL of the correct answer: floor + (1 - floor) / (1 +
    e^(k·(x - x0))): 1 at low loss, `floor` at high loss (chance, or what formatting alone
    gets right), halfway at x0, steeper with k."""
    return floor + (1.0 - floor) / (1.0 + np.exp(np.clip(k * (np.asarray(x, dtype=np.float64) - x0), -60, 60)))


def fit_sigmoid(x, y) -> tuple[float, float, float]:
    """Least-squares (x0, k, floor) of y ≈ sigmoid(x, x0, k, floor): for each floor from 0
    to the lowest accuracy (0 alone with fewer than 4 points), a grid search over x0 (around
    the data) and k (log-spaced), then three rounds of a finer grid around the best."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    span = max(float(x.max() - x.min()), 1e-3)
    best = (math.inf,)
    for floor in np.linspace(0.0, float(y.min()), 21 if len(x) >= 4 else 1):
        x0s = np.linspace(x.min() - span, x.max() + span, 121)
        ks = np.exp(np.linspace(math.log(0.1 / span), math.log(200 / span), 121))
        for _ in range(4):
            err = ((sigmoid(x[None, None, :], x0s[:, None, None], ks[None, :, None], floor) - y) ** 2).sum(-1)
            i, j = np.unravel_index(int(np.argmin(err)), err.shape)
            x0, k = float(x0s[i]), float(ks[j])
            dx, dk = (x0s[1] - x0s[0]) * 2, math.log(ks[1] / ks[0]) * 2
            x0s = np.linspace(x0 - dx, x0 + dx, 41)
            ks = np.exp(np.linspace(math.log(k) - dk, math.log(k) + dk, 41))
        best = min(best, (float(err[i, j]), x0, k, float(floor)))
    return best[1:]


# -----------------------------------------------------------------------------
# 4. Runs: pre-training through pretrain.py, SFT through sft.py


def bytes_per_token_table(tokenizer_path: str, vocab_size: int) -> np.ndarray:
    """Bytes of text each token id stands for (special tokens: 0). Bits per byte =
    loss / ln 2 · tokens / bytes: a loss that does not depend on the tokenizer."""
    from tokenizer import load_bpe
    table = np.zeros(vocab_size, dtype=np.int64)
    for piece, rank in load_bpe(tokenizer_path).items():
        table[rank] = len(piece)
    return table


def held_out_bytes_per_token(cfg: ScalingConfig, meta: dict) -> float:
    """Bytes per predicted token over the windows pretrain.make_eval_fn scores (its
    first eval_tokens of the val split, in rows of seq_len; targets equal to bos are
    not scored there and not counted here)."""
    stream = TokenStream(cfg.data, meta, "val")
    n_rows = max(1, min(pretrain.PretrainConfig.eval_tokens, stream.n_tokens - 1) // cfg.seq_len)
    table = bytes_per_token_table(meta["tokenizer"], meta["vocab_size"])
    targets = np.concatenate([stream.read(k * cfg.seq_len + 1, k * cfg.seq_len + cfg.seq_len + 1)
                              for k in range(n_rows)])
    targets = targets[targets != meta["bos_id"]]
    return float(table[targets].sum() / len(targets))


def run_pretrain(argv: list[str], out: str, procs: int = 0):
    """pretrain.py with argv: in this process (procs 0; its printing to OUT/stdout.log),
    as a process of its own (1), or under torchrun with `procs` ranks."""
    if not procs:
        with quietly(out):
            code = pretrain.main(argv)
    else:
        os.makedirs(out, exist_ok=True)
        launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] if procs > 1 else []
        with open(os.path.join(out, "stdout.log"), "a") as log:
            code = subprocess.run([sys.executable, *launch, "pretrain.py", *argv], stdout=log, stderr=subprocess.STDOUT,
                                  cwd=os.path.dirname(os.path.abspath(__file__))).returncode
    if code != 0:
        raise SystemExit(f"{out}: pretrain.py exited with {code}; see {out}/stdout.log")


def quietly(out_dir: str):
    """Send a run's own printing to OUT/stdout.log (one summary line per run here)."""
    os.makedirs(out_dir, exist_ok=True)
    log = open(os.path.join(out_dir, "stdout.log"), "a")
    stack = contextlib.ExitStack()
    stack.enter_context(log)
    stack.enter_context(contextlib.redirect_stdout(log))
    stack.enter_context(contextlib.redirect_stderr(log))
    return stack


def batch_for(cfg: ScalingConfig, flops: float) -> int:
    """Tokens per step at a budget. §3.2.1 fixes one batch per budget, growing with it
    (250K tokens at 6e18 FLOPs to 4M at 1e22, about C^0.37). Ours grows as √C: one row
    at 2.5e10 FLOPs, a power of two of rows, up to --tokens-per-step. (Growing as C would
    give a budget's compute-optimal model fewer steps the larger the budget.)"""
    rows = 2 ** round(math.log2(math.sqrt(flops / 2.5e10)))
    return cfg.seq_len * max(1, min(cfg.tokens_per_step // cfg.seq_len, rows))


def pretrain_run(cfg: ScalingConfig, vocab_size: int, w: float, flops: float, tokens_per_step: int,
                 name: str, threads: int = 0, separate: bool = False) -> dict:
    """Pre-train dial-`w` for flops / (6·N) tokens with pretrain.py, in this process or
    (separate) in its own, on `threads` CPU threads (0: common.set_threads' rule); ->
    the run's record. A run finished earlier in OUT is read back."""
    args = dial(w, vocab_size)
    n = matmul_params(args)
    steps = max(1, round(flops / (6 * n * tokens_per_step)))
    out = os.path.join(cfg.out, "runs", name)
    argv = ["--model", dial_name(w), "--data", cfg.data, "--out", out, "--seed", str(cfg.seed),
            "--max-steps", str(steps), "--time-budget-min", "0", "--lr", f"{peak_lr(args):.3g}",
            "--warmup-steps", str(max(1, steps // 10)), "--min-lr-ratio", "0.1", "--anneal-steps", "0",
            "--tokens-per-step", str(tokens_per_step), "--seq-len", str(cfg.seq_len),
            "--batch-size", str(tokens_per_step // cfg.seq_len), "--eval-every", "0", "--ckpt-every", str(steps),
            "--keep-checkpoints", "1", "--log-every", "25", "--threads", str(threads), "--dtype", cfg.dtype]
    if cfg.device:
        argv += ["--device", cfg.device]
    load = os.getloadavg()[0]
    t0 = time.time()
    run_pretrain(argv, out, 1 if separate else 0)
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    tokens = steps * tokens_per_step
    return {"name": name, "model": dial_name(w), "dial": w, "params": n,
            "params_total": M.count_params(args), "params_non_embedding": non_embedding_params(args), "budget": flops, "tokens": tokens, "flops": 6 * n * tokens,
            "steps": steps, "tokens_per_step": tokens_per_step, "lr": float(f"{peak_lr(args):.3g}"),
            "seconds": round(report.get("train_seconds") or time.time() - t0, 1),
            "val_loss": report["val_loss"], "load": round(load, 2), "final": os.path.join(out, "final")}


def jobs_for(cfg: ScalingConfig) -> int:
    """Runs trained at once: 2 on a CPU (our small models are memory-bound and leave a
    second thread mostly idle: two runs of one thread each finish sooner than one after
    the other on two; docs/NOTES.md), 1 on a GPU; --jobs overrides."""
    on_gpu = cfg.device == "cuda" or (not cfg.device and torch.cuda.is_available())
    return cfg.jobs or (1 if on_gpu else min(2, os.cpu_count() or 1))


def pretrain_runs(cfg: ScalingConfig, todo: list[tuple], vocab_size: int) -> list[dict]:
    """pretrain_run for each (w, flops, tokens_per_step, name) of `todo`, jobs_for(cfg) at a
    time (the largest budgets first), a line printed as each ends -> the records, in todo's order."""
    jobs = min(jobs_for(cfg), len(todo))
    if jobs <= 1:
        done = ((i, pretrain_run(cfg, vocab_size, *job, cfg.threads)) for i, job in enumerate(todo))
    else:  # a process each: stdout and torch's thread count belong to a process
        pool, threads = ThreadPoolExecutor(jobs), cfg.threads or max(1, (os.cpu_count() or 1) // jobs)
        futures = {pool.submit(pretrain_run, cfg, vocab_size, *todo[i], threads, True): i
                   for i in sorted(range(len(todo)), key=lambda i: -todo[i][1])}
        done = ((futures[f], f.result()) for f in as_completed(futures))
    runs = [None] * len(todo)
    try:
        for i, run in done:
            runs[i] = run
            print(f"  {run['name']:22s} N {run['params'] / 1e6:6.3f}M  D {run['tokens'] / 1e6:6.2f}M tokens "
                  f"({run['steps']} steps)  held-out loss {run['val_loss']:.4f}  {run['seconds']:.0f} s "
                  f"(load {run['load']:.1f})", flush=True)
    finally:  # a failed run: the ones not started are not started
        if jobs > 1:
            pool.shutdown(cancel_futures=True)
    return runs


def sft_run(cfg: ScalingConfig, run: dict) -> dict:
    """A short SFT (sft.py) of a pre-trained run -> {"answer_nll" (held-out NLL per token
    of the correct answers, after SFT), "answer_nll_before", "accuracy", "seconds"}."""
    out = os.path.join(cfg.out, "sft", run["name"])
    argv = ["--init", run["final"], "--out", out, "--seed", str(cfg.seed), "--max-steps", str(cfg.sft_steps),
            "--warmup-steps", str(max(1, cfg.sft_steps // 10)), "--n-eval", str(cfg.n_eval),
            "--n-train", str(max(1000, 64 * cfg.sft_steps)),  # ~64 conversations per step: each seen once
            "--eval-every", "0", "--ckpt-every", str(cfg.sft_steps), "--keep-checkpoints", "1",
            "--log-every", "25", "--threads", str(cfg.threads)]
    if cfg.device:
        argv += ["--device", cfg.device]
    with quietly(out):
        report = sft.main(argv)
    if not isinstance(report, dict):
        raise SystemExit(f"{out}: sft.py exited with {report}; see {out}/stdout.log")
    return {"run": run["name"], "params": run["params"], "val_loss": run["val_loss"],
            "answer_nll": report["val_loss_after"], "answer_nll_before": report["val_loss_before"],
            "accuracy": report["accuracy_after"]["overall"], "steps": report["steps"],
            "seconds": round(report.get("wall_seconds", 0.0), 1)}


def measure_speed(cfg: ScalingConfig, names: list[str]) -> dict[str, list[float]]:
    """Training tokens/s of each model as the pipeline runs it (`torchrun
    --nproc_per_node=2 pretrain.py`, or this process with --speed-ranks 1): models
    interleaved, --speed-repeats times, each the median over its steps after the first 2."""
    speeds = {n: [] for n in names}
    for rep in range(cfg.speed_repeats):
        for name in names:
            out = os.path.join(cfg.out, "speed", f"{name}_r{rep}")
            argv = ["--model", name, "--data", cfg.data, "--out", out, "--max-steps", str(cfg.speed_steps),
                    "--time-budget-min", "0", "--tokens-per-step", str(cfg.speed_tokens_per_step),
                    "--eval-every", "0", "--eval-tokens", str(cfg.seq_len * 2 * cfg.speed_ranks),
                    "--ckpt-every", str(cfg.speed_steps), "--anneal-steps", "0", "--seed", str(cfg.seed)]
            if cfg.device:
                argv += ["--device", cfg.device]
            if not os.path.exists(os.path.join(out, "report.json")):
                one = cfg.speed_ranks == 1  # in this process, on --threads
                run_pretrain(argv + (["--threads", str(cfg.threads)] if one else []), out, 0 if one else cfg.speed_ranks)
            with open(os.path.join(out, "log.jsonl")) as f:
                tok_s = [r["tok_s"] for r in map(json.loads, f) if r.get("tok_s") and r["step"] > 2]
            speeds[name].append(float(np.median(tok_s)))
            print(f"  speed {name:10s} repeat {rep}: {speeds[name][-1]:,.0f} tokens/s "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    return speeds


# -----------------------------------------------------------------------------
# 5. Figures (the paper's Figures 2, 3 and 4)


def plot_isoflops(runs: list[dict], fits: list[dict], extra: dict | None, path: str):
    """Figure 2: held-out loss against training tokens, one curve per budget, the
    fitted parabolas and their minima (the compute-optimal models)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(fits)))
    for fit, color in zip(fits, colors):
        C = fit["flops"]
        pts = [r for r in runs if r["budget"] == C]
        ax.scatter([r["tokens"] for r in pts], [r["val_loss"] for r in pts], color=color, s=22, zorder=3)
        fitted = [r for r in pts if r["model"] in fit["fitted"]]
        logn = np.linspace(math.log10(min(r["params"] for r in fitted)) - 0.1,
                           math.log10(max(r["params"] for r in fitted)) + 0.1, 100)
        ax.plot(C / (6 * 10 ** logn), np.polyval(fit["coeffs"], logn), color=color, lw=1.2, label=f"{C:.2g} FLOPs")
        ax.scatter([fit["tokens"]], [fit["loss"]], color="none" if fit["edge"] else color, marker="*", s=120,
                   edgecolor="k", zorder=4)
    if extra:
        ax.scatter([extra["tokens"]], [extra["measured_loss"]], color="red", marker="D", s=40, zorder=4,
                   label=f"extrapolated, {extra['flops']:.2g} FLOPs")
    ax.set_xscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title("IsoFLOPs curves (§3.2.1, Figure 2): parabolas through the best size and its neighbours,\n"
                 "stars are their minima (hollow: at the edge of the sizes fitted)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_optimal(fits: list[dict], fit: dict, extra: dict | None, default: dict | None, path: str):
    """Figure 3 (left): the compute-optimal number of training tokens against the
    budget, with the fitted power law and the paper's; right: the loss of the
    compute-optimal models, the power law through it, and the extrapolated run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    C = np.array([f["flops"] for f in fits])
    far = max([C.max()] + [x["flops"] for x in (extra, default) if x])
    grid = np.logspace(math.log10(C.min()) - 0.2, math.log10(far) + 0.2, 50)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.3))
    used = np.array([f["flops"] in fit["budgets_used"] for f in fits])  # hollow: a minimum not in the fits
    face = np.where(used, "k", "none")
    ax1.scatter(C, [f["tokens"] for f in fits], facecolor=face, edgecolor="k", zorder=3,
                label="IsoFLOPs minima (hollow: at an edge, not fitted)")
    ax1.plot(grid, fit["A"] * grid ** fit["alpha"], label=f"fit: {fit['A']:.3g}·C^{fit['alpha']:.3f}")
    ax1.plot(grid, PAPER_A * grid ** PAPER_ALPHA, "--", color="gray", label="paper: 0.29·C^0.53")
    if default:
        ax1.axvline(default["flops"], color="green", ls=":", label=f"default budget {default['flops']:.2g} FLOPs")
    ax1.set(xscale="log", yscale="log", xlabel="compute budget C (FLOPs = 6·N·D)", ylabel="compute-optimal tokens D*",
            title="compute-optimal tokens (Figure 3)")
    ax1.grid(alpha=0.3, which="both")
    ax1.legend(fontsize=8)
    ax2.scatter(C, [f["loss"] for f in fits], facecolor=face, edgecolor="k", zorder=3, label="loss at the minima")
    ax2.plot(grid, fit["B"] * grid ** -fit["beta"], label=f"fit: {fit['B']:.3g}·C^-{fit['beta']:.3f}")
    if extra:
        ax2.scatter([extra["flops"]], [extra["predicted_loss"]], marker="o", facecolor="none", edgecolor="red",
                    s=60, label=f"predicted {extra['predicted_loss']:.3f}")
        ax2.scatter([extra["flops"]], [extra["measured_loss"]], marker="D", color="red", s=30,
                    label=f"measured {extra['measured_loss']:.3f}")
    ax2.set(xscale="log", xlabel="compute budget C (FLOPs)", ylabel="held-out loss (nats/token)",
            title="loss of the compute-optimal model, extrapolated 4x")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_accuracy(points: list[dict], x0: float, k: float, floor: float, path: str):
    """Figure 4 (right): task accuracy against the NLL of the correct answers, and the sigmoid."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.3))
    x = np.array([p["answer_nll"] for p in points])
    ax.scatter(x, [100 * p["accuracy"] for p in points], color="k", zorder=3, label="SFT of a scaling-law model")
    grid = np.linspace(x.min() - 0.3 * np.ptp(x) - 0.05, x.max() + 0.3 * np.ptp(x) + 0.05, 100)
    ax.plot(grid, 100 * sigmoid(grid, x0, k, floor), label=f"sigmoid: x0 {x0:.3f}, k {k:.2f}, floor {100 * floor:.1f}%")
    ax.set(xlabel="held-out NLL of the correct answers (nats/token)", ylabel="task accuracy (%)", ylim=(-3, 103),
           title="from loss to accuracy (§3.2.1, Figure 4)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -----------------------------------------------------------------------------
# 6. The whole measurement


def pick_evenly(runs: list[dict], count: int) -> list[dict]:
    """`count` runs spread evenly over the range of held-out losses (always the best and the worst)."""
    ranked = sorted(runs, key=lambda r: r["val_loss"])
    if count >= len(ranked):
        return ranked
    if count <= 1:
        return ranked[:count]
    return [ranked[round(i * (len(ranked) - 1) / (count - 1))] for i in range(count)]


def predicted_loss(fit: dict, flops: float, params: float) -> float:
    """The loss of a model of `params` at budget `flops`: the compute-optimal loss
    B·C^-β plus the mean parabola, a·(log10 N - log10 N*(C))² (how wide the curves are)."""
    n_opt = flops / (6 * fit["A"] * flops ** fit["alpha"])
    return fit["B"] * flops ** -fit["beta"] + fit["curvature"] * (math.log10(params) - math.log10(n_opt)) ** 2


@cli
def main(argv=None) -> int:
    """Run the grid, the fits, the extrapolation, step 2 and the default budget -> 0."""
    cfg = resolve(parse_config(ScalingConfig, argv))
    t_start = time.time()
    os.makedirs(cfg.out, exist_ok=True)

    budgets = sorted(parse_list(cfg.budgets, "--budgets"))
    dial_sizes = sorted(parse_list(cfg.dial, "--dial"))
    speed_sizes = parse_list(cfg.speed_dial, "--speed-dial")

    class _Dist:  # ensure_data's view of a single process
        rank, world_size, is_main = 0, 1, True
    meta = ensure_data(cfg.data, _Dist())
    vocab = meta["vocab_size"]
    n_params = {w: matmul_params(dial(w, vocab)) for w in dial_sizes}
    if len(budgets) < 2 or cfg.sizes < 3 or len(dial_sizes) < cfg.sizes:
        raise UsageError(f"need >= 2 budgets and >= 3 sizes per budget from --dial {cfg.dial} "
                         f"(got {len(budgets)} budgets, --sizes {cfg.sizes})")
    n_train = split_record(meta, "train")["tokens"]
    print(f"scaling laws (§3.2.1) on {cfg.data} ({n_train:,} train tokens), load {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")

    # ---- step 1: the IsoFLOPs grid ------------------------------------------------------
    max_tokens = n_train * cfg.max_epochs

    def within_data(C, w):  # dial-w at budget C reads at most --max-epochs of the corpus
        return C / (6 * n_params[w]) <= max_tokens

    plan = {}
    for C in budgets:
        plan[C] = sizes_for_budget(C, dial_sizes, n_params, cfg.sizes, max_tokens)
        if len(plan[C]) < 3:
            raise UsageError(f"budget {C:.3g} FLOPs: fewer than 3 sizes of --dial {cfg.dial} train within "
                             f"{cfg.max_epochs:g} epoch(s) of {n_train:,} tokens; lower the budget or widen the dial")
        print(f"budget {C:.3g} FLOPs: {dial_name(plan[C][0])}..{plan[C][-1]:g} ({n_params[plan[C][0]] / 1e6:.3f}M-"
              f"{n_params[plan[C][-1]] / 1e6:.3f}M), {batch_for(cfg, C)} tokens/step", flush=True)
    print(f"training {sum(map(len, plan.values()))} runs, {jobs_for(cfg)} at a time", flush=True)
    here = {C: {} for C in budgets}
    todo = [(C, w) for C in budgets for w in plan[C]]
    while todo:
        for run in pretrain_runs(cfg, [(w, C, batch_for(cfg, C), f"C{C:.3g}_{dial_name(w)}") for C, w in todo], vocab):
            here[run["budget"]][run["dial"]] = run
        # The best size at an edge of those tried: the minimum may lie beyond, try the next size (twice at most).
        todo = []
        for C in budgets:
            tried = sorted(here[C])
            best = min(tried, key=lambda w: here[C][w]["val_loss"])
            i = dial_sizes.index(best)
            step = -1 if best == tried[0] else 1 if best == tried[-1] else 0
            if (step != 0 and 0 <= i + step < len(dial_sizes) and len(tried) < cfg.sizes + 2
                    and within_data(C, dial_sizes[i + step])):
                todo.append((C, dial_sizes[i + step]))
    runs, fits = [], []
    for C in budgets:
        curve = [here[C][w] for w in sorted(here[C])]
        near = around_best(curve, cfg.fit_sizes)
        fit = fit_isoflops([r["params"] for r in near], [r["val_loss"] for r in near])
        fit.update(flops=C, tokens=C / (6 * fit["params"]), seconds=round(sum(r["seconds"] for r in curve), 1),
                   fitted=[r["model"] for r in near])
        print(f"budget {C:.3g}: N* {fit['params'] / 1e6:.3f}M, D* {fit['tokens'] / 1e6:.2f}M tokens, loss "
              f"{fit['loss']:.4f}; its runs took {fit['seconds']:.0f} s" + ("  (minimum at an edge)" if fit["edge"] else ""),
              flush=True)
        runs += curve
        fits.append(fit)
    print(f"the grid took {(time.time() - t_start) / 60:.1f} min", flush=True)

    # A minimum at the edge of its curve is an extrapolated vertex: the power laws use the
    # interior ones when there are at least two.
    inner = [f for f in fits if not f["edge"]]
    used = inner if len(inner) >= 2 else fits
    if len(inner) < 2:
        print(f"WARNING: {len(fits) - len(inner)} of {len(fits)} minima lie at an edge of the sizes tried: the grid "
              f"does not bracket the optimum and the power laws below are not a measurement", flush=True)
    elif len(used) < len(fits):
        print(f"power laws from the {len(used)} budgets whose minimum lies inside their sizes", flush=True)
    if len(used) == 2:  # a line through two noisy minima: its slope swings from seed to seed
        print("WARNING: the power laws are lines through 2 minima, only as good as those (see docs/NOTES.md)", flush=True)
    A, alpha = fit_power_law([f["flops"] for f in used], [f["tokens"] for f in used])
    B, neg_beta = fit_power_law([f["flops"] for f in used], [f["loss"] for f in used])
    curv = [f["coeffs"][0] for f in fits if f["coeffs"][0] > 0]
    fit = {"alpha": alpha, "A": A, "B": B, "beta": -neg_beta, "curvature": float(np.mean(curv)) if curv else 0.0,
           "budgets_used": [f["flops"] for f in used], "bracketed": len(inner),
           "paper": {"alpha": PAPER_ALPHA, "A": PAPER_A}}
    print(f"D*(C) = {A:.4g}·C^{alpha:.4f} (paper: 0.29·C^0.53); L*(C) = {B:.4g}·C^-{-neg_beta:.4f}", flush=True)

    # ---- the extrapolation: 4x past the largest budget -------------------------------------
    Cx = cfg.extrapolate * budgets[-1]
    n_opt = Cx / (6 * A * Cx ** alpha)
    dx = min([w for w in dial_sizes if within_data(Cx, w)] or dial_sizes[-1:],
             key=lambda w: abs(math.log(n_params[w] / n_opt)))
    xrun = pretrain_run(cfg, vocab, dx, Cx, batch_for(cfg, Cx), f"C{Cx:.3g}_{dial_name(dx)}_extrapolated", cfg.threads)
    extra = {"flops": Cx, "optimal_params": n_opt, "params": xrun["params"], "model": xrun["model"],
             "tokens": xrun["tokens"], "predicted_loss": predicted_loss(fit, Cx, xrun["params"]),
             "predicted_loss_at_optimum": B * Cx ** neg_beta, "measured_loss": xrun["val_loss"],
             "seconds": xrun["seconds"]}
    extra["error"] = extra["measured_loss"] - extra["predicted_loss"]
    print(f"extrapolated to {Cx:.3g} FLOPs: N* {n_opt / 1e6:.3f}M -> {dial_name(dx)} ({xrun['params'] / 1e6:.3f}M): "
          f"predicted loss {extra['predicted_loss']:.4f}, measured {extra['measured_loss']:.4f} "
          f"({extra['error']:+.4f}), {xrun['seconds']:.0f} s", flush=True)

    # ---- bits per byte: the same losses in a tokenizer-free unit ---------------------------
    bpt = held_out_bytes_per_token(cfg, meta)
    for r in runs + [xrun]:
        r["bits_per_byte"] = r["val_loss"] / math.log(2) / bpt

    # ---- step 2: from the NLL of the correct answers to task accuracy ---------------------
    tasks = []
    for run in pick_evenly(runs + [xrun], cfg.sft_runs):
        t = sft_run(cfg, run)
        tasks.append(t)
        print(f"  SFT of {run['name']}: answer NLL {t['answer_nll']:.4f} -> accuracy {100 * t['accuracy']:.1f}% "
              f"({t['seconds']:.0f} s)", flush=True)
    sig = None
    if len(tasks) >= 2:
        x0, k, floor = fit_sigmoid([t["answer_nll"] for t in tasks], [t["accuracy"] for t in tasks])
        sig = {"x0": x0, "k": k, "floor": floor}
        print(f"accuracy ≈ {floor:.3f} + {1 - floor:.3f} / (1 + exp({k:.3f}·(NLL - {x0:.4f})))", flush=True)

    # ---- the default model for pretrain.py's time budget on this machine ------------------
    default = None
    speed_sizes = [w for w in speed_sizes if w in n_params]
    speed_names = [dial_name(w) for w in speed_sizes]
    if cfg.default_minutes > 0 and speed_names:
        load_before = os.getloadavg()[0]
        speeds = measure_speed(cfg, speed_names)
        seconds = cfg.default_minutes * 60
        candidates = []
        for w, name in zip(speed_sizes, speed_names):
            n = n_params[w]
            tok_s = float(np.median(speeds[name]))
            flops = 6 * n * tok_s * seconds
            n_star = flops / (6 * A * flops ** alpha)
            candidates.append({"model": name, "params": n, "tok_s": speeds[name], "tokens": tok_s * seconds,
                               "flops": flops, "optimal_params": n_star, "ratio": n / n_star,
                               "predicted_loss": predicted_loss(fit, flops, n)})
        best = min(candidates, key=lambda c: c["predicted_loss"])
        default = {"minutes": cfg.default_minutes, "flops": best["flops"], "optimal_params": best["optimal_params"],
                   "default_model": best["model"], "default_model_params": best["params"],
                   "tokens": best["tokens"], "ranks": cfg.speed_ranks, "candidates": candidates,
                   "load": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
        for c in candidates:
            print(f"  {c['model']:8s} N {c['params'] / 1e6:6.3f}M  {np.median(c['tok_s']):8,.0f} tok/s  "
                  f"{cfg.default_minutes:g} min = {c['flops']:.3g} FLOPs -> N* {c['optimal_params'] / 1e6:.3f}M "
                  f"(N/N* {c['ratio']:.2f}), predicted loss {c['predicted_loss']:.4f}", flush=True)
        print(f"default model for {cfg.default_minutes:g} min: {best['model']} ({best['params'] / 1e6:.3f}M "
              f"N, N/N* = {best['ratio']:.2f}) on {best['tokens'] / 1e6:.2f}M tokens", flush=True)

    # ---- the record and the figures --------------------------------------------------------
    record = {"config": asdict(cfg), "runs": runs + [xrun], "isoflops": fits, "fit": fit, "extrapolation": extra,
              "tasks": tasks, "sigmoid": sig, "default_budget": default, "bytes_per_token": bpt,
              "seconds": round(time.time() - t_start, 1), "cores": os.cpu_count()}
    atomic_write_json(os.path.join(cfg.out, "scaling.json"), record)
    plot_isoflops(runs, fits, extra, os.path.join(cfg.out, "isoflops.png"))
    plot_optimal(fits, fit, extra, default, os.path.join(cfg.out, "optimal_tokens.png"))
    if sig:
        plot_accuracy(tasks, sig["x0"], sig["k"], sig["floor"], os.path.join(cfg.out, "loss_to_accuracy.png"))
    print(f"wrote {cfg.out}/scaling.json and the figures in {(time.time() - t_start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
