"""fpa_ray: Future Policy Approximation offline RL on Ray."""
