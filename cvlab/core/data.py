"""CIFAR-100 on disk -> uint8 tensors: find, download, verify, safely unpickle, validate,
take subsets and generate synthetic data in the official format (core/loader.py serves the batches).

The official "python version" is three pickles in `cifar-100-python/`: `meta`, `train`,
`test`. A data root holds either that folder or the archive `cifar-100-python.tar.gz`.
"""
from __future__ import annotations

import codecs
import zlib
import hashlib
import io
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError, cause

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
ARCHIVE = "cifar-100-python.tar.gz"
FOLDER = "cifar-100-python"
OFFICIAL_MD5 = {
    ARCHIVE: "eb9058c3a382ffc7106e4002c42a8d85",
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}
SPLIT_SIZES = {"train": 50000, "test": 10000}
# The most bytes a data file may hold, checked before it is read: the official files are 1.5 KB (meta), 155 MB
# (train) and 31 MB (test); a crafted archive's member (e.g. a gzip bomb) is refused instead of filling memory.
MEMBER_LIMITS = {"meta": 1 << 16, **{s: int(n * 3072 * 1.1) + (1 << 20) for s, n in SPLIT_SIZES.items()}}
NUM_FINE, NUM_COARSE = 100, 20

# Per-channel statistics of the CIFAR-100 training set (R, G, B), as published.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
# The handout's constants: MNIST's single-channel mean/std, broadcast over RGB.
HANDOUT_MEAN = (0.1307,)
HANDOUT_STD = (0.3081,)
NORMALIZATION = {"cifar100": (CIFAR100_MEAN, CIFAR100_STD), "handout": (HANDOUT_MEAN, HANDOUT_STD)}

MANUAL_HINT = (
    "download {url} elsewhere and put {archive} (or the extracted {folder}/ folder) in {root}; "
    "on ModelArts copy it from OBS first, e.g. mox.file.copy_parallel('obs://<bucket>/cifar100', '{root}')"
)


# ---------------------------------------------------------------------------- safe unpickling

def _numpy_reconstructors():
    try:
        from numpy._core.multiarray import _reconstruct, scalar
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
        from numpy.core.numeric import _frombuffer
    return _reconstruct, scalar, _frombuffer


def _allowed_globals() -> dict[tuple[str, str], object]:
    reconstruct, scalar, frombuffer = _numpy_reconstructors()
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how Python 3 writes bytes in protocol 2
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = frombuffer  # protocol 5 arrays
    return allowed


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a callable outside the allow-list."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only dicts, lists, strings, bytes, numbers and numpy arrays: a pickle that
    names any other callable (os.system, builtins.eval, ...) is refused before it runs."""

    _allowed = None

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _allowed_globals()
        try:
            return _RestrictedUnpickler._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refusing to load {module}.{name}") from None


def safe_unpickle(data: bytes, source: str) -> object:
    """Unpickle CIFAR-format bytes; `source` names the file in error messages."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafePickleError as exc:
        raise DataError(f"{source}: not a CIFAR-100 pickle ({exc}); the file is unsafe or not this data set") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise DataError(f"{source}: truncated or corrupt pickle ({cause(exc)}); "
                        "delete it and download the data set again") from None


# ---------------------------------------------------------------------------- validation

@dataclass
class Split:
    """One split in memory: uint8 images (N, 3, 32, 32), int64 fine and coarse labels."""

    images: torch.Tensor
    fine: torch.Tensor
    coarse: torch.Tensor

    def __len__(self) -> int:
        return int(self.fine.shape[0])

    def take(self, index: torch.Tensor) -> "Split":
        return Split(self.images[index], self.fine[index], self.coarse[index])


@dataclass
class Cifar100:
    """The data set: both splits, class names, and where it came from."""

    train: Split
    test: Split
    fine_names: list[str]
    coarse_names: list[str]
    source: str  # path of the folder or archive it was read from
    md5: dict[str, str]  # file -> "official", "differs" or "not checked"
    synthetic: bool = False
    val: Split | None = None  # held out from the training set by `split_validation` (None = no validation split)


