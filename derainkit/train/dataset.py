"""Training samples as a pure function of (seed, iteration, slot in the batch).

Nothing here keeps random state between calls: sample ``slot`` of iteration ``it`` is worked out from
numpy Generators seeded by ``SeedSequence([seed, tag, ...])``. So a resumed run needs no data-loader
RNG state, any number of loader workers gives the same batches, and under DistributedDataParallel each
rank computes just its own slots of one global batch (identical for any world size).

Which pair: epoch-style. Global sample g = iteration·batch + slot belongs to epoch e = g // n at position
g % n of epoch e's permutation of the n pairs, seeded by (seed, e): every pair is used once per epoch.
Where: a uniform random ``crop``×``crop`` position, the same in the rainy and clean image, drawn from the
sample's own Generator (seeded by (seed, iteration, slot)).

Unpaired training (NLCL and other unsupervised tasks): :class:`UnpairedSet` holds rainy and clean
images with no correspondence, and :class:`UnpairedSampler` draws a rainy crop (epoch-style over the
rainy images) and an independent clean crop (its own epoch-style stream over the clean images) per
sample, again a pure function of (seed, iteration, slot).

Exemplar (MSGNN's external branch gets a crop of the *rainy* image of another training pair; its clean
half is never used). Policies:

``official``   the official code's pairing (reference note §3.3): the input at position i of
               ``os.listdir`` order takes as exemplar the file at position i of the *sorted* listing.
               On a filesystem whose listdir is already sorted every image is its own exemplar; on
               others the pairing is an arbitrary fixed permutation. It is filesystem dependent, so the
               table used is recorded (``exemplar_report``) in the run folder.
``random``     what the paper says: a random other training image, drawn per sample (the image itself
               only when the set has one image).
``self``       the input image itself (an independent crop).
``none``       no exemplar (the model's exemplar branch must be off).
``retrieval``  the most similar *other* rainy training image by a cheap global descriptor (colour
               histogram + 16×16 thumbnail, cosine similarity), precomputed once: the paper's stated
               future work of choosing exemplars instead of drawing them.

The exemplar crop is an independent uniform crop of the chosen rainy image, of the same size.
Images are loaded once and kept in memory (RainTrainL: 200 images, about 370 MB as float32).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol, Sequence

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from derainkit.data import Pair, discover_pairs, load_pair, resolve_data_path
from derainkit.errors import ConfigError, DatasetError
from derainkit.train.config import EXEMPLAR_POLICIES

# Stream tags keep the permutation and per-sample Generators independent of each other.
_TAG_PERMUTATION = 1
_TAG_SAMPLE = 2
_TAG_CLEAN_PERMUTATION = 3
THUMB = 16  # retrieval thumbnail side
HIST_BINS = 8  # retrieval histogram bins per channel


@dataclass
class TrainingSet:
    """Paired training images held in memory (H×W×3 float32 RGB in [0, 1])."""

    pairs: list[Pair]
    rainy: list[np.ndarray]
    clean: list[np.ndarray]
    root: Path

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.pairs]

    @classmethod
    def load(cls, root: str | os.PathLike, layout: str = "auto", clean_side: str = "left",
             progress: bool = True) -> "TrainingSet":
        """Discover and read every pair under ``root`` (or ``embedded:train``); DatasetError when there are
        none or one has no clean image."""
        path = resolve_data_path(root)
        pairs = discover_pairs(path, layout=layout, clean_side=clean_side)
        if not pairs:
            raise DatasetError(f"{path}: no training pairs found")
        unpaired = [p.id for p in pairs if p.clean is None]
        if unpaired:
            raise DatasetError(f"{path}: training needs clean images; {len(unpaired)} image(s) have none "
                               f"(layout {pairs[0].layout!r}), e.g. {unpaired[:5]}")
        check_fits_in_memory(path, [p.rainy for p in pairs], copies=2)
        rainy, clean = [], []
        for pair in tqdm(pairs, desc="load training pairs", unit="img", disable=not progress, leave=False):
            r, c = load_pair(pair)
            rainy.append(r)
            clean.append(c)
        return cls(pairs=pairs, rainy=rainy, clean=clean, root=path)

    @classmethod
    def from_arrays(cls, rainy: Sequence[np.ndarray], clean: Sequence[np.ndarray],
                    ids: Sequence[str] | None = None, root: str | os.PathLike = ".") -> "TrainingSet":
        """A set from arrays already in memory (tests, notebooks); ids default to 0000, 0001, ..."""
        if len(rainy) != len(clean):
            raise DatasetError(f"{len(rainy)} rainy but {len(clean)} clean images")
        root = Path(root)
        ids = list(ids) if ids is not None else [f"{i:04d}" for i in range(len(rainy))]
        pairs = [Pair(id=i, rainy=root / f"{i}.png", clean=root / f"{i}.png", layout="memory", root=root)
                 for i in ids]
        return cls(pairs=pairs, rainy=[np.asarray(r, np.float32) for r in rainy],
                   clean=[np.asarray(c, np.float32) for c in clean], root=root)


# ---------------------------------------------------------------------------------------------------
# exemplar tables

def official_exemplar_table(pairs: Sequence[Pair], listdir: Callable[[str], list[str]] | None = None) -> list[int]:
    """The official code's pairing: pair i's exemplar is the pair whose rainy file sits, in sorted-by-name
    order, at the position pair i's rainy file has in ``os.listdir`` order.

    Filesystem dependent by construction. Rainy files spread over several folders are listed folder by
    folder (folders in sorted order); names are compared as plain strings, as Python's ``sorted`` does.
    """
    listdir = listdir or os.listdir
    by_file = {str(p.rainy): i for i, p in enumerate(pairs)}
    if len(by_file) != len(pairs):
        raise DatasetError("official exemplar rule: two pairs share a rainy file; it needs one file per pair")
    folders = sorted({str(p.rainy.parent) for p in pairs})
    listed: list[str] = []
    for folder in folders:
        for name in listdir(folder):
            full = str(Path(folder) / name)
            if full in by_file:
                listed.append(full)
    if len(listed) != len(pairs):
        raise DatasetError(f"official exemplar rule: listing {folders} found {len(listed)} of the {len(pairs)} "
                           "training files")
    in_sorted = sorted(listed, key=lambda f: (str(Path(f).parent), Path(f).name))
    table = [0] * len(pairs)
    for position, file in enumerate(listed):
        table[by_file[file]] = by_file[in_sorted[position]]
    return table


def global_descriptor(rainy: np.ndarray) -> np.ndarray:
    """Unit-length descriptor of an image: [colour histogram, 16×16 thumbnail] (each L2-normalised).

    The histogram (``HIST_BINS`` per channel, normalised to sum 1) says which colours; the mean-removed
    thumbnail (area average) says where. Cosine similarity of two descriptors is the mean of the two
    blocks' cosine similarities.
    """
    img = np.clip(np.asarray(rainy, np.float32), 0.0, 1.0)
    hist = np.concatenate([np.histogram(img[..., c], bins=HIST_BINS, range=(0.0, 1.0))[0] for c in range(3)])
    hist = hist.astype(np.float64) / max(1, img.shape[0] * img.shape[1])
    thumb = cv2.resize(img, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float64).ravel()
    thumb = thumb - thumb.mean()
    blocks = []
    for block in (hist, thumb):
        norm = np.linalg.norm(block)
        blocks.append(block / norm if norm > 0 else block)
    return np.concatenate(blocks) / np.sqrt(2.0)


def retrieval_exemplar_table(rainy_images: Sequence[np.ndarray]) -> list[int]:
    """For each image, the index of the most similar *other* image by ``global_descriptor`` (cosine);
    ties go to the lower index; a one-image set maps to itself."""
    n = len(rainy_images)
    if n == 1:
        return [0]
    desc = np.stack([global_descriptor(r) for r in rainy_images])
    sim = desc @ desc.T
    np.fill_diagonal(sim, -np.inf)
    return [int(j) for j in np.argmax(sim, axis=1)]


# ---------------------------------------------------------------------------------------------------
# the sampler

@dataclass(frozen=True)
class Sample:
    index: int  # training pair
    top: int
    left: int
    rainy: np.ndarray  # crop×crop×3
    clean: np.ndarray
    exemplar_index: Optional[int] = None
    exemplar_top: Optional[int] = None
    exemplar_left: Optional[int] = None
    exemplar: Optional[np.ndarray] = None  # crop of the exemplar pair's rainy image


class PairSampler:
    """Crops (and exemplar crops) of a `TrainingSet` as a pure function of (seed, iteration, slot)."""

    def __init__(self, data: TrainingSet, crop: int, batch: int, seed: int, exemplar: str = "none",
                 listdir: Callable[[str], list[str]] | None = None) -> None:
        if exemplar not in EXEMPLAR_POLICIES:
            raise ConfigError(f"exemplar={exemplar!r} is invalid; expected one of {list(EXEMPLAR_POLICIES)}")
        if len(data) == 0:
            raise DatasetError(f"{data.root}: no training pairs")
        self.data, self.crop, self.batch_size, self.seed, self.policy = data, int(crop), int(batch), int(seed), exemplar
        self._check_sizes()
        self._permutations: dict[int, np.ndarray] = {}
        self.table: Optional[list[int]] = None
        if exemplar == "official":
            self.table = official_exemplar_table(data.pairs, listdir)
        elif exemplar == "retrieval":
            self.table = retrieval_exemplar_table(data.rainy)
        elif exemplar == "self":
            self.table = list(range(len(data)))

    def _check_sizes(self) -> None:
        small = [(p, r.shape) for p, r in zip(self.data.pairs, self.data.rainy)
                 if r.shape[0] < self.crop or r.shape[1] < self.crop]
        if small:
            listed = ", ".join(f"{p.rainy} ({s[0]}×{s[1]})" for p, s in small[:5])
            more = f" and {len(small) - 5} more" if len(small) > 5 else ""
            raise DatasetError(f"crop {self.crop}×{self.crop} is larger than {len(small)} training image(s) "
                               f"(H×W): {listed}{more}; lower crop or remove those images")

    def __len__(self) -> int:
        return len(self.data)

    def permutation(self, epoch: int) -> np.ndarray:
        """Order of the pairs in ``epoch`` (a seeded permutation: each pair once per epoch)."""
        epoch = int(epoch)
        perm = self._permutations.get(epoch)
        if perm is None:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, _TAG_PERMUTATION, epoch]))
            perm = rng.permutation(len(self.data))
            if len(self._permutations) >= 4:  # a batch spans at most two epochs; keep a few
                self._permutations.pop(next(iter(self._permutations)))
            self._permutations[epoch] = perm
        return perm

    def pair_index(self, iteration: int, slot: int) -> int:
        g = int(iteration) * self.batch_size + int(slot)
        epoch, position = divmod(g, len(self.data))
        return int(self.permutation(epoch)[position])

    def epoch_of(self, iteration: int) -> float:
        """Epochs completed at the start of ``iteration`` (fractional)."""
        return iteration * self.batch_size / len(self.data)

    def sample(self, iteration: int, slot: int, with_exemplar: bool = True) -> Sample:
        if not 0 <= slot < self.batch_size:
            raise ValueError(f"slot {slot} outside the batch of {self.batch_size}")
        i = self.pair_index(iteration, slot)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _TAG_SAMPLE, int(iteration), int(slot)]))
        rainy, clean = self.data.rainy[i], self.data.clean[i]
        c = self.crop
        top = int(rng.integers(0, rainy.shape[0] - c + 1))
        left = int(rng.integers(0, rainy.shape[1] - c + 1))
        out = dict(index=i, top=top, left=left, rainy=rainy[top:top + c, left:left + c],
                   clean=clean[top:top + c, left:left + c])
        if with_exemplar and self.policy != "none":
            # Drawn after the input crop, so the input crops do not depend on the policy.
            j = self._exemplar_index(i, rng)
            ex = self.data.rainy[j]
            et = int(rng.integers(0, ex.shape[0] - c + 1))
            el = int(rng.integers(0, ex.shape[1] - c + 1))
            out.update(exemplar_index=j, exemplar_top=et, exemplar_left=el, exemplar=ex[et:et + c, el:el + c])
        return Sample(**out)

    def _exemplar_index(self, i: int, rng: np.random.Generator) -> int:
        if self.table is not None:
            return self.table[i]
        n = len(self.data)  # policy "random"
        if n == 1:
            return i
        j = int(rng.integers(0, n - 1))
        return j + 1 if j >= i else j  # uniform over the other n-1 images

    def batch_arrays(self, iteration: int, slots: Sequence[int] | None = None,
                     with_exemplar: bool = True) -> dict[str, np.ndarray]:
        """Stacked N×H×W×3 arrays (``rainy``, ``clean``, ``exemplar`` when drawn) plus indices."""
        slots = range(self.batch_size) if slots is None else slots
        samples = [self.sample(iteration, s, with_exemplar) for s in slots]
        out = {"rainy": np.stack([s.rainy for s in samples]), "clean": np.stack([s.clean for s in samples]),
               "index": np.array([s.index for s in samples], np.int64)}
        if samples and samples[0].exemplar is not None:
            out["exemplar"] = np.stack([s.exemplar for s in samples])
            out["exemplar_index"] = np.array([s.exemplar_index for s in samples], np.int64)
        return out

    def batch(self, iteration: int, slots: Sequence[int] | None = None,
              with_exemplar: bool = True) -> dict[str, torch.Tensor]:
        """The batch of ``iteration`` (its ``slots``; default all) as b×3×crop×crop float32 tensors."""
        arrays = self.batch_arrays(iteration, slots, with_exemplar)
        out = {}
        for k, v in arrays.items():
            t = torch.from_numpy(np.ascontiguousarray(v.transpose(0, 3, 1, 2) if v.ndim == 4 else v))
            out[k] = t
        return out

    def exemplar_report(self) -> dict:
        """Which exemplar each pair gets (by id), for the run folder: the table, or the rule when drawn."""
        ids = self.data.ids
        rep: dict = {"policy": self.policy}
        if self.table is not None:
            rep["exemplar_of"] = {ids[i]: ids[j] for i, j in enumerate(self.table)}
            rep["self_pairs"] = sum(1 for i, j in enumerate(self.table) if i == j)
        elif self.policy == "random":
            rep["rule"] = "a uniformly random other training image, drawn per sample from (seed, iteration, slot)"
        else:
            rep["rule"] = "no exemplar"
        if self.policy == "official":
            rep["note"] = ("os.listdir order vs sorted order of the rainy files (official MSGNN dataset.py); "
                           "filesystem dependent")
        return rep


class _IterationBatches(torch.utils.data.Dataset):
    """Item k is the batch of iteration start+k: lets DataLoader workers prepare batches ahead."""

    def __init__(self, sampler: "BatchSource", start: int, stop: int, slots: Sequence[int]):
        self.sampler, self.start, self.stop, self.slots = sampler, start, stop, list(slots)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        return self.sampler.batch(self.start + k, self.slots)


class BatchSource(Protocol):
    """What the training loop draws batches from: a pure function of (iteration, slots)."""

    batch_size: int

    def batch(self, iteration: int, slots: Sequence[int] | None = None) -> dict[str, torch.Tensor]: ...

    def epoch_of(self, iteration: int) -> float: ...


def iterate_batches(sampler: BatchSource, start: int, stop: int, slots: Sequence[int] | None = None,
                    num_workers: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of iterations start..stop-1 in order, prepared in ``num_workers`` processes (0: inline).
    The batches are the same for any ``num_workers``."""
    slots = list(range(sampler.batch_size)) if slots is None else list(slots)
    if num_workers <= 0:
        for it in range(start, stop):
            yield sampler.batch(it, slots)
        return
    ds = _IterationBatches(sampler, start, stop, slots)
    # A private generator: otherwise the loader draws its worker seed from torch's global RNG, which
    # would make a resumed run's RNG state differ from an uninterrupted one (the samples need no seed).
    loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=num_workers,
                                         generator=torch.Generator().manual_seed(0))
    yield from loader


