"""Pipelines: the offline FPA rounds and (later) the online GRPO baseline."""
