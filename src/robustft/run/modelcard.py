"""Model cards: the ``README.md`` that ``robustft export`` writes next to the exported file.

The layout is the one the Hugging Face Hub reads: a folder holding the weights, ``README.md``
with YAML front matter (``library_name``, ``pipeline_tag``, ``tags``, ``datasets``,
``metrics``, ``base_model`` for ``hf:`` Hub repo ids (never a local directory), and
``model-index`` with the test results)
and the figure it shows (``robustness_curve.png``), so the folder can be uploaded as it is
(for an ``hf:`` model with ``config.json`` and the processor config, so that transformers opens
it: :mod:`robustft.export`).
The card gives the clean and robust accuracy, the expected robustness, the AutoAttack number
when it was measured (labelled as such: it is not a point of the APGD-CE curve), the
robustness curve as a plot and a table, the findings, the resolved training config and how to
load the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from robustft._version import __version__
from robustft.units import format_eps
from robustft.utils.text import markdown_table, percent, percent_number

if TYPE_CHECKING:
    from robustft.run.result import RunResult
    from robustft.run.rundir import RunState

MARKER = "<!-- written by robustft export -->"  # a README.md without it is never overwritten
CURVE_FILE = "robustness_curve.png"


def card_files(out: Path) -> tuple[Path, Path]:
    """Where the card of an export to ``out`` goes: ``README.md`` and the curve plot, next to
    ``out``."""
    return out.parent / "README.md", out.parent / CURVE_FILE


def is_ours(readme: Path) -> bool:
    """Whether ``readme`` is a card robustft wrote (and may overwrite with ``--force``)."""
    try:
        return MARKER in readme.read_text(errors="replace")
    except OSError:
        return False


def _dataset_id(name: str) -> str | None:
    """A dataset name the Hub can link (``digits``, ``cifar10``); none for local folders."""
    return None if ":" in name or "/" in name else name


def front_matter(
    result: RunResult | None, config: Mapping[str, Any], metadata: Mapping[str, str]
) -> dict[str, Any]:
    """The card's YAML metadata (see the module docstring)."""
    data = config.get("data") or {}
    out: dict[str, Any] = {
        "library_name": "robustft",
        "pipeline_tag": "image-classification",
        "tags": [
            "robustft",
            "adversarial-robustness",
            "robust-fine-tuning",
            "image-classification",
        ],
    }
    dataset = _dataset_id(str(data.get("name", "")))
    if dataset:
        out["datasets"] = [dataset]
    if metadata.get("base_model"):  # an hf: Hub repo id (never a local directory)
        out["base_model"] = metadata["base_model"]
    if result is None:
        return out
    out["metrics"] = ["accuracy"]
    norm = str(result.get("norm", "linf"))
    eps = format_eps(float(result["eval_eps_max"]), norm)
    attack = result.get("eval_attack") or {}
    metrics = [
        {
            "type": "accuracy",
            "value": percent_number(result["clean_accuracy"]),
            "name": "Clean accuracy",
        },
        {
            "type": "accuracy",
            "value": percent_number(result["robust_accuracy"]),
            "name": f"Robust accuracy, {attack.get('name', '?')}-{attack.get('steps', '?')} "
            f"at {norm} {eps}",
        },
        {
            "type": "accuracy",
            "value": percent_number(result["expected_robustness"]),
            "name": f"Expected robustness, {norm} [0, {eps}]",
        },
    ]
    measured = result.get("autoattack")
    if measured and result.get("autoattack_accuracy") is not None:
        metrics.append(
            {
                "type": "accuracy",
                "value": percent_number(result["autoattack_accuracy"]),
                "name": f"AutoAttack ({measured['version']}) at {norm} "
                f"{format_eps(float(measured['eps']), norm)}, {measured.get('n', '?')} examples",
            }
        )
    dataset_entry = {
        "name": str(data.get("name", "?")),
        "type": dataset or "local",
        "split": "test",
    }
    task = {"type": "image-classification", "name": "Image classification"}
    out["model-index"] = [
        {
            "name": str(config.get("name", "robustft-model")),
            "results": [{"task": task, "dataset": dataset_entry, "metrics": metrics}],
        }
    ]
    return out