# ---------------------------------------------------------------------------------------------------
# unpaired data

def check_fits_in_memory(root: Path, files: Sequence[Path], copies: int = 1) -> None:
    """DatasetError before loading when the images (float32 RGB, ``copies`` per file) exceed the memory
    available; sizes come from the file headers, so nothing is decoded to find out."""
    from derainkit.data import image_size
    from derainkit.sysmem import available_memory

    need = sum(h * w for h, w in (image_size(f) for f in files)) * 3 * 4 * copies
    have = available_memory("cpu")
    if need > 0.8 * have:
        raise DatasetError(f"{root}: the training images need {need / 2**30:.1f} GiB in memory (float32), but "
                           f"{have / 2**30:.1f} GiB are available; train on a subset or smaller images")


def _load_images(pairs: Sequence[Pair], what: str, progress: bool) -> list[np.ndarray]:
    from derainkit.io import read_image

    return [read_image(p.rainy) for p in tqdm(pairs, desc=f"load {what} images", unit="img", disable=not progress,
                                              leave=False)]


@dataclass
class UnpairedSet:
    """Rainy and clean images with no correspondence, held in memory (H×W×3 float32 RGB in [0, 1]).

    ``rainy_pairs``/``clean_pairs`` say where each image came from (``Pair.rainy`` is the image file,
    ``clean`` is None), for the run's manifests.
    """

    rainy: list[np.ndarray]
    clean: list[np.ndarray]
    rainy_pairs: list[Pair]
    clean_pairs: list[Pair]
    root: Path

    def __len__(self) -> int:
        return len(self.rainy)

    @classmethod
    def load(cls, rainy: str | os.PathLike, clean: str | os.PathLike | None = None, layout: str = "auto",
             progress: bool = True) -> "UnpairedSet":
        """Rainy images from ``rainy`` and clean ones from ``clean``. Without ``clean``: a CycleGAN folder
        (``trainA/`` rainy, ``trainB/`` clean), or a paired folder split in two halves, the rainy images
        of the first half against the clean images of the second, so no scene is in both domains."""
        root = resolve_data_path(rainy)
        if clean is not None:
            rainy_pairs = discover_pairs(root, layout=layout)
            clean_pairs = discover_pairs(resolve_data_path(clean), layout="unpaired")
        elif (root / "trainA").is_dir() and (root / "trainB").is_dir():
            rainy_pairs = discover_pairs(root / "trainA", layout="unpaired")
            clean_pairs = discover_pairs(root / "trainB", layout="unpaired")
        else:
            pairs = discover_pairs(root, layout=layout)
            if len(pairs) < 2 or any(p.clean is None for p in pairs):
                raise DatasetError(f"{root}: unpaired training without a clean folder needs a paired data set to "
                                   "split in halves (or trainA/ and trainB/ folders); give the clean folder too")
            half = len(pairs) // 2
            rainy_pairs = pairs[:half]
            clean_pairs = [Pair(id=p.id, rainy=p.clean, clean=None, layout="unpaired", root=p.root)
                           for p in pairs[half:]]
        rainy_pairs = [Pair(id=p.id, rainy=p.rainy, clean=None, layout="unpaired", root=p.root) for p in rainy_pairs]
        if not rainy_pairs or not clean_pairs:
            raise DatasetError(f"{root}: unpaired training needs rainy and clean images; found "
                               f"{len(rainy_pairs)} rainy and {len(clean_pairs)} clean")
        check_fits_in_memory(root, [p.rainy for p in rainy_pairs + clean_pairs])
        return cls(rainy=_load_images(rainy_pairs, "rainy", progress), clean=_load_images(clean_pairs, "clean", progress),
                   rainy_pairs=rainy_pairs, clean_pairs=clean_pairs, root=root)

    @classmethod
    def from_arrays(cls, rainy: Sequence[np.ndarray], clean: Sequence[np.ndarray],
                    root: str | os.PathLike = ".") -> "UnpairedSet":
        """A set from arrays already in memory (tests, notebooks)."""
        root = Path(root)
        mk = lambda tag, n: [Pair(id=f"{tag}{i:04d}", rainy=root / f"{tag}{i:04d}.png", clean=None,  # noqa: E731
                                  layout="memory", root=root) for i in range(n)]
        return cls(rainy=[np.asarray(r, np.float32) for r in rainy], clean=[np.asarray(c, np.float32) for c in clean],
                   rainy_pairs=mk("r", len(rainy)), clean_pairs=mk("c", len(clean)), root=root)


