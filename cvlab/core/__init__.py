"""The core: config, data, augmentation, models, the training engine and run directories.

Knows nothing of notebooks, reports or the command line; everything else is built on it.
"""
