"""Datasets: the splits a run trains, validates and tests on, built from its ``data`` section.

:func:`build_datasets` returns a :class:`DataSplits` whose ``train``, ``val`` and ``test`` datasets
yield ``(image, label)``: ``image`` a float32 tensor ``(3, image_size, image_size)`` in ``[0, 1]``
(no mean/std normalisation: that lives inside the model), ``label`` an ``int`` in
``[0, num_classes)``.

Modules: :mod:`~robustft.data.spec` (what a dataset is: :class:`DataSpec`, :class:`DataSplits`),
:mod:`~robustft.data.factory` (:func:`build_datasets`, the one entry point, and the registry
:data:`DATASETS` of dataset names), one module per source (:mod:`~robustft.data.digits`,
:mod:`~robustft.data.imagefolder`, :mod:`~robustft.data.torchvision`),
:mod:`~robustft.data.images` (how images are read and cached), :mod:`~robustft.data.splits`
(stratified splits, few-shot subsets, class checks), :mod:`~robustft.data.transforms` (resizing
and augmentation) and :mod:`~robustft.data.loader` (training batches).

Text data (``drugreview``, ``text:<path>``): the splits are :class:`TextSplit` yielding
``(token ids (max_length,), label)`` with the raw strings beside them
(:mod:`~robustft.data.text`), read by :mod:`~robustft.data.textfiles` and tokenised (and
cached) by :mod:`~robustft.data.tokens`.
"""

from robustft.data.factory import (
    DATASETS,
    build_datasets,
    build_datasets_from_spec,
    check_dataset_name,
    is_dataset,
    list_datasets,
)
from robustft.data.imagefolder import IMAGE_EXTENSIONS, find_unreadable_images
from robustft.data.spec import DataSpec, DataSplits, ImageSplit, default_root
from robustft.data.splits import check_class_set, few_shot_indices, stratified_split
from robustft.data.text import MappedTextSplit, TextSplit
from robustft.data.tokens import TextEncoder, load_tokenizer
from robustft.data.torchvision import TORCHVISION_SETS
from robustft.data.transforms import build_transform, resize_transform

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "TORCHVISION_SETS",
    "DataSpec",
    "DataSplits",
    "ImageSplit",
    "MappedTextSplit",
    "TextEncoder",
    "TextSplit",
    "build_datasets",
    "build_datasets_from_spec",
    "build_transform",
    "check_class_set",
    "check_dataset_name",
    "default_root",
    "few_shot_indices",
    "find_unreadable_images",
    "is_dataset",
    "list_datasets",
    "load_tokenizer",
    "resize_transform",
    "stratified_split",
]
