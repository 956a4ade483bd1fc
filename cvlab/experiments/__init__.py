"""Experiments on top of the core: the improvement ladder (ablate), trained-model analysis, the speed bench."""
