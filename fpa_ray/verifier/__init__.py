"""Rule-based answer checking: extraction of final answers, graders, the verifier pool."""
