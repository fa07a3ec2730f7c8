"""The sampler pool: engines (vLLM, Hugging Face) that turn prompts into sampled responses."""
