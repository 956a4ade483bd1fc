"""The fast path (TensorLoader + engine, with its switches) computes what the handout's loop computes.

Reference: the handout's loop as written (torchvision-style Dataset with PIL ToTensor + Normalize, a
DataLoader with 0 workers, plain Adam). Same seed, shuffle off, augmentation off, fp32, CPU.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cvlab.experiments.handout import handout_loader, handout_test, handout_train
from cvlab.core.config import make_config
from cvlab.core.data import in_memory_data
from cvlab.core.engine import build_trainer, evaluate, seed_everything, train_one_epoch, warm_up
from cvlab.core.models import build_model
from cvlab.core.optim import build_optimizer, optimizer_impl_kwargs

N_TRAIN, N_TEST, BATCH, EPOCHS, LR = 24, 16, 8, 2, 1e-4



@pytest.fixture(scope="module")
def data():
    return in_memory_data(N_TRAIN, N_TEST, seed=3)


def config(**changes):
    values = dict(batch_size=BATCH, eval_batch_size=BATCH, lr=LR, epochs=EPOCHS, device="cpu", progress=False,
                  seed=7)
    values.update(changes)
    return make_config("handout", **values)  # shuffle off, no augmentation, handout normalization, Adam


def reference_run(data, seed: int = 7):
    """The handout's loop: per-epoch mean training loss, test accuracy (%) and mean test loss, final weights."""
    seed_everything(seed)
    model = build_model("handout_resnet18")
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    train_loader, test_loader = handout_loader(data.train, BATCH), handout_loader(data.test, BATCH)
    means = []
    for epoch in range(EPOCHS):
        losses = handout_train(model, optimizer, train_loader, torch.device("cpu"), epoch)
        sizes = [min(BATCH, N_TRAIN - i * BATCH) for i in range(len(losses))]
        means.append(sum(float(l) * n for l, n in zip(losses, sizes)) / N_TRAIN)
    accuracy = handout_test(model, test_loader, torch.device("cpu"))
    with torch.no_grad():  # the test loss the handout asks students to plot, from the same loader
        test_loss = sum(F.cross_entropy(model(x), y, reduction="sum").item() for x, y in test_loader) / N_TEST
    return means, (accuracy, test_loss), model.state_dict()


def fast_run(data, cfg, t=None):
    t = t or build_trainer(cfg, data)
    means = [train_one_epoch(t.train_step, t.train_loader)["loss"] for _ in range(EPOCHS)]
    test = evaluate(t.eval_step, t.test_loader)
    return means, (100 * test["acc"], test["loss"]), t.model.state_dict()


@pytest.fixture(scope="module")
def reference(data):
    torch.set_num_threads(1)
    return reference_run(data)


def assert_same_weights(a: dict, b: dict, rtol: float, atol: float) -> None:
    for name in a:
        torch.testing.assert_close(b[name].contiguous(), a[name].contiguous(), rtol=rtol, atol=atol, msg=name)


def update_difference(ref: dict, other: dict, seed: int = 7) -> float:
    """|| (w_other - w0) - (w_ref - w0) || / || w_ref - w0 || over all trainable parameters.

    Elementwise comparison is meaningless once kernels round differently: Adam moves every weight by
    about lr per step whatever the size of its gradient, and the conv biases in front of a BN (and many
    weights of these scale-invariant layers) have gradients at rounding-noise level.
    """
    seed_everything(seed)
    w0 = build_model("handout_resnet18").state_dict()
    names = [k for k in ref if ref[k].is_floating_point() and "running" not in k]
    d_ref = torch.cat([(ref[k] - w0[k]).flatten() for k in names])
    d_other = torch.cat([(other[k].contiguous() - w0[k]).flatten() for k in names])
    return float((d_other - d_ref).norm() / d_ref.norm())


def test_fast_path_equals_handout_loop(data, reference):
    """Same kernels, same order: TensorLoader + engine reproduce the handout's loop to the last bit."""
    ref_losses, (ref_acc, ref_test_loss), ref_weights = reference
    losses, (acc, test_loss), weights = fast_run(data, config(optimizer_impl="forloop"))
    assert losses == pytest.approx(ref_losses, rel=1e-6)
    assert ref_losses[1] != pytest.approx(ref_losses[0], rel=1e-3)  # the trajectory moves, so equality means something
    assert acc == pytest.approx(ref_acc) and test_loss == pytest.approx(ref_test_loss, rel=1e-6)
    assert_same_weights(ref_weights, weights, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("changes, exact", [(dict(optimizer_impl="foreach"), True),
                                            (dict(optimizer_impl="fused"), False),
                                            (dict(channels_last=True, optimizer_impl="fused"), False)],
                         ids=["foreach", "fused", "channels_last+fused"])
def test_fast_path_switches_keep_the_trajectory(data, reference, changes, exact):
    """Other kernels round differently; the loss trajectory agrees to float tolerance."""
    ref_losses, (_, ref_test_loss), ref_weights = reference
    losses, (_, test_loss), weights = fast_run(data, config(**changes))
    assert losses == pytest.approx(ref_losses, rel=1e-6 if exact else 2e-3)
    assert test_loss == pytest.approx(ref_test_loss, rel=1e-6 if exact else 5e-3)
    assert update_difference(ref_weights, weights) < (1e-6 if exact else 0.15)  # unrelated updates give ~1.4


def test_warm_up_leaves_the_run_unchanged(data, reference):
    """The compile warm-up trains and evaluates for real, then restores everything it touched."""
    cfg = config(optimizer_impl="forloop")
    t = build_trainer(cfg, data)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    rng = torch.get_rng_state()
    assert warm_up(t) > 0
    assert_same_weights(before, t.model.state_dict(), rtol=0, atol=0)
    assert not t.optimizer.state  # no Adam moments left behind
    assert torch.equal(torch.get_rng_state(), rng)
    losses, (acc, test_loss), weights = fast_run(data, cfg, t)  # and the run after it is the handout loop's
    assert losses == pytest.approx(reference[0], rel=1e-6) and test_loss == pytest.approx(reference[1][1], rel=1e-6)
    assert_same_weights(reference[2], weights, rtol=1e-6, atol=1e-7)


def test_optimizer_impl_flags():
    from cvlab.core.device import probe
    cpu = [torch.zeros(2, requires_grad=True)]
    fused = probe(torch.device("cpu")).fused  # fused CPU kernels came with torch 2.4
    assert optimizer_impl_kwargs("auto", cpu) == {}  # torch's default on the CPU
    assert optimizer_impl_kwargs("fused", cpu) == ({"fused": True} if "adam" in fused else {})
    assert optimizer_impl_kwargs("forloop", cpu) == {"foreach": False}
    opt = build_optimizer(config(optimizer_impl="fused", optimizer="sgd", lr=0.1), torch.nn.Linear(2, 2))
    assert bool(opt.param_groups[0].get("fused")) == ("sgd" in fused)


def test_bad_optimizer_impl_is_a_config_error():
    from cvlab.core.errors import ConfigError
    with pytest.raises(ConfigError, match="optimizer_impl"):
        config(optimizer_impl="turbo")


def test_warm_up_covers_every_batch_shape(data):
    from cvlab.core.loader import TensorLoader
    from cvlab.core.engine import _shape_probe
    loader = TensorLoader(data.train.take(torch.arange(20)), 8, torch.device("cpu"), "handout")
    probe = TensorLoader(_shape_probe(loader), 8, torch.device("cpu"), "handout")
    assert [y.shape[0] for _, y in probe] == [8, 4] == sorted({y.shape[0] for _, y in loader}, reverse=True)
