"""The ``hf:<repo id or local directory>`` source: Hugging Face ``transformers`` image
classifiers (``pip install 'robustft[hf]'``); a model whose config describes a text model
(:func:`~robustft.models.sources.hf_text.is_text_config`) is built as a text classifier by
:mod:`robustft.models.sources.hf_text`.

- ``hf:google/vit-base-patch16-224`` downloads from the Hub (the Hugging Face cache, ``HF_HOME``,
  is used and honoured; ``HF_HUB_OFFLINE=1`` uses only the cache, and so does a machine whose
  DNS cannot resolve the Hub: huggingface_hub would retry for about a minute there before
  failing); ``hf:/path/to/dir`` loads a directory written by ``save_pretrained``.
- ``AutoModelForImageClassification.from_pretrained(..., num_labels=K,
  ignore_mismatched_sizes=True)``: the pretrained backbone with a new ``K``-class head
  (``model.pretrained=false``: the architecture from its config, randomly initialised).
- The image processor's ``image_mean``/``image_std`` become the model's normalisation (inside
  the model, so attacks work on ``[0, 1]`` pixels) and its size the model's ``input_size``;
  without a processor config, ImageNet's mean/std and the config's ``image_size``, with a
  warning.
- The network returns a logits tensor (:class:`HFImageClassifier` unwraps the output object)
  and, for ViT-style models, interpolates its position embeddings when the images are not the
  pretraining size (``data.image_size``).

LoRA targets for ViT/DeiT: the attention's query and value projections and the MLP linears
(:mod:`robustft.models.lora`); ``partial`` finds the encoder layers.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from robustft.errors import UserError, first_line
from robustft.models.sources.base import IMAGENET_MEAN, IMAGENET_STD, _Built, _head_names
from robustft.models.sources.hf_text import build_hf_text, is_text_config, model_file
from robustft.models.sources.hub import hub_unreachable, offline_mode
from robustft.models.spec import ModelSpec

_logger = logging.getLogger("robustft.models")


class HFImageClassifier(nn.Module):
    """A transformers image-classification model as a plain network: normalised images
    ``(B, 3, H, W)`` in, logits ``(B, K)`` out. Parameter names are the model's own under
    ``model.`` (the export strips that prefix). ``hub_id``: the Hub repo it came from (None for
    a local directory): the model card's ``base_model``. ``processor``: the source's image
    processor (None without one), which the export saves beside the weights."""

    def __init__(self, model: nn.Module, hub_id: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.hub_id = hub_id
        self.processor: Any = None
        parameters = inspect.signature(model.forward).parameters
        self.interpolates = "interpolate_pos_encoding" in parameters
        size = getattr(getattr(model, "config", None), "image_size", None)
        self.image_size = int(size) if isinstance(size, int) else None

    def forward(self, x: Tensor) -> Tensor:
        kwargs: dict[str, Any] = {}
        if self.interpolates and self.image_size not in (None, x.shape[-1]):
            kwargs["interpolate_pos_encoding"] = True  # data.image_size != pretraining size
        return self.model(pixel_values=x, **kwargs).logits  # type: ignore[no-any-return]


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise UserError("hf: models need transformers; pip install 'robustft[hf]'") from None
    return transformers


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers' load reports and progress bars off while loading (our log says what was
    built); its settings restored afterwards."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hub_logger = logging.getLogger("huggingface_hub")  # its retry warnings: our error says it
    hub_level = hub_logger.level
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hub_logger.setLevel(hub_level)
        if bars:
            hf_logging.enable_progress_bar()


def _source(arch: str) -> tuple[str, bool]:
    """The directory or repo id, and whether it is a local directory.

    Raises:
        UserError: a path (``/``, ``.``, ``~``) that is not a directory.
    """
    path = Path(arch).expanduser()
    if path.is_dir():
        return str(path), True
    if arch.startswith(("/", ".", "~")):
        raise UserError(
            f"hf:{arch}: directory not found; give a directory written by save_pretrained or "
            "a Hub repo id such as google/vit-base-patch16-224"
        )
    return arch, False


def _load_error(arch: str, local: bool, cache_only: bool, err: BaseException) -> UserError:
    """One line for a model that cannot be loaded: offline and not cached, not found, not a
    model."""
    text = first_line(err)
    if local:
        return UserError(
            f"hf:{arch}: not a Hugging Face image-classification model or text encoder "
            f"directory ({text}); it needs the config.json and weights written by "
            "save_pretrained"
        )
    if cache_only or "connect" in text.lower() or "offline" in text.lower():
        return UserError(
            f"cannot download {arch} (offline?) and it is not in the Hugging Face cache; pass "
            "a local directory hf:/path, or run once online to cache it"
        )
    return UserError(f"hf:{arch}: cannot load it from the Hugging Face Hub ({text})")


def _normalisation(
    label: str, source: str, config: Any, cache_only: bool
) -> tuple[tuple[float, ...], tuple[float, ...], int, Any]:
    """mean, std, input size and the image processor saved with the model (ImageNet's mean/std
    and the config's ``image_size`` without one, with a warning: a model trained with other
    normalisation would be fine-tuned on shifted inputs)."""
    transformers = _transformers()
    size = getattr(config, "image_size", 224)
    size = int(size if isinstance(size, int) else 224)
    try:
        with _quiet(), offline_mode(cache_only):
            processor = transformers.AutoImageProcessor.from_pretrained(
                source, local_files_only=cache_only
            )
    except (OSError, ValueError, KeyError) as err:
        _logger.debug("%s: no image processor (%s)", label, first_line(err))
        _logger.warning(
            "%s has no image processor (preprocessor_config.json): using ImageNet mean/std and "
            "input size %d; if it was pretrained with other normalisation, save its processor "
            "with it (processor.save_pretrained)",
            label,
            size,
        )
        return IMAGENET_MEAN, IMAGENET_STD, size, None
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    if mean is None or std is None:
        _logger.warning(
            "%s: its image processor (%s) gives no image_mean/image_std: using ImageNet's",
            label,
            type(processor).__name__,
        )
    mean = tuple(float(v) for v in mean or IMAGENET_MEAN)
    std = tuple(float(v) for v in std or IMAGENET_STD)
    side = _processor_size(getattr(processor, "crop_size", None) or processor.size, size)
    return mean, std, side, processor


def _processor_size(size: Any, default: Any) -> int:
    """The square side of a processor's ``size``/``crop_size`` (dict-like or int)."""
    if isinstance(size, int):
        return size
    for key in ("height", "shortest_edge", "width"):
        value = size.get(key) if hasattr(size, "get") else getattr(size, key, None)
        if isinstance(value, int):
            return value
    return int(default) if isinstance(default, int) else 224