class UnpairedSampler:
    """A rainy crop and an independent clean crop per sample, a pure function of (seed, iteration, slot).

    Global sample g = iteration·batch + slot takes rainy image ``perm_e[g % n]`` of epoch e = g // n
    (each rainy image once per epoch) and clean image ``perm'_e'[g % n']`` from an independently seeded
    stream over the clean images; crop positions come from the sample's own Generator.
    """

    def __init__(self, data: UnpairedSet, crop: int, batch: int, seed: int) -> None:
        self.data, self.crop, self.batch_size, self.seed = data, int(crop), int(batch), int(seed)
        for what, images, pairs in (("rainy", data.rainy, data.rainy_pairs), ("clean", data.clean, data.clean_pairs)):
            small = [p.rainy for p, im in zip(pairs, images) if min(im.shape[:2]) < self.crop]
            if small:
                raise DatasetError(f"crop {self.crop}×{self.crop} is larger than {len(small)} {what} training "
                                   f"image(s), e.g. {small[0]}; lower crop or remove those images")

    def _index(self, g: int, n: int, tag: int) -> int:
        epoch, position = divmod(g, n)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, tag, epoch]))
        return int(rng.permutation(n)[position])

    def epoch_of(self, iteration: int) -> float:
        return iteration * self.batch_size / len(self.data.rainy)

    def sample(self, iteration: int, slot: int) -> dict[str, np.ndarray | int]:
        g = int(iteration) * self.batch_size + int(slot)
        i = self._index(g, len(self.data.rainy), _TAG_PERMUTATION)
        j = self._index(g, len(self.data.clean), _TAG_CLEAN_PERMUTATION)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _TAG_SAMPLE, int(iteration), int(slot)]))
        out: dict[str, np.ndarray | int] = {"index": i, "clean_index": j}
        for key, image in (("rainy", self.data.rainy[i]), ("clean", self.data.clean[j])):
            top = int(rng.integers(0, image.shape[0] - self.crop + 1))
            left = int(rng.integers(0, image.shape[1] - self.crop + 1))
            out[key] = image[top:top + self.crop, left:left + self.crop]
        return out

    def batch(self, iteration: int, slots: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        slots = range(self.batch_size) if slots is None else slots
        samples = [self.sample(iteration, s) for s in slots]
        out = {k: torch.from_numpy(np.ascontiguousarray(np.stack([s[k] for s in samples]).transpose(0, 3, 1, 2)))
               for k in ("rainy", "clean")}
        out.update({k: torch.tensor([s[k] for s in samples], dtype=torch.int64) for k in ("index", "clean_index")})
        return out
