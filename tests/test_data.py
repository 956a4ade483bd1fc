import hashlib
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cvlab.core import data as D
from cvlab.core.augment import random_crop, random_hflip
from cvlab.core.errors import DataError
from cvlab.core.loader import TensorLoader


def load(root, **kw):
    kw.setdefault("expected_sizes", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return D.load_cifar100(root, **kw)


def test_loads_folder_and_archive_identically(cifar_folder, cifar_archive):
    a, b = load(cifar_folder), load(cifar_archive)
    assert a.train.images.shape == (200, 3, 32, 32) and a.train.images.dtype == torch.uint8
    assert a.test.images.shape == (100, 3, 32, 32)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.fine, b.test.fine)
    assert len(a.fine_names) == 100 and len(a.coarse_names) == 20
    assert b.source.endswith(D.ARCHIVE) and a.source.endswith(D.FOLDER)


def test_md5_mismatch_warns_but_loads(cifar_folder):
    with pytest.warns(UserWarning, match="MD5 differs"):
        data = D.load_cifar100(cifar_folder, expected_sizes=None)
    assert data.md5["train"] == "differs"


def test_expected_sizes_are_enforced(cifar_folder):
    with pytest.raises(DataError, match="expected 50000 train images, found 200"):
        load(cifar_folder, expected_sizes=D.SPLIT_SIZES, check_md5=False)


def corrupt_copy(src, tmp_path, name, transform):
    """A copy of the data root whose file `name` is replaced by transform(original entry or bytes)."""
    dst = tmp_path / D.FOLDER
    dst.mkdir()
    for f in ("meta", "train", "test"):
        (dst / f).write_bytes((src / D.FOLDER / f).read_bytes())
    blob = (dst / name).read_bytes()
    (dst / name).write_bytes(transform(blob))
    return tmp_path


def edit_entry(edit):
    def transform(blob):
        entry = pickle.loads(blob, encoding="latin1")
        edit(entry)
        return pickle.dumps(entry, protocol=2)
    return transform