def _split_from_entry(entry: object, split: str, source: str, expected: int | None) -> Split:
    if not isinstance(entry, dict):
        raise DataError(f"{source}: expected a dict, found {type(entry).__name__}")
    missing = [k for k in ("data", "fine_labels", "coarse_labels") if k not in entry]
    if missing:
        raise DataError(f"{source}: missing key(s) {', '.join(missing)}")
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{source}: 'data' must be a uint8 array of shape (N, 3072), found {dtype} {shape}")
    n = data.shape[0]
    if expected is not None and n != expected:
        raise DataError(f"{source}: expected {expected} {split} images, found {n}")
    labels = {}
    for key, classes in (("fine_labels", NUM_FINE), ("coarse_labels", NUM_COARSE)):
        try:
            raw = np.asarray(entry[key])
            if raw.dtype.kind == "f":  # e.g. 3.5 would otherwise be truncated to 3 without a word
                fractional = raw[~np.isfinite(raw) | (raw != np.round(raw))]
                if fractional.size:
                    raise DataError(f"{source}: '{key}' holds {fractional.flat[0]}, not an integer class index")
            elif raw.dtype.kind not in "iu":
                raise ValueError(raw.dtype)
            values = raw.astype(np.int64)
        except (TypeError, ValueError):
            raise DataError(f"{source}: '{key}' must be a list of integers") from None
        if values.shape != (n,):
            raise DataError(f"{source}: '{key}' has {values.size} entries for {n} images")
        bad = values[(values < 0) | (values >= classes)]
        if bad.size:
            raise DataError(f"{source}: '{key}' holds {bad[0]}, outside 0..{classes - 1}")
        labels[key] = torch.from_numpy(values)
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(n, 3, 32, 32))
    return Split(images, labels["fine_labels"], labels["coarse_labels"])


def _names_from_meta(meta: object, source: str) -> tuple[list[str], list[str]]:
    if not isinstance(meta, dict) or "fine_label_names" not in meta or "coarse_label_names" not in meta:
        raise DataError(f"{source}: expected a dict with fine_label_names and coarse_label_names")
    fine, coarse = list(meta["fine_label_names"]), list(meta["coarse_label_names"])
    if len(fine) != NUM_FINE or len(coarse) != NUM_COARSE:
        raise DataError(f"{source}: expected {NUM_FINE} fine and {NUM_COARSE} coarse names, "
                        f"found {len(fine)} and {len(coarse)}")
    return [str(x) for x in fine], [str(x) for x in coarse]


# ---------------------------------------------------------------------------- reading

def locate(root: str | Path) -> tuple[str, Path] | None:
    """("folder", path) or ("archive", path) for the data under `root`, or None."""
    root = Path(root)
    folder = root / FOLDER
    if folder.is_dir() and all((folder / f).is_file() for f in ("meta", "train", "test")):
        return "folder", folder
    if root.name == FOLDER and all((root / f).is_file() for f in ("meta", "train", "test")):
        return "folder", root
    if (root / ARCHIVE).is_file():
        return "archive", root / ARCHIVE
    return None


def _read_members(kind: str, path: Path, names: tuple[str, ...] = ("meta", "train", "test")) -> dict[str, bytes]:
    if kind == "folder":
        for n in names:
            _check_member_size(path / n, n, (path / n).stat().st_size if (path / n).is_file() else 0)
        return {n: (path / n).read_bytes() for n in names}
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in names and member.name.startswith(FOLDER + "/"):
                    _check_member_size(path, member.name, member.size)
                    out[base] = tar.extractfile(member).read()
            while tar.fileobj.read(1 << 20):  # to the end of the gzip stream, where its CRC is checked:
                pass                          # tarfile stops early, so a flipped byte would go unnoticed
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read archive ({exc}); delete it and download again") from None
    missing = [n for n in names if n not in out]
    if missing:
        raise DataError(f"{path}: archive lacks {', '.join(FOLDER + '/' + m for m in missing)}")
    return out


