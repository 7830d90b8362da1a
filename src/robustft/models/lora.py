"""LoRA targets: architecture families, their default target patterns and target resolution.

- ``lora``: low-rank adapters (``peft.LoraConfig`` + ``peft.inject_adapter_in_model``) on
  ``nn.Linear`` and non-depthwise ``nn.Conv2d`` layers; every base weight and bias is frozen, the
  adapters' A/B matrices and the head train. Targets default per family
  (:func:`default_lora_targets`): ViT/DeiT/Swin the attention ``qkv``/``proj`` and MLP
  ``fc1``/``fc2`` linears (torchvision's ViT/Swin compute attention from the weight tensors
  directly, so there only the MLP linears); ConvNeXt the MLP ``fc1``/``fc2``; ResNet the
  residual-branch convs ``layerI.J.convK`` (not the 1x1 shortcut ``downsample`` convs, which exist
  in one block per stage and carry no features of their own; nor the stem); BERT-style text
  encoders (BERT, RoBERTa, XLM-R, ELECTRA; MiniLM) the self-attention ``query``/``value`` and the
  MLP's ``intermediate.dense`` and ``output.dense`` (DistilBERT: ``q_lin``, ``v_lin``,
  ``ffn.lin1``, ``ffn.lin2``); EfficientNet/MobileNet
  (``efficientnet_lite0`` included) the pointwise convs ``conv_pw``/``conv_pwl``/``conv_head``
  (torchvision: each block's 1x1 expand/project convs) - depthwise convs are skipped because
  peft 0.21 cannot merge LoRA into ``groups > 1`` convs (and needs ``rank % groups == 0``); other
  models: every capable layer outside the head. Never adapted: the head, subclasses with their own
  forward (timm's ``Conv2dSame``, ``StdConv2d``), dilated or non-zero-padded convs, and layers
  whose parent reads their weights directly (``nn.MultiheadAttention.out_proj``, torchvision Swin
  attention, timm SwinV2/BEiT/EVA ``qkv``), where LoRA would be ignored. Frozen BatchNorm
  layers keep their pretrained statistics (:func:`robustft.models.blocks.frozen_batchnorms`).
"""

from __future__ import annotations

import logging
import re

from torch import nn

from robustft.errors import UserError, few
from robustft.models.spec import ModeOptions
from robustft.models.text import TextClassifier
from robustft.models.wrapper import ClassifierModel

# the package's logger, as before the split into modules (records keep the name robustft.models)
logger = logging.getLogger("robustft.models")

_LAYER_OUTPUT = r".*layer\.\d+\.output\.dense"

# (network classes, by qualified name; default target patterns)
_LORA_FAMILIES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "vit",
        (
            "timm.models.vision_transformer.VisionTransformer",
            "timm.models.swin_transformer.SwinTransformer",
            "timm.models.swin_transformer_v2.SwinTransformerV2",
            "timm.models.swin_transformer_v2_cr.SwinTransformerV2Cr",
            "timm.models.beit.Beit",
            "timm.models.eva.Eva",
        ),
        ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"),
    ),
    (
        "vit",
        (
            "torchvision.models.vision_transformer.VisionTransformer",
            "torchvision.models.swin_transformer.SwinTransformer",
        ),
        ("mlp.0", "mlp.3"),
    ),
    (
        "vit",
        (
            "transformers.models.vit.modeling_vit.ViTForImageClassification",
            "transformers.models.deit.modeling_deit.DeiTForImageClassification",
        ),
        (
            # transformers >= 5: q_proj/v_proj and mlp.fc1/fc2; 4.x: attention.query/value,
            # intermediate.dense and the layer's output.dense (not attention.output.dense)
            "q_proj",
            "v_proj",
            "mlp.fc1",
            "mlp.fc2",
            "attention.query",
            "attention.value",
            "intermediate.dense",
            _LAYER_OUTPUT,
        ),
    ),
    (
        "bert",
        (
            "transformers.models.bert.modeling_bert.BertModel",
            "transformers.models.roberta.modeling_roberta.RobertaModel",
            "transformers.models.xlm_roberta.modeling_xlm_roberta.XLMRobertaModel",
            "transformers.models.electra.modeling_electra.ElectraModel",
        ),
        # self-attention query/value, the MLP's intermediate.dense and the layer's output.dense
        # (not attention.output.dense)
        ("attention.self.query", "attention.self.value", "intermediate.dense", _LAYER_OUTPUT),
    ),
    (
        "bert",
        ("transformers.models.distilbert.modeling_distilbert.DistilBertModel",),
        ("attention.q_lin", "attention.v_lin", "ffn.lin1", "ffn.lin2"),
    ),
    ("convnext", ("timm.models.convnext.ConvNeXt",), ("mlp.fc1", "mlp.fc2")),
    ("convnext", ("torchvision.models.convnext.ConvNeXt",), (r"features\.\d+\.\d+\.block\.[35]",)),
    (
        "resnet",
        ("timm.models.resnet.ResNet", "torchvision.models.resnet.ResNet"),
        (r"layer\d+\.\d+\.conv\d",),
    ),
    (
        "efficientnet",
        ("timm.models.efficientnet.EfficientNet", "timm.models.mobilenetv3.MobileNetV3"),
        ("conv_pw", "conv_pwl", "conv_head"),
    ),
    (
        "efficientnet",
        (
            "torchvision.models.efficientnet.EfficientNet",
            "torchvision.models.mobilenetv2.MobileNetV2",
            "torchvision.models.mobilenetv3.MobileNetV3",
        ),
        (r"features\.\d+(\.\d+)?\.(block|conv)\.\d+(\.0)?",),
    ),
)
_GENERIC_TARGETS = (".*",)

