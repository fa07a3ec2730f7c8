"""The learner: model forward passes reduced to objective inputs, and the training step."""
