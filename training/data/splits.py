"""Image-level, grouped, modality-stratified, deterministic train/val/test splits.

Unit of assignment: a *group* of images that must stay on one side.  Images are joined into one group when

* they have identical bytes at different paths (same content hash), or
* they were cut from the same source file (the ``image_source`` the bundled samples record per image: all
  slices, frames and tiles of one DICOM / NIfTI / PNG file stay together).

All questions of an image follow it.  Groups that contain an image of a held-out dataset go to ``test``.
The other groups are stratified by modality (a group's modality is the one most of its questions have); within
a modality the groups are put in a seeded random order and

1. if the modality has at least 2 groups and ``test_ratio > 0``, the smallest group (fewest questions; ties
   in the seeded order) seeds ``test``; with at least 4 groups and ``val_ratio > 0`` the next smallest seeds
   ``val`` -- so that a modality with few source files is still evaluated;
2. every other group goes, in the seeded order, to the split furthest below its target number of questions
   (ties: train, val, test).

The same input, ratios and seed give the same splits on every machine (``random.Random`` seeded by a string).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from training.errors import MedVQAUserError

SPLITS = ("train", "val", "test")


@dataclass
class ImageInfo:
    """What the splitter needs to know about one image (keyed by its path in the release)."""

    sha: str | None = None
    source: str | None = None  # the file the image was cut from, when recorded
    modalities: dict[str, int] = field(default_factory=dict)  # questions per modality
    datasets: set[str] = field(default_factory=set)


@dataclass
class Group:
    id: str
    images: list[str]
    modality: str
    weight: int
    datasets: list[str]
    sources: list[str]
    split: str = "train"


def check_ratios(val_ratio: float, test_ratio: float) -> None:
    """Raise MedVQAUserError unless 0 <= val, test and val + test < 1."""
    if not (0 <= val_ratio < 1 and 0 <= test_ratio < 1 and val_ratio + test_ratio < 1):
        raise MedVQAUserError(
            "--val-ratio/--test-ratio",
            f"need 0 <= ratios and val + test < 1, got {val_ratio} and {test_ratio}",
        )


def build_groups(images: Mapping[str, ImageInfo]) -> list[Group]:
    """Union images that share a content hash or a source file; groups sorted by id (their first image)."""
    parent: dict[str, str] = {k: k for k in images}

    def find(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    first_by: dict[tuple[str, str], str] = {}
    keys = sorted(images)
    for key in keys:
        info = images[key]
        for link in (("sha", info.sha), ("source", info.source)):
            if link[1] is None:
                continue
            other = first_by.setdefault(link, key)  # type: ignore[arg-type]
            if other != key:
                ra, rb = find(key), find(other)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    members: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        members[find(key)].append(key)
    groups = []
    for root, ks in members.items():
        if len(ks) == 1:  # most images of the real release: no merging to do
            info = images[root]
            mods: dict[str, int] = info.modalities
            datasets, sources = sorted(info.datasets), [info.source] if info.source else []
        else:
            mods = Counter()
            ds: set[str] = set()
            src: set[str] = set()
            for k in ks:
                mods.update(images[k].modalities)
                ds |= images[k].datasets
                if images[k].source:
                    src.add(images[k].source)
            datasets, sources = sorted(ds), sorted(src)
        modality = min(mods.items(), key=lambda kv: (-kv[1], kv[0]))[0] if mods else ""
        groups.append(Group(root, ks, modality, sum(mods.values()), datasets, sources))
    groups.sort(key=lambda g: g.id)
    return groups


def assign_splits(
    images: Mapping[str, ImageInfo],
    *,
    seed: int = 0,
    val_ratio: float = 0.1,
    test_ratio: float = 0.1,
    holdout_datasets: Iterable[str] = (),
) -> list[Group]:
    """Group the images and give every group a split (see the module docstring); returns the groups."""
    check_ratios(val_ratio, test_ratio)
    holdout = set(holdout_datasets)
    ratios = {"train": 1 - val_ratio - test_ratio, "val": val_ratio, "test": test_ratio}
    all_groups = build_groups(images)
    by_modality: dict[str, list[Group]] = defaultdict(list)
    for g in all_groups:
        if holdout.intersection(g.datasets):
            g.split = "test"
        else:
            by_modality[g.modality].append(g)
    for modality in sorted(by_modality):
        groups = by_modality[modality]
        random.Random(f"medvqa-split:{seed}:{modality}").shuffle(groups)
        total = sum(g.weight for g in groups)
        filled = dict.fromkeys(SPLITS, 0)
        order = {id(g): i for i, g in enumerate(groups)}
        seeded: set[int] = set()
        smallest_first = sorted(groups, key=lambda g: (g.weight, order[id(g)]))
        for split, min_groups in (("test", 2), ("val", 4)):
            if ratios[split] > 0 and len(groups) >= min_groups:
                g = next(g for g in smallest_first if id(g) not in seeded)
                g.split = split
                filled[split] += g.weight
                seeded.add(id(g))
        for g in groups:
            if id(g) in seeded:
                continue
            deficits = [(ratios[s] * total - filled[s], -i) for i, s in enumerate(SPLITS)]
            g.split = SPLITS[-max(deficits)[1]]
            filled[g.split] += g.weight
    return all_groups


def split_membership(groups: list[Group], images: Mapping[str, ImageInfo], **settings: Any) -> dict[str, Any]:
    """The JSON written as ``splits.json``: settings plus every group with its split, images and hashes."""
    return {
        **settings,
        "groups": [
            {
                "id": g.id,
                "split": g.split,
                "modality": g.modality,
                "questions": g.weight,
                "datasets": g.datasets,
                "sources": g.sources,
                "images": [{"image": k, "sha256": images[k].sha} for k in g.images],
            }
            for g in groups
        ],
    }