def _results_section(result: RunResult, curve: Mapping[str, Any] | None) -> list[str]:
    norm = str(result.get("norm", "linf"))
    eps = format_eps(float(result["eval_eps_max"]), norm)
    attack = result.get("eval_attack") or {}
    label = f"{attack.get('name', '?')}, {attack.get('steps', '?')} steps"
    rows = [
        ["clean accuracy", percent(result["clean_accuracy"])],
        [f"robust accuracy at {norm} {eps} ({label})", percent(result["robust_accuracy"])],
        [f"expected robustness on [0, {eps}]", percent(result["expected_robustness"])],
    ]
    measured, accuracy = result.get("autoattack"), result.get("autoattack_accuracy")
    if measured and accuracy is not None:
        at = format_eps(float(measured["eps"]), norm)
        rows.append(
            [
                f"AutoAttack ({measured['version']}) at {norm} {at}, {measured.get('n', '?')} "
                "examples",
                percent(accuracy),
            ]
        )
    lines = ["## Results (test split)", "", markdown_table(["metric", "value (%)"], rows)]
    lines += [
        "",
        f"{result.get('eval_examples', '?')} test examples. Expected robustness is the accuracy "
        f"averaged over eps uniform on [0, {eps}] (trapezoid rule over the curve below).",
    ]
    if measured:
        lines.append(
            f"AutoAttack is a separate evaluation ({measured.get('implementation', '')}, seed "
            f"{measured.get('seed')}), the RobustBench protocol; it is not a point of the curve."
        )
    lines += ["", "## Robustness curve", "", f"![robustness curve]({CURVE_FILE})", ""]
    if curve:
        points = [
            [format_eps(float(e), norm), percent(float(a))]
            for e, a in zip(curve.get("epsilons", ()), curve.get("accuracy", ()))
        ]
        lines += [markdown_table([f"eps ({norm})", "accuracy (%)"], points), ""]
    findings = result.get("findings") or []
    lines += ["## Findings", ""]
    lines += [f"- {f['code']}: {f['message']}" for f in findings] or ["- none"]
    return lines


def _transformers_use(out: Path, metadata: Mapping[str, str]) -> list[str]:
    """How to open an ``hf:`` export with transformers (the card's Use section)."""
    lines = [
        "With transformers (`config.json` and, when the source model had one, its image "
        "processor `preprocessor_config.json` are in this folder):",
        "",
        "```python",
        "from transformers import AutoModelForImageClassification",
        "",
        'model = AutoModelForImageClassification.from_pretrained(".")  # this folder',
        "```",
        "",
        "It expects images normalised with the mean/std above, as the processor does.",
    ]
    if out.name != "model.safetensors":
        lines[-1] += f" Rename `{out.name}` to `model.safetensors` first."
    if metadata.get("input_size") != metadata.get("pretrained_input_size"):
        lines[-1] += (
            f" It was trained at {metadata.get('input_size')} px, not its pretraining size "
            f"{metadata.get('pretrained_input_size')}: resize to that size (ViT-style models "
            "also need `interpolate_pos_encoding=True`)."
        )
    return ["", *lines]