def _labels(num_classes: int) -> dict[str, Any]:
    """A ``num_classes`` label map (so transformers does not warn about the old head's)."""
    id2label = {i: f"LABEL_{i}" for i in range(num_classes)}
    return {
        "num_labels": num_classes,
        "id2label": id2label,
        "label2id": {v: k for k, v in id2label.items()},
    }


def _head(net: HFImageClassifier, label: str) -> tuple[str, ...]:
    head = getattr(net.model, "classifier", None)
    if not isinstance(head, nn.Module):
        raise UserError(
            f"{label}: cannot find its classifier head (no 'classifier' module in "
            f"{type(net.model).__name__}); use an image-classification model"
        )
    return _head_names(net, (head,))


def hf_tokenizer(arch: str) -> Path | None:
    """The ``tokenizer.json`` of the ``hf:`` model ``arch`` (in its folder, or from the Hub's
    cache when the Hub cannot be reached), None when it has none (an image model).

    Raises:
        UserError: the Hub cannot be reached and the model is not cached.
    """
    source, local = _source(arch)
    cache_only = not local and hub_unreachable()
    try:
        with _quiet(), offline_mode(cache_only):
            return model_file(source, "tokenizer.json", local=local, cache_only=cache_only)
    except (OSError, ValueError) as err:
        raise _load_error(arch, local, cache_only, err) from None