def _check_member_size(where: Path, name: str, size: int) -> None:
    """One-line DataError when data file `name` declares more bytes than any CIFAR-100 file holds."""
    limit = MEMBER_LIMITS.get(name.rsplit("/", 1)[-1])
    if limit is not None and size > limit:
        raise DataError(f"{where}: {name} holds {size:,} bytes, more than the {limit:,} a CIFAR-100 file can; "
                        "this is not the CIFAR-100 data set (delete it and download again)")


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def check_data_root(root: Path) -> None:
    """Refuse (one line) a data root that is a file, or lies under one: it can hold no data set."""
    for folder in (root, *root.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "is a file" if folder == root else f"lies under {folder}, which is a file"
                raise DataError(f"data root {root} {what}, not a folder; give the folder that holds {FOLDER}/ "
                                f"or {ARCHIVE}")
            return


def load_cifar100(root: str | Path, download: bool = False, check_md5: bool = True,
                  expected_sizes: dict[str, int] | None = SPLIT_SIZES) -> Cifar100:
    """Read CIFAR-100 from `root` (folder or archive), downloading it first when allowed.

    MD5 mismatches only warn: copies re-packed from other sources are structurally valid.
    """
    root = Path(root)
    check_data_root(root)
    found = locate(root)
    if found is None:
        if not download:
            raise DataError(f"no CIFAR-100 at {root.resolve()} (looked for {FOLDER}/ and {ARCHIVE}); "
                            + MANUAL_HINT.format(url=URL, archive=ARCHIVE, folder=FOLDER, root=root.resolve()))
        download_archive(root)
        found = locate(root)
        assert found is not None
    kind, path = found
    raw = _read_members(kind, path)
    md5 = {}
    if check_md5:
        if kind == "archive":
            md5[ARCHIVE] = "official" if file_md5(path) == OFFICIAL_MD5[ARCHIVE] else "differs"
        for name, blob in raw.items():
            md5[name] = "official" if md5_of(blob) == OFFICIAL_MD5[name] else "differs"
    source = str(path)
    fine_names, coarse_names = _names_from_meta(safe_unpickle(raw["meta"], f"{source}:meta"), f"{source}:meta")
    sizes = expected_sizes or {}
    splits = {s: _split_from_entry(safe_unpickle(raw[s], f"{source}:{s}"), s, f"{source}:{s}", sizes.get(s))
              for s in ("train", "test")}
    if any(v == "differs" for v in md5.values()):  # said only now that the structure checks have passed
        warnings.warn(f"{path}: MD5 differs from the official release for "
                      f"{', '.join(k for k, v in md5.items() if v == 'differs')}; structure checks passed, "
                      "so the data is used", stacklevel=2)
    return Cifar100(splits["train"], splits["test"], fine_names, coarse_names, source,
                    md5 or {k: "not checked" for k in raw})


def read_class_names(root: str | Path) -> tuple[list[str], list[str]]:
    """(fine names, superclass names) from the data root's `meta` alone: no images are read or downloaded."""
    found = locate(root)
    if found is None:
        raise DataError(f"no CIFAR-100 at {Path(root).resolve()} to read the class names from "
                        f"(looked for {FOLDER}/ and {ARCHIVE}); pass --data-root DIR")
    kind, path = found
    source = f"{path}:meta"
    return _names_from_meta(safe_unpickle(_read_members(kind, path, ("meta",))["meta"], source), source)


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------- download

def _partial_note(part: Path) -> str:
    """What the error says about the partial download: kept when it holds bytes, otherwise removed."""
    if part.is_file() and part.stat().st_size > 0:
        return f"partial file kept at {part} and resumed next time; "
    part.unlink(missing_ok=True)
    return ""


def download_archive(root: str | Path, url: str = URL, expected_md5: str | None = OFFICIAL_MD5[ARCHIVE],
                     timeout: float = 30.0) -> Path:
    """Fetch the archive into `root` with a progress bar, resuming a partial `.part` file.

    The archive is renamed into place only after its MD5 matches, so an interrupted or
    corrupt download never looks like a valid data set.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    check_data_root(root)
    target, part = root / ARCHIVE, root / (ARCHIVE + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            root.mkdir(parents=True, exist_ok=True)  # only once the server answers: a failed start creates nothing
            resumed = have and response.status == 206
            total = int(response.headers.get("Content-Length") or 0) + (have if resumed else 0)
            with open(part, "ab" if resumed else "wb") as out, tqdm(
                    total=total or None, initial=have if resumed else 0, unit="B", unit_scale=True,
                    desc=f"downloading {ARCHIVE}") as bar:
                for block in iter(lambda: response.read(1 << 16), b""):
                    out.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as exc:
        if not (exc.code == 416 and have):  # 416: the .part file is already complete; verify it below
            raise DataError(f"download of {url} failed (HTTP {exc.code}); {_partial_note(part)}"
                            + MANUAL_HINT.format(url=URL, archive=ARCHIVE, folder=FOLDER, root=root.resolve())) from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(f"download of {url} failed ({reason}); {_partial_note(part)}"
                        + MANUAL_HINT.format(url=URL, archive=ARCHIVE, folder=FOLDER, root=root.resolve())) from None
    if expected_md5 and file_md5(part) != expected_md5:
        bad = part.with_suffix(".bad")
        part.replace(bad)
        raise DataError(f"downloaded archive has the wrong MD5 (moved to {bad}); run the command again, "
                        "or " + MANUAL_HINT.format(url=URL, archive=ARCHIVE, folder=FOLDER, root=root.resolve()))
    part.replace(target)
    return target


# ---------------------------------------------------------------------------- synthetic data

def synthetic_split(n: int, seed: int, prototypes: np.ndarray) -> dict:
    """`n` images in the official entry format: each class a fixed low-frequency colour
    pattern, shifted and noised per image, so a small network can learn it in a few epochs."""
    rng = np.random.RandomState(seed)
    fine = np.arange(n) % NUM_FINE
    rng.shuffle(fine)
    images = prototypes[fine].astype(np.float32)
    shifts = rng.randint(-2, 3, size=(n, 2))
    for i, (dy, dx) in enumerate(shifts):
        images[i] = np.roll(images[i], (dy, dx), axis=(1, 2))
    images *= rng.uniform(0.6, 1.4, size=(n, 1, 1, 1))  # per-image contrast
    images += rng.normal(0, 64, size=images.shape)
    data = np.clip(images, 0, 255).astype(np.uint8).reshape(n, 3072)
    return {
        "batch_label": "synthetic",
        "data": data,
        "fine_labels": fine.tolist(),
        "coarse_labels": (fine // 5).tolist(),
        "filenames": [f"synthetic_{i:05d}.png" for i in range(n)],
    }


def _prototypes(seed: int) -> np.ndarray:
    rng = np.random.RandomState(seed)
    coarse = rng.uniform(30, 225, size=(NUM_FINE, 3, 4, 4))
    return np.kron(coarse, np.ones((1, 1, 8, 8)))  # (100, 3, 32, 32), blocks of 8x8 pixels


def write_synthetic(root: str | Path, n_train: int = 5000, n_test: int = 1000, seed: int = 0,
                    archive: bool = False) -> Path:
    """Write a learnable synthetic CIFAR-100 under `root` (folder, or the .tar.gz when
    `archive`), in the official pickle format. Refuses to overwrite existing data."""
    root = Path(root)
    if locate(root) is not None:
        raise DataError(f"{root} already holds CIFAR-100 data; choose an empty folder for synthetic data")
    protos = _prototypes(seed)
    entries = {
        "train": synthetic_split(n_train, seed + 1, protos),
        "test": synthetic_split(n_test, seed + 2, protos),
        "meta": {"fine_label_names": [f"class_{i:02d}" for i in range(NUM_FINE)],
                 "coarse_label_names": [f"super_{i:02d}" for i in range(NUM_COARSE)]},
    }
    blobs = {k: pickle.dumps(v, protocol=2) for k, v in entries.items()}
    if archive:
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(root / ARCHIVE, "w:gz") as tar:
            for name, blob in blobs.items():
                info = tarfile.TarInfo(f"{FOLDER}/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        return root / ARCHIVE
    folder = root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in blobs.items():
        (folder / name).write_bytes(blob)
    return folder


def synthetic_root(n_train: int, n_test: int, seed: int) -> Path:
    """A cached folder of synthetic data in this user's cache (core.paths.user_cache_dir), written on first use."""
    from .paths import user_cache_dir
    root = user_cache_dir() / "synthetic" / f"{n_train}-{n_test}-{seed}"
    if locate(root) is None:
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".writing-", dir=root.parent))  # beside root: the rename is atomic
        write_synthetic(tmp, n_train, n_test, seed)
        try:
            tmp.replace(root)  # atomic: concurrent runs never see a half-written folder
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def random_split(n: int, seed: int) -> Split:
    """`n` random uint8 images with random labels, in memory (for timings, which do not depend on content)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    fine = torch.randint(0, NUM_FINE, (n,), generator=g)
    return Split(images, fine, fine // 5)


def in_memory_data(n_train: int, n_test: int, seed: int) -> Cifar100:
    """Random images in memory, nothing on disk: `build_trainer(cfg, data)` for benchmarks and tests."""
    names = [f"class_{i:02d}" for i in range(NUM_FINE)]
    return Cifar100(random_split(n_train, seed), random_split(n_test, seed + 1), names,
                    [f"super_{i:02d}" for i in range(20)], "in-memory random uint8", {}, synthetic=True)


# ---------------------------------------------------------------------------- subsets

def balanced_indices(labels: torch.Tensor, n: int, num_classes: int = NUM_FINE) -> torch.Tensor:
    """Indices of the first n // num_classes images of each class, in the original order."""
    per_class = n // num_classes
    keep = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()[:per_class]
        if idx.numel() < per_class:
            raise DataError(f"class {c} has only {idx.numel()} images, fewer than the {per_class} a "
                            f"balanced subset of {n} needs")
        keep.append(idx)
    return torch.sort(torch.cat(keep)).values