def render_card(
    out: Path,
    metadata: Mapping[str, str],
    config: Mapping[str, Any],
    result: RunResult | None,
    curve: Mapping[str, Any] | None,
    state: RunState | None = None,
    source: str = "",
) -> str:
    """The model card's markdown for the export ``out`` (``result``/``curve``: the run's
    ``result.json`` and ``robustness.json``, None when the run has not finished; ``state``:
    where the run stood, None when the export came from a checkpoint outside its run dir;
    ``source``: what was exported, e.g. ``run `smoke-1a2b3c4d5e```, for the footer)."""
    head = yaml.safe_dump(front_matter(result, config, metadata), sort_keys=False)
    name = str(config.get("name", "model"))
    classes = json.loads(metadata.get("class_names") or "[]")
    lines = [
        "---",
        head.rstrip(),
        "---",
        MARKER,
        "",
        f"# {name}",
        "",
        f"`{metadata['model']}` fine-tuned with robustft "
        f"(mode `{metadata.get('trained_mode')}`) for {metadata['num_classes']} classes"
        + (
            f" ({', '.join(map(str, classes[:20]))}{', ...' if len(classes) > 20 else ''})"
            if classes
            else ""
        )
        + ", adversarially trained against "
        f"{(config.get('attack') or {}).get('norm', 'linf')} perturbations up to eps_g = "
        f"{(config.get('attack') or {}).get('eps')} with the schedule "
        f"`{(config.get('attack') or {}).get('schedule')}`.",
        "",
    ]
    if result is None:
        lines += [_unfinished_text(state, metadata.get("epoch"), config), ""]
    else:
        lines += _results_section(result, curve)
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from robustft.export import load_exported",
        "",
        f'model = load_exported("{out.name}")  # eval mode; input: (B, 3, H, W) in [0, 1]',
        "```",
        "",
        f"Input size {metadata.get('input_size')} px; the normalisation (mean "
        f"{metadata.get('mean')}, std {metadata.get('std')}) is inside the model, so give it "
        "unnormalised images in [0, 1].",
        *(_transformers_use(out, metadata) if "hf_config" in metadata else []),
        "",
        "## Training config",
        "",
        "```yaml",
        yaml.safe_dump(dict(config), sort_keys=False).rstrip(),
        "```",
        "",
        f"Run id {metadata.get('run_id')}, epoch {metadata.get('epoch')}; exported by robustft "
        f"{__version__}" + (f" from {source}." if source else "."),
        "",
    ]
    return "\n".join(lines)


def _unfinished_text(state: RunState | None, epoch: object, config: Mapping[str, Any]) -> str:
    """The card's sentence for an export without test results: failed (and why), still
    training, or not finished, and which epoch of how many the weights are."""
    epochs = (config.get("train") or {}).get("epochs", "?")
    which = f"epoch {epoch} of {epochs}"
    if state is None:
        return f"Exported from a checkpoint outside its run directory ({which}): no test results."
    if state.status == "failed":
        return (
            f"The run failed: {state.reason}. These are the weights of its last checkpoint, "
            f"{which}: no test results."
        )
    if state.status == "training":
        return (
            f"The run was still training when it was exported; these are the weights of its "
            f"checkpoint of {which}: no test results."
        )
    return f"The run had not finished when it was exported ({which}): no test results."


def write_card(
    out: Path,
    run_dir: Path | None,
    metadata: Mapping[str, str],
    config: Any,
    exported: str | Path = "",
) -> Path:
    """Write ``README.md`` (and ``robustness_curve.png`` when the run has a curve) next to
    ``out``, atomically; returns the README's path. ``exported``: what was exported (a run
    directory or a checkpoint file), named in the footer. The caller checked that overwriting
    is allowed (:func:`is_ours`)."""
    from robustft.run.rundir import RunDir, run_state
    from robustft.utils.fsio import atomic_write_bytes, atomic_write_text

    readme, plot = card_files(out)
    run = RunDir(run_dir) if run_dir else None
    result = run.read_result() if run else None
    curve = run.read_robustness() if run else None
    if result is not None and curve is not None:
        from robustft.run.figures import curve_png

        png = curve_png(curve, title=f"{config.get('name', 'model')}: accuracy under attack")
        if png is not None:
            atomic_write_bytes(plot, png)
    state = run_state(run_dir) if run_dir is not None else None
    if run_dir is not None:
        source = f"run `{run_dir.name}`"
    else:
        source = f"checkpoint `{Path(exported).name}`" if str(exported) else ""
    atomic_write_text(readme, render_card(out, metadata, config, result, curve, state, source))
    return readme