# Children whose weights their parent reads directly instead of calling them (LoRA would be
# ignored there): parent class (qualified name) -> child attribute names.
_BYPASSED_CHILDREN: dict[str, tuple[str, ...]] = {
    "torch.nn.modules.activation.MultiheadAttention": ("out_proj",),
    "torchvision.models.swin_transformer.ShiftedWindowAttention": ("qkv", "proj"),
    "timm.models.swin_transformer_v2.WindowAttention": ("qkv",),
    "timm.models.beit.Attention": ("qkv",),
    "timm.models.eva.EvaAttention": ("qkv",),
}
_PLAIN_FORWARDS = frozenset(
    {
        "torch.nn.modules.linear.Linear.forward",
        "timm.layers.linear.Linear.forward",
        "torch.nn.modules.conv.Conv2d.forward",
    }
)


def _qualnames(cls: type) -> set[str]:
    """Qualified names of ``cls`` and its bases."""
    return {f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__}


def _family_net(net: nn.Module) -> nn.Module:
    """The network whose class names the family: an ``hf:`` model's transformers model (a text
    classifier's encoder)."""
    if isinstance(net, TextClassifier):
        return net.encoder
    inner = getattr(net, "model", None)
    return inner if type(net).__name__ == "HFImageClassifier" and inner is not None else net


def default_lora_targets(net: nn.Module) -> tuple[str, ...]:
    """The default LoRA target patterns for a network's family (see the module docstring);
    ``(".*",)`` (every LoRA-capable layer outside the head) for unknown families."""
    names = _qualnames(type(_family_net(net)))
    for _, classes, patterns in _LORA_FAMILIES:
        if names & set(classes):
            return patterns
    return _GENERIC_TARGETS


def _pattern_matches(pattern: str, name: str) -> bool:
    """A LoRA target pattern matches the whole name, a dotted suffix, or as a full regex."""
    if name == pattern or name.endswith("." + pattern):
        return True
    return re.fullmatch(pattern, name) is not None


def _lora_capable(module: nn.Module, parent: nn.Module, attr: str) -> bool:
    """peft can adapt ``module`` exactly: a plain ``nn.Linear`` or a non-depthwise, undilated,
    zero-padded ``nn.Conv2d`` whose parent calls it (no subclass with its own forward such as
    timm's ``Conv2dSame``/``StdConv2d``)."""
    if any(attr in _BYPASSED_CHILDREN.get(n, ()) for n in _qualnames(type(parent))):
        return False
    forward = type(module).forward
    if f"{forward.__module__}.{forward.__qualname__}" not in _PLAIN_FORWARDS:
        return False
    if isinstance(module, nn.Conv2d):
        plain = module.dilation == (1, 1) and module.padding_mode == "zeros"
        return plain and module.groups == 1
    return isinstance(module, nn.Linear)


def _lora_capable_modules(model: ClassifierModel) -> list[str]:
    """Names (relative to ``model.net``) of LoRA-capable modules outside the head."""
    modules = dict(model.net.named_modules())
    out = []
    for name, module in modules.items():
        parent_name, _, attr = name.rpartition(".")
        if not name or model.is_head("net." + name):
            continue
        if _lora_capable(module, modules[parent_name], attr):
            out.append(name)
    return out


def lora_target_modules(
    model: ClassifierModel, options: ModeOptions | None = None
) -> tuple[str, ...]:
    """Names (relative to ``model.net``, in module order) of the layers ``lora`` adapts.

    Args:
        model: the model (before LoRA is injected).
        options: ``lora_targets`` patterns, ``None`` = the family default; ``None`` options
            means ``model.options``.

    Raises:
        UserError: the patterns match no LoRA-capable layer; the message lists some that exist.
    """
    options = model.options if options is None else options
    patterns = options.lora_targets or default_lora_targets(model.net)
    capable = _lora_capable_modules(model)
    chosen = tuple(n for n in capable if any(_pattern_matches(p, n) for p in patterns))
    if not chosen:
        raise UserError(
            f"model.lora_targets: {', '.join(patterns)} match no LoRA-capable layer (nn.Linear "
            f"or non-depthwise nn.Conv2d outside the head) of {model.spec.name}; "
            f"its capable layers: {few(capable) or 'none'}"
        )
    for pattern in options.lora_targets or ():
        if not any(_pattern_matches(pattern, n) for n in chosen):
            logger.warning("lora target '%s' matches no LoRA-capable layer", pattern)
    return chosen