def validation_indices(labels: torch.Tensor, n: int, num_classes: int = NUM_FINE) -> torch.Tensor:
    """Indices of the last n // num_classes images of each class, in the original order."""
    per_class = n // num_classes
    keep = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        if idx.numel() <= per_class:
            raise DataError(f"class {c} has only {idx.numel()} training images; a validation split of {n} "
                            f"needs more than {per_class} per class")
        keep.append(idx[idx.numel() - per_class:])
    return torch.sort(torch.cat(keep)).values


def split_validation(split: Split, n: int) -> tuple[Split, Split | None]:
    """(train, val): a class-balanced validation split of n images (the last n/100 of each class)
    and the rest. Deterministic and independent of the seed, so every run validates on the same images."""
    if n <= 0:
        return split, None
    val_index = validation_indices(split.fine, n)
    keep = torch.ones(len(split), dtype=torch.bool)
    keep[val_index] = False
    return split.take(torch.nonzero(keep).flatten()), split.take(val_index)


def subset(split: Split, n: int, balanced: bool = True, name: str = "subset") -> Split:
    """A subset of `split`: class-balanced (first n/100 per class) or the first n; order kept.
    n = 0 (or n = all) keeps the whole split; more images than the split holds is refused."""
    if n > len(split):
        raise DataError(f"{name} = {n:,} asks for more images than the {len(split):,} there are; "
                        f"give at most {len(split):,} (0 = all)")
    if n <= 0 or n == len(split):
        return split
    if balanced and n % NUM_FINE:
        kept = n // NUM_FINE * NUM_FINE
        warnings.warn(f"{name} = {n:,} is not a multiple of {NUM_FINE}: a class-balanced subset takes "
                      f"{n // NUM_FINE} image(s) per class, so {kept:,} images are used (give a multiple of "
                      f"{NUM_FINE}, or subset_balanced=false for the first {n:,})", stacklevel=2)
    index = balanced_indices(split.fine, n) if balanced else torch.arange(n)
    return split.take(index)


