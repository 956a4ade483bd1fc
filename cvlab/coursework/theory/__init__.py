"""Demonstrations behind the six theory answers, one module per question (mirroring answers/q1..q6):
each computes its evidence on the CPU in seconds (``quick=True``) or a few minutes (``quick=False``),
writes one figure to ``fig_dir`` and returns what it measured. ``results`` turns those measurements into
docs/results/theory.json and renders answers/ from answers/templates/ with them.

    from cvlab.coursework import theory
    out = theory.optimizer_demo("figures")        # {"figure": Path, "table": DataFrame, ...}
    data = theory.load_demo_data("", synthetic=True)
    theory.residual_demo("figures", data)

    common.py           one CPU thread, figures, the demo data (DemoData, load_demo_data)
    q1_batch_size.py    gradient noise vs batch size (per-example gradients); the handout net trained at several batches
    q2_epoch.py         one epoch on cvlab's TensorLoader, with and without shuffling
    q3_overfitting.py   the baseline run's gap; a small CNN with and without regularization
    q4_resnet.py        plain vs residual: gradients at initialisation, a short training run
    q5_activations.py   activations, derivatives, saturation, a deep MLP and its mean-field prediction
    q6_optimizers.py    torch.optim on three 2-D surfaces; five optimizers on the handout net, each at its best lr
    results.py          the numbers, docs/results/theory.json, rendering of the answer templates

Figure text is Chinese where matplotlib finds a CJK font and English otherwise (``report.plots.zh``); a
figure made from synthetic data says SYNTHETIC on its face. Everything runs single-threaded with fixed seeds, so the numbers repeat exactly on the
same machine and torch version.
"""
from ...core.errors import RunDirError
from .common import (CIFAR_TRAIN_IMAGES, CPU, HANDOUT_BATCH_SIZE, HANDOUT_EPOCHS, DemoData, find_data_root,
                     load_demo_data, single_thread, steps_per_epoch)
from .q1_batch_size import NoiseNet, batch_size_demo, batch_training_demo, minibatch_noise, per_example_gradients
from .q2_epoch import batchmates_kept, epoch_demo
from .q3_overfitting import MISSING_BASELINE, REGULARIZERS, overfitting_from_run, regularization_demo, run_gap, small_cnn
from .q4_resnet import DEGRADATION_MODELS, DepthBlock, DepthNet, conv_gradient_norms, residual_demo, train_steps
from .q5_activations import ACTIVATIONS, activation_demo, activation_table, depth_gradients, mean_field
from .q6_optimizers import (NETWORK_OPTIMIZERS, OPTIMIZERS, SURFACES, lr_grid, network_demo, optimize, optimizer_demo,
                            rosenbrock)

__all__ = [
    "RunDirError", "CIFAR_TRAIN_IMAGES", "CPU", "HANDOUT_BATCH_SIZE", "HANDOUT_EPOCHS", "DemoData", "find_data_root",
    "load_demo_data", "single_thread", "steps_per_epoch",
    "NoiseNet", "batch_size_demo", "batch_training_demo", "minibatch_noise", "per_example_gradients",
    "batchmates_kept", "epoch_demo",
    "MISSING_BASELINE", "REGULARIZERS", "overfitting_from_run", "regularization_demo", "run_gap", "small_cnn",
    "DEGRADATION_MODELS", "DepthBlock", "DepthNet", "conv_gradient_norms", "residual_demo", "train_steps",
    "ACTIVATIONS", "activation_demo", "activation_table", "depth_gradients", "mean_field",
    "NETWORK_OPTIMIZERS", "OPTIMIZERS", "SURFACES", "lr_grid", "network_demo", "optimize", "optimizer_demo", "rosenbrock",
]
