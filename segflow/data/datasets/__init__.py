"""Dataset adapters, one per on-disk format, opened by name.

``open_dataset(params)`` is what the stages call; ``open_dataset_by_name`` serves code and
tests that have no params.yaml. Adapter modules are imported on first use, so importing this
package stays cheap and free of import cycles (the synthetic generator imports ``base``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segflow.config import DATASETS
from segflow.data.datasets.base import DatasetAdapter
from segflow.errors import SegflowError

if TYPE_CHECKING:
    from segflow.config import Params

#: name -> (module, class) of each adapter, one for each of config.DATASETS (the one list of
#: ``dataset.name`` values; a test checks they agree).
_ADAPTERS = {
    "synthetic": ("segflow.data.datasets.synthetic", "SyntheticDataset"),
    "camvid": ("segflow.data.datasets.camvid", "CamVidDataset"),
    "voc": ("segflow.data.datasets.voc", "VOCDataset"),
    "cityscapes": ("segflow.data.datasets.cityscapes", "CityscapesDataset"),
    "ade20k": ("segflow.data.datasets.ade20k", "ADE20KDataset"),
    "folder": ("segflow.data.datasets.folder", "FolderDataset"),
}


def adapter_class(name: str) -> type[DatasetAdapter]:
    """The adapter class registered under ``name``."""
    if name not in _ADAPTERS:
        raise SegflowError(f"dataset.name: unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    module, cls = _ADAPTERS[name]
    return getattr(importlib.import_module(module), cls)


def open_dataset_by_name(
    name: str, root: str | Path | None = None, **options: Any
) -> DatasetAdapter:
    """Open dataset ``name`` at ``root`` with adapter-specific keyword ``options``.

    For ``synthetic`` the root is the output directory (default ``data/synthetic``) and the
    options are the generator's sizes and seed; ``voc`` takes ``train_aug``; ``folder`` takes
    ``classes_file`` (and then needs no root: the class file's directory is used). Every adapter
    takes the reading rules ``follow_symlinks_outside_root`` and ``max_pixels``
    (:class:`~segflow.data.datasets.base.DatasetAdapter`).
    """
    cls = adapter_class(name)
    if name == "synthetic":
        return cls(out_dir=root, **options) if root is not None else cls(**options)
    if root is None and not (name == "folder" and options.get("classes_file")):
        raise SegflowError(
            f"dataset.root: required for the {name} dataset (or set $SEGFLOW_DATA_ROOT)"
        )
    return cls(root, **options)


def open_dataset(params: Params) -> DatasetAdapter:
    """The adapter that ``params.dataset`` (and ``params.synthetic``) describe."""
    ds = params.dataset
    rules = {
        "follow_symlinks_outside_root": ds.follow_symlinks_outside_root,
        "max_pixels": ds.max_pixels,
    }
    if ds.name == "synthetic":
        # The synthesize stage generated it into dataset.root; the sizes say which files exist.
        s = params.synthetic
        return open_dataset_by_name(
            "synthetic",
            ds.resolved_root(),
            num_train=s.num_train,
            num_val=s.num_val,
            num_test=s.num_test,
            height=s.height,
            width=s.width,
            seed=s.seed,
            **rules,
        )
    options: dict[str, Any] = dict(rules)
    if ds.name == "voc":
        options["train_aug"] = ds.voc_train_aug
    if ds.name == "folder" and ds.classes_file:
        options["classes_file"] = ds.classes_file
    return open_dataset_by_name(ds.name, ds.resolved_root(), **options)


__all__ = ["DATASETS", "adapter_class", "open_dataset", "open_dataset_by_name"]
