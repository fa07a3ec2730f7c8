"""Overrides that shrink the embedded default to a run of a minute or two, shared by pipeline tests."""

SMALL = [  # an easier task than the default's and a short warm start (~50 s): ~7% pass@1, so some groups mix right and wrong
    "policy.sft.steps=400", "policy.sft.batch_size=32", "policy.sft.warmup_steps=20", "policy.sft.train_problems=2000",
    "policy.sft.tokenizer_problems=1000", "policy.sft.eval_problems=20", "policy.sft.eval_samples=1", "policy.sft.max_new_tokens=48",
    "data.synthetic={min_steps: 1, max_steps: 2, operand_max: 30, multiplier_max: 5}",
    "data.train.limit=64", "data.eval=[{name: synthetic, split: test, limit: 16}]", "sampler.n=8", "sampler.shard_size=16",
    "sampler.max_new_tokens=48", "sampler.dtype=float32", "evaluation.samples=2", "evaluation.max_new_tokens=48",
    "learner.global_batch_size=4", "learner.micro_batch_size=2", "learner.max_steps=4", "verifier.num_actors=1",
]

GRPO_SMALL = [  # on top of SMALL (the same warm start: one SFT for every pipeline test)
    "data.train.limit=32", "sampler.n=8", "grpo.prompts_per_step=8", "grpo.steps=3", "grpo.eval_every=2",
    "learner.global_batch_size=32", "learner.micro_batch_size=8", "learner.checkpoint_every=2", "learner.lr=1e-4",
]


def overrides(tmp_path, name="small", extra=()):
    return [f"name={name}", f"output_dir={tmp_path / 'runs'}", *SMALL, *extra]
