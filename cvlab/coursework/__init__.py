"""Evidence for the coursework report: the handout-baseline checks and the theory demonstrations."""