def _build_hf(arch: str, spec: ModelSpec) -> _Built:
    """The transformers model ``arch`` (repo id or directory) with a new ``num_classes`` head."""
    transformers = _transformers()
    label = f"hf:{arch}"
    if spec.weights is not None:
        raise UserError(
            f"{label}: model.weights is for timm/torchvision models; for hf: models give the "
            "directory written by save_pretrained as the name (hf:/path/to/dir)"
        )
    source, local = _source(arch)
    cache_only = not local and hub_unreachable()
    try:
        with _quiet(), offline_mode(cache_only):
            found = transformers.AutoConfig.from_pretrained(source, local_files_only=cache_only)
    except (OSError, ValueError) as err:
        raise _load_error(arch, local, cache_only, err) from None
    if is_text_config(found):
        return build_hf_text(
            label, source, config=found, spec=spec, local=local, cache_only=cache_only
        )
    auto = transformers.AutoModelForImageClassification
    try:
        with _quiet(), offline_mode(cache_only):
            if spec.pretrained:
                model = auto.from_pretrained(
                    source,
                    ignore_mismatched_sizes=True,
                    local_files_only=cache_only,
                    **_labels(spec.num_classes),
                )
                origin = f"hf pretrained ({arch})"
            else:
                config = transformers.AutoConfig.from_pretrained(
                    source, local_files_only=cache_only, **_labels(spec.num_classes)
                )
                model = auto.from_config(config)
                origin = "random init"
    except OSError as err:
        raise _load_error(arch, local, cache_only, err) from None
    except ValueError as err:  # e.g. a config whose model type has no image classifier
        if local and not (Path(source) / "config.json").is_file():
            raise _load_error(arch, local, cache_only, err) from None
        raise UserError(f"{label}: not an image-classification model ({first_line(err)})") from None
    net = HFImageClassifier(model, hub_id=None if local else source)
    mean, std, size, net.processor = _normalisation(label, source, model.config, cache_only)
    return _Built(net, _head(net, label), mean, std, size, origin)


def hf_config_json(net: nn.Module) -> str | None:
    """The transformers config of an ``hf:`` network as JSON (stored in exports, so that
    :func:`build_from_config_json` rebuilds the architecture without the original directory
    or the network); None for other networks."""
    if not isinstance(net, HFImageClassifier):
        return None
    return json.dumps(net.model.config.to_dict())  # type: ignore[union-attr,operator]


def pretrained_files(net: nn.Module, class_names: Sequence[str]) -> dict[str, str]:
    """The files that let transformers open an exported ``hf:`` network from its folder
    (``AutoModelForImageClassification.from_pretrained(DIR)`` beside ``model.safetensors``):
    ``config.json``, with the class names as its labels, and ``preprocessor_config.json``
    when the source had an image processor (its normalisation is the model's). Empty for
    other networks."""
    if not isinstance(net, HFImageClassifier):
        return {}
    config: Any = copy.deepcopy(net.model.config)
    labels = [str(c) for c in class_names]
    if len(labels) == config.num_labels and len(set(labels)) == len(labels):
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
    config.architectures = [type(net.model).__name__]
    files = {"config.json": config.to_json_string()}
    if net.processor is not None:
        files["preprocessor_config.json"] = net.processor.to_json_string()
    return files


def build_from_config_json(text: str) -> HFImageClassifier:
    """A randomly initialised :class:`HFImageClassifier` of the architecture a
    :func:`hf_config_json` text describes (for loading exported weights into)."""
    transformers = _transformers()
    data = json.loads(text)
    config = transformers.AutoConfig.for_model(data.pop("model_type"), **data)
    with _quiet():
        model = transformers.AutoModelForImageClassification.from_config(config)
    return HFImageClassifier(model)
