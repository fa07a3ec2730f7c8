"""SFT warm start of the tiny policy on the synthetic task, cached by its settings.

Plain torch on CPU (no Ray): supervised learning on the solution tokens only, AdamW with a
linear warm-up and cosine decay over a fixed number of steps, so the result depends on the
settings and the seed, not on how fast the machine is. The finished policy lands in
<cache>/tiny-policy/<key>/ with `warmstart.json` (settings, loss, held-out accuracy, seconds);
a later call with the same settings returns it without training.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import torch
import transformers
from filelock import FileLock
from pydantic import BaseModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from fpa_ray.config import SamplerConfig, SFTConfig, SyntheticTaskConfig, TinyModelConfig
from fpa_ray.data.synthetic import Problem, generate
from fpa_ray.sampler.engines import HFEngine, SampleRequest, sample_seed
from fpa_ray.tiny import build_tiny_policy
from fpa_ray.verifier.extract import last_boxed

# Bump when the warm-start procedure changes, so that old cache entries are not reused.
WARMSTART_VERSION = 2


class WarmStartResult(BaseModel):
    path: Path
    cached: bool
    seconds: float
    final_loss: float
    pass_at_1: float
    greedy_accuracy: float


def default_cache_dir() -> Path:
    return Path(os.environ.get("FPA_RAY_CACHE", Path.home() / ".cache" / "fpa_ray"))


def cache_key(model: TinyModelConfig, sft: SFTConfig, task: SyntheticTaskConfig, seed: int) -> str:
    """A digest of everything that determines the warm-started weights."""
    settings = {
        "version": WARMSTART_VERSION,
        "model": model.model_dump(),
        "sft": sft.model_dump(),
        "task": task.model_dump(),
        "seed": seed,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def chat_prompt(tokenizer, problem: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": problem}], add_generation_prompt=True, tokenize=False)


def _encode(tokenizer, problems: list[Problem]) -> list[tuple[list[int], int]]:
    """(prompt + solution + end-of-turn ids, prompt length) per problem."""
    encoded = []
    for problem in problems:
        prompt = tokenizer(chat_prompt(tokenizer, problem.prompt), add_special_tokens=False)["input_ids"]
        answer = tokenizer(problem.solution + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        encoded.append((prompt + answer, len(prompt)))
    return encoded


def _batch(rows: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (ids, prompt_len) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        labels[i, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
    return input_ids, attention, labels


def _lr_factor(step: int, sft: SFTConfig) -> float:
    if step < sft.warmup_steps:
        return (step + 1) / sft.warmup_steps
    progress = (step - sft.warmup_steps) / max(1, sft.steps - sft.warmup_steps)
    return sft.min_lr_ratio + (1 - sft.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_sft(model_dir: Path, problems: list[Problem], sft: SFTConfig, seed: int, log=print) -> float:
    """Supervised training in place on `model_dir`; returns the mean loss of the last 5% of steps."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).train()
    rows = _encode(tokenizer, problems)
    optimizer = torch.optim.AdamW(model.parameters(), lr=sft.lr, betas=(0.9, 0.98), weight_decay=sft.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, sft))
    rng = random.Random(seed)
    torch.manual_seed(seed)
    losses, tokens, start = [], 0, time.perf_counter()
    report_every = max(1, sft.steps // 10)
    for step in range(sft.steps):
        input_ids, attention, labels = _batch(rng.sample(rows, min(sft.batch_size, len(rows))), tokenizer.pad_token_id)
        # Right padding under a causal mask: no real token sees a pad, and pads carry no label, so
        # the attention mask can be left out (measured ~15% faster on CPU).
        loss = model(input_ids=input_ids, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), sft.grad_clip)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        tokens += int(attention.sum())
        if (step + 1) % report_every == 0 or step + 1 == sft.steps:
            elapsed = time.perf_counter() - start
            eta = elapsed / (step + 1) * (sft.steps - step - 1)
            recent = sum(losses[-report_every:]) / len(losses[-report_every:])
            log(f"  sft step {step + 1}/{sft.steps}  loss {recent:.4f}  {tokens / elapsed:,.0f} tokens/s  eta {eta:.0f}s")
    model.save_pretrained(model_dir)
    tail = losses[-max(1, sft.steps // 20) :]
    return sum(tail) / len(tail)


def synthetic_accuracy(
    model_dir: Path, problems: list[Problem], samples: int, temperature: float, max_new_tokens: int, seed: int = 0
) -> float:
    """Mean over problems of the share of `samples` responses whose boxed answer equals the gold answer."""
    config = SamplerConfig(engine="hf", n=samples, temperature=temperature, max_new_tokens=max_new_tokens, dtype="float32")
    engine = HFEngine(model_dir, config)
    requests = [
        SampleRequest(engine.tokenizer(chat_prompt(engine.tokenizer, p.prompt), add_special_tokens=False)["input_ids"], sample_seed(seed, p.id, i))
        for p in problems
        for i in range(samples)
    ]
    completions = engine.generate(requests)
    hits = [(last_boxed(c.text) or "").strip() == problems[k // samples].answer for k, c in enumerate(completions)]
    return sum(hits) / len(hits)


def warm_start(
    model: TinyModelConfig,
    sft: SFTConfig,
    task: SyntheticTaskConfig,
    seed: int = 0,
    cache_dir: Path | None = None,
    log=print,
) -> WarmStartResult:
    """Build and SFT the tiny policy, or return the cached one with the same settings."""
    root = (cache_dir or default_cache_dir()) / "tiny-policy"
    key = cache_key(model, sft, task, seed)
    final = root / key
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{key}.lock")):  # two runs asking at once train once
        if (final / "warmstart.json").is_file():
            result = WarmStartResult.model_validate_json((final / "warmstart.json").read_text())
            return result.model_copy(update={"path": final, "cached": True})
        # The warm start holds, and is charged for, the whole machine; a `ray job submit` driver would
        # otherwise train on one thread (Ray's job supervisor passes it OMP_NUM_THREADS=1).
        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or threads)
        try:
            return _train_and_save(root, key, final, model, sft, task, seed, log)
        finally:
            torch.set_num_threads(threads)


def _train_and_save(root: Path, key: str, final: Path, model: TinyModelConfig, sft: SFTConfig, task: SyntheticTaskConfig, seed: int,
                    log) -> WarmStartResult:
    """Build, SFT and evaluate the tiny policy in `<key>.partial`, then move it to `final`."""
    start = time.perf_counter()
    work = root / f"{key}.partial"
    shutil.rmtree(work, ignore_errors=True)
    log(f"Building the tiny policy ({key}) and warm-starting it with SFT: {sft.steps} steps of {sft.batch_size}")
    transformers.utils.logging.disable_progress_bar()
    train = generate(task, "train", sft.train_problems, seed=seed)
    build_tiny_policy(work, model, (f"{p.prompt}\n{p.solution}" for p in train[: sft.tokenizer_problems]), seed=seed)
    final_loss = train_sft(work, train, sft, seed, log)
    test = generate(task, "test", sft.eval_problems, seed=seed)
    log(f"  evaluating on {len(test)} held-out problems ({sft.eval_samples} samples at T={sft.eval_temperature}, and greedy)")
    pass_at_1 = synthetic_accuracy(work, test, sft.eval_samples, sft.eval_temperature, sft.max_new_tokens, seed)
    greedy = synthetic_accuracy(work, test, 1, 0.0, sft.max_new_tokens, seed)
    result = WarmStartResult(
        path=final,
        cached=False,
        seconds=time.perf_counter() - start,
        final_loss=final_loss,
        pass_at_1=pass_at_1,
        greedy_accuracy=greedy,
    )
    (work / "warmstart.json").write_text(result.model_dump_json(indent=2))
    (work / "warmstart_settings.json").write_text(
        json.dumps({"model": model.model_dump(), "sft": sft.model_dump(), "task": task.model_dump(), "seed": seed}, indent=2)
    )
    work.rename(final)
    log(f"  warm start done in {result.seconds:.0f}s: pass@1 {pass_at_1:.1%} at T={sft.eval_temperature}, greedy {greedy:.1%}")
    return result
