"""Prompts and tasks: the synthetic arithmetic task, benchmark prompt sources, prompt templates."""
