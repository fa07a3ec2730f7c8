"""How the learner's new weights reach the live sampler engines (transports.py)."""