def test_truncated_file_is_refused(cifar_folder, tmp_path):
    root = corrupt_copy(cifar_folder, tmp_path, "train", lambda b: b[: len(b) // 2])
    with pytest.raises(DataError, match=r"train: truncated or corrupt"):
        load(root, check_md5=False)


def test_wrong_shape_is_refused(cifar_folder, tmp_path):
    root = corrupt_copy(cifar_folder, tmp_path, "test", edit_entry(lambda e: e.update(data=e["data"][:, :3000])))
    with pytest.raises(DataError, match=r"test: 'data' must be a uint8 array of shape \(N, 3072\), found uint8 \(100, 3000\)"):
        load(root, check_md5=False)


def test_out_of_range_label_is_refused(cifar_folder, tmp_path):
    def edit(entry):
        entry["fine_labels"][7] = 100
    root = corrupt_copy(cifar_folder, tmp_path, "train", edit_entry(edit))
    with pytest.raises(DataError, match=r"train: 'fine_labels' holds 100, outside 0..99"):
        load(root, check_md5=False)


def test_missing_key_is_refused(cifar_folder, tmp_path):
    root = corrupt_copy(cifar_folder, tmp_path, "train", edit_entry(lambda e: e.pop("coarse_labels")))
    with pytest.raises(DataError, match="missing key"):
        load(root, check_md5=False)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this-must-not-run > /dev/null",))


def test_pickle_that_runs_code_is_refused(cifar_folder, tmp_path):
    root = corrupt_copy(cifar_folder, tmp_path, "meta",
                        lambda b: pickle.dumps({"fine_label_names": RunsCode()}, protocol=2))
    with pytest.raises(DataError, match=r"meta: not a CIFAR-100 pickle \(refusing to load (posix|os|nt)\.system\)"):
        load(root, check_md5=False)


def test_protocol_4_and_5_numpy_pickles_load():
    entry = {"data": np.arange(6, dtype=np.uint8)}
    for protocol in (2, 4, 5):
        out = D.safe_unpickle(pickle.dumps(entry, protocol=protocol), "x")
        assert np.array_equal(out["data"], entry["data"])


def test_missing_data_names_the_path_and_the_manual_fix(tmp_path):
    with pytest.raises(DataError) as err:
        D.load_cifar100(tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path) in message and D.ARCHIVE in message and "OBS" in message and "\n" not in message


def test_download_verifies_md5_before_renaming(cifar_archive, tmp_path):
    src = cifar_archive / D.ARCHIVE
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="wrong MD5"):
        D.download_archive(tmp_path / "bad", url=src.as_uri(), expected_md5="0" * 32)
    assert not (tmp_path / "bad" / D.ARCHIVE).exists()
    target = D.download_archive(tmp_path / "good", url=src.as_uri(), expected_md5=md5)
    assert target.read_bytes() == src.read_bytes()
    assert load(tmp_path / "good").train.images.shape[0] == 200


def test_failed_download_says_where_to_put_the_archive(tmp_path):
    missing = (tmp_path / "nowhere.tar.gz").as_uri()
    with pytest.raises(DataError, match="download of .* failed .* put cifar-100-python.tar.gz"):
        D.download_archive(tmp_path, url=missing)


def test_balanced_subset_keeps_original_order(cifar_folder):
    train = load(cifar_folder).train
    sub = D.subset(train, 100, balanced=True)
    assert len(sub) == 100
    assert torch.equal(torch.bincount(sub.fine, minlength=100), torch.ones(100, dtype=torch.long))
    index = D.balanced_indices(train.fine, 100)
    assert torch.all(index[1:] > index[:-1])
    assert torch.equal(D.subset(train, 50, balanced=False).fine, train.fine[:50])


def test_loader_without_shuffle_keeps_order_and_normalizes(cifar_folder):
    train = load(cifar_folder).train
    loader = TensorLoader(train, 64, torch.device("cpu"), "handout", shuffle=False)
    batches = list(loader)
    assert len(batches) == len(loader) == 4 and batches[-1][0].shape[0] == 200 - 3 * 64
    x, y = batches[0]
    assert torch.equal(y, train.fine[:64])
    expected = (train.images[:64].float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(x, expected)


def test_loader_shuffle_is_seeded_and_resumable(cifar_folder):
    train = load(cifar_folder).train
    a = TensorLoader(train, 50, torch.device("cpu"), "cifar100", shuffle=True, seed=3)
    b = TensorLoader(train, 50, torch.device("cpu"), "cifar100", shuffle=True, seed=3)
    first = [y for _, y in a]
    assert all(torch.equal(p, q) for p, q in zip(first, (y for _, y in b)))
    assert not torch.equal(torch.cat(first), train.fine)
    state = a.state_dict()
    second = [y for _, y in a]
    b.load_state_dict(state)
    assert all(torch.equal(p, q) for p, q in zip(second, (y for _, y in b)))


def test_random_crop_and_flip_are_seeded_and_shape_preserving():
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    crop = random_crop(x, 4, g())
    assert crop.shape == x.shape and crop.dtype == torch.uint8
    assert torch.equal(crop, random_crop(x, 4, g()))
    # Each crop is a window of the zero-padded image.
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(8):
        windows = padded[i].unfold(1, 32, 1).unfold(2, 32, 1)  # (3, 9, 9, 32, 32)
        assert any(torch.equal(windows[:, r, c], crop[i]) for r in range(9) for c in range(9))
    flip = random_hflip(x, g())
    for i in range(8):
        assert torch.equal(flip[i], x[i]) or torch.equal(flip[i], x[i].flip(2))
    assert not torch.equal(flip, x) and not torch.equal(flip, x.flip(3))


def test_synthetic_refuses_to_overwrite_existing_data(cifar_folder):
    with pytest.raises(DataError, match="already holds CIFAR-100"):
        D.write_synthetic(cifar_folder)


# ---------------------------------------------------------------------------- several users on one machine

def _shared_tmp(tmp_path, monkeypatch):
    """A stand-in for /tmp (mode 1777) as this process's temp dir."""
    import tempfile
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    return shared


def test_synthetic_data_is_cached_in_this_users_cache_not_the_shared_temp_dir(tmp_path, monkeypatch):
    shared = _shared_tmp(tmp_path, monkeypatch)
    monkeypatch.delenv("CVLAB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = D.synthetic_root(200, 100, 0)
    assert root.is_relative_to(tmp_path / "cache" / "cvlab") and D.locate(root) is not None
    assert list(shared.iterdir()) == []  # nothing in the shared place
    assert D.synthetic_root(200, 100, 0) == root  # cached


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to make another user's files")
def test_a_folder_another_user_made_in_the_shared_temp_dir_is_never_used(tmp_path, monkeypatch):
    """No home cache (a service account): the fallback folder in the temp dir is used only when it is this
    user's and private; one another user made first (with data of their choosing) is left alone."""
    shared = _shared_tmp(tmp_path, monkeypatch)
    (tmp_path / "no-home").write_text("")  # a file: no cache folder can be made under it
    monkeypatch.delenv("CVLAB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "no-home" / "cache"))
    planted = [shared / f"cvlab-{os.getuid()}", shared / "cvlab-synthetic-200-100-0"]  # today's name, the old one
    for folder in planted:
        D.write_synthetic(folder, n_train=200, n_test=100, seed=1)  # other images than seed 0's
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, 65534, 65534)
    root = D.synthetic_root(200, 100, 0)
    assert not any(root.is_relative_to(folder) for folder in planted), root
    assert torch.equal(load(root).train.images, load(D.write_synthetic(tmp_path / "own", 200, 100, 0)).train.images)


def _run_as_nobody(code: str, env: dict):
    """Run `code` with this Python as uid/gid 65534 (reading files as root may, so that this Python and the
    checkout under /root stay readable; writing as that user); None when that cannot be done here."""
    import shutil
    import subprocess
    import sys
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=+dac_read_search",
           "--ambient-caps=+dac_read_search", sys.executable, "-c", code]
    if subprocess.run([*cmd[:-2], "-c", "pass"], capture_output=True).returncode != 0:
        return None
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_a_second_user_gets_a_synthetic_cache_of_their_own(tmp_path, monkeypatch):
    """Two users on one machine: each has the synthetic data in a folder of their own (the second user's
    report failed with PermissionError when the first had made the shared one)."""
    import cvlab
    shared = _shared_tmp(tmp_path, monkeypatch)
    monkeypatch.delenv("CVLAB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "root-cache"))
    mine = D.synthetic_root(200, 100, 0)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent", "TMPDIR": str(shared),
           "PYTHONPATH": str(Path(cvlab.__file__).resolve().parents[1])}
    code = ("import os; from cvlab.core.data import synthetic_root, locate; r = synthetic_root(200, 100, 0); "
            "assert locate(r); print(r, os.stat(r).st_uid, oct(os.stat(r.parent.parent).st_mode & 0o777))")
    done = _run_as_nobody(code, env)
    if done is None:
        pytest.skip("needs root and setpriv to run as another user")
    assert done.returncode == 0, done.stderr[-2000:]
    theirs, uid, mode = done.stdout.split()
    assert Path(theirs) != mine and uid == "65534" and mode == "0o700", done.stdout


def test_an_archive_member_larger_than_any_cifar_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """A gzip bomb (a few KB that expand to gigabytes) took 1.58 GB of memory: each member's declared size is
    checked against the most a CIFAR-100 file holds before a byte of it is read."""
    import io
    import tarfile
    import tracemalloc
    monkeypatch.setattr(D, "MEMBER_LIMITS", {"meta": 1 << 16, "train": 1 << 20, "test": 1 << 20}, raising=False)
    archive = tmp_path / D.ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        for name, size in (("meta", 100), ("test", 1000), ("train", 8 << 20)):  # train: 8 MiB of zeros
            info = tarfile.TarInfo(f"{D.FOLDER}/{name}")
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    assert archive.stat().st_size < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"cifar-100-python/train holds 8,388,608 bytes, more than the 1,048,576"):
            load(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # the 8 MiB member was never read into memory