def describe(data: Cifar100) -> dict:
    """Counts and checksum status for `cvlab data check`."""
    return {
        "source": data.source,
        "synthetic": data.synthetic,
        "n_train": len(data.train),
        "n_test": len(data.test),
        "fine_classes": int(torch.unique(data.train.fine).numel()),
        "coarse_classes": int(torch.unique(data.train.coarse).numel()),
        "fine_names": len(data.fine_names),
        "md5": data.md5,
        "train_mean_std": channel_stats(data.train.images),
    }


def channel_stats(images: torch.Tensor) -> list[tuple[float, float]]:
    """Per-channel (mean, std) of uint8 images, scaled to 0..1; one channel at a time to bound memory."""
    stats = []
    for c in range(images.shape[1]):
        channel = images[:, c].double().div_(255.0)
        stats.append((round(channel.mean().item(), 4), round(channel.std().item(), 4)))
    return stats


def class_names_for_config(cfg) -> tuple[list[str], list[str]]:
    """The class names of the data a config trains on (its synthetic data, or the CIFAR-100 at its data root)."""
    if cfg.synthetic:
        return read_class_names(synthetic_root(cfg.synthetic_train, cfg.synthetic_test, seed=0))
    return read_class_names(cfg.resolved_data_root())


def check_num_classes(data: Cifar100, num_classes: int) -> None:
    """Refuse (one line) a model with fewer outputs than the data has classes: its loss cannot be computed."""
    labels = [s.fine for s in (data.train, data.val, data.test) if s is not None and len(s)]
    largest = max(int(t.max()) for t in labels) if labels else -1
    if largest >= num_classes:
        raise DataError(f"num_classes = {num_classes}, but the data has labels up to {largest} "
                        f"({len(data.fine_names)} classes); set num_classes to at least {largest + 1}")


def load_for_config(cfg) -> Cifar100:
    """The data a config asks for: real or synthetic, then the validation split (carved from the
    full training set), then the training subset (from what is left) and the test subset."""
    if cfg.synthetic:
        root = synthetic_root(cfg.synthetic_train, cfg.synthetic_test, seed=0)  # same data for every training seed
        data = load_cifar100(root, check_md5=False, expected_sizes=None)
        data.synthetic = True
    else:
        data = load_cifar100(cfg.resolved_data_root(), download=cfg.download)
    data.train, data.val = split_validation(data.train, cfg.val_size)
    data.train = subset(data.train, cfg.subset, cfg.subset_balanced, "subset")
    data.test = subset(data.test, cfg.test_subset, cfg.subset_balanced, "test_subset")
    return data
