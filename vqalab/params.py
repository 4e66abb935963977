"""Params files and the run's typed sections, known without torch: the strict YAML loader, the
typed defaults of every key (``RunConfig``), ``--set`` overrides and the parameter table.

Config flows one way: defaults (the classes below) → params file → ``--set key=value``. Errors name
the file, the key, the value and what was expected. Checking the ``model`` and ``data`` sections
against the registered builders needs the registries (and torch): ``vqalab.config.build_config``.
This module stays below them, so the report reads params files and shows the parameter table
without importing torch.
"""

from __future__ import annotations

import html
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vqalab.registry import ConfigError, did_you_mean, short_repr

# Anchors and aliases share one object per anchor, but echoing or walking the expanded tree can
# blow up ("billion laughs"): a params file expanding to more nodes than this is refused.
MAX_EXPANDED_NODES = 10_000
# Deeper nesting than this is no params file (and would exhaust Python's recursion while parsing).
MAX_NESTING = 64
# A params file (or sweep spec) larger than this is refused before it is read: real ones are a few KB.
MAX_PARAMS_BYTES = 2**20
# What train.device may be (``vqalab.devices`` says what auto means on this machine).
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
# Longest run name or experiment: they name folders and are copied into every record and checkpoint.
MAX_NAME_CHARS = 200


class YamlLoader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``) and refuses duplicate keys."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *anchor` merges are meant to be overridden
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else id(key_node)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {short_repr(key)} at lines {seen[key]} and {line} "
                        "(the second would silently replace the first: keep one)", key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    ),
    list("-+0123456789."),
)


class YamlTooLarge(yaml.YAMLError):
    """Valid YAML, but past a limit no params file comes near (size, nesting, alias expansion)."""


def expanded_size(node: yaml.Node, limit: int) -> int:
    """Nodes in the tree once every alias is expanded, counted without expanding (stops past ``limit``).

    Raises ``YamlTooLarge`` for a tree nested deeper than MAX_NESTING once expanded (an alias
    nests its anchor's levels where it stands).
    """
    seen: dict[int, tuple[int, int]] = {}  # id(node) → (expanded size, levels below and including it)

    def visit(n: yaml.Node, depth: int) -> tuple[int, int]:
        if depth > MAX_NESTING:  # also bounds this recursion along a chain of aliases
            raise YamlTooLarge(f"values nested more than {MAX_NESTING} levels deep (at line "
                               f"{n.start_mark.line + 1}): a params file needs a few levels")
        if id(n) not in seen:
            seen[id(n)] = (limit + 1, MAX_NESTING + 1)  # a recursive alias counts as too large
            children = ([c for pair in n.value for c in pair] if isinstance(n, yaml.MappingNode)
                        else n.value if isinstance(n, yaml.SequenceNode) else [])
            found = [visit(c, depth + 1) for c in children]
            seen[id(n)] = (min(1 + sum(f[0] for f in found), limit + 1),
                           1 + max((f[1] for f in found), default=0))
        size, levels = seen[id(n)]
        if depth + levels > MAX_NESTING + 1:
            raise YamlTooLarge(f"values nested more than {MAX_NESTING} levels deep (at line "
                               f"{n.start_mark.line + 1}): a params file needs a few levels")
        return size, levels

    return visit(node, 0)[0]


class _AliasCounter(YamlLoader):
    """Counts the aliases it composes (to tell a large file from an alias bomb)."""

    aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
        return super().compose_node(parent, index)


def check_nesting(text: str) -> None:
    """Refuse nesting deeper than MAX_NESTING from the parser's events, stopping as soon as it is
    reached: composing 20,000 levels would take seconds and end in a RecursionError."""
    depth = 0
    for event in yaml.parse(text, Loader=YamlLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_NESTING:
                raise YamlTooLarge(f"values nested more than {MAX_NESTING} levels deep (at line "
                                   f"{event.start_mark.line + 1}): a params file needs a few levels")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def load_yaml_text(text: str) -> Any:
    """Parse YAML with ``YamlLoader``, refusing documents whose aliases expand past MAX_EXPANDED_NODES
    values and documents nested deeper than MAX_NESTING."""
    check_nesting(text)
    loader = _AliasCounter(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YamlTooLarge(f"values nested more than {MAX_NESTING} levels deep: a params file "
                                 "needs a few levels") from None
        if node is None:
            return None
        if expanded_size(node, MAX_EXPANDED_NODES) > MAX_EXPANDED_NODES:
            if loader.aliases:
                raise YamlTooLarge(f"anchors and aliases expand to more than {MAX_EXPANDED_NODES} values "
                                     "(a params file needs far fewer: write the values out)")
            raise YamlTooLarge(f"more than {MAX_EXPANDED_NODES} values (a params file needs far fewer)")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def yaml_problem(err: yaml.YAMLError) -> str:
    """One line saying what is wrong and where, without quoting the file (it may be anything)."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        context = f" ({err.context})" if err.context else ""
        return f"{err.problem}{context} at line {mark.line + 1}, column {mark.column + 1}"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    size = path.stat().st_size
    if size > MAX_PARAMS_BYTES:
        raise ConfigError(f"{path}: {size:,} bytes; a params file is at most {MAX_PARAMS_BYTES:,} bytes "
                          "(params.MAX_PARAMS_BYTES): is this the right file?")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}): "
                          "save the file as UTF-8") from None
    try:
        return load_yaml_text(text)
    except YamlTooLarge as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(err)}") from None


def parse_value(text: str, key: str = "") -> Any:
    """Parse the right-hand side of ``--set key=value`` with the same rules as the params file."""
    try:
        return load_yaml_text(text)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or yaml_problem(err)
        raise ConfigError(f"--set {key}: value {short_repr(text)} is not valid YAML ({problem}); "
                          "quote lists and strings, e.g. --set 'model.cnn_channels=[16, 32]'") from None


def _range(text: str) -> dict:
    return {"range": text}


# Integers beyond this do not fit torch's int64 (and nothing sensible is that large).
MAX_INT = 2**63 - 1
UnitInterval = Annotated[float, Field(ge=0, lt=1)]


class Section(BaseModel):
    # allow_inf_nan: `lr: .inf` or `1e400` (which YAML reads as inf) is refused like any bad value.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _bounded_ints(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise ValueError(f"too large: expected at most {MAX_INT}")
        return value


class OptimConfig(Section):
    name: Literal["adam", "adamw", "sgd"] = Field("adam", description="optimizer")
    lr: float = Field(1e-3, gt=0, description="peak learning rate", json_schema_extra=_range("1e-5 … 1e-2"))
    betas: tuple[UnitInterval, UnitInterval] = Field(
        (0.9, 0.999), description="Adam β1, β2 (momentum of the gradient and its square)",
        json_schema_extra=_range("β1 0.8 … 0.95, β2 0.95 … 0.999"),
    )
    eps: float = Field(1e-8, gt=0, description="Adam ε added to the denominator", json_schema_extra=_range("1e-9 … 1e-6"))
    weight_decay: float = Field(0.0, ge=0, description="L2 (adam/sgd) or decoupled (adamw) weight decay", json_schema_extra=_range("0 … 0.1"))
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (sgd only)", json_schema_extra=_range("0.8 … 0.99"))


class ScheduleConfig(Section):
    name: Literal["constant", "step", "cosine"] = Field("constant", description="learning-rate schedule after warm-up")
    warmup_steps: int = Field(0, ge=0, description="optimizer steps of linear warm-up from 0 to lr", json_schema_extra=_range("0 … 5% of all steps"))
    step_size: int = Field(50, ge=1, description="step: epochs between LR drops (StepLR step)", json_schema_extra=_range("10 … 100"))
    gamma: float = Field(0.1, gt=0, le=1, description="step: LR multiplier at each drop", json_schema_extra=_range("0.1 … 0.5"))
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine: final LR as a fraction of lr", json_schema_extra=_range("0 … 0.1"))


class TrainConfig(Section):
    epochs: int = Field(10, ge=1, le=1_000_000, description="passes over the training split", json_schema_extra=_range("5 … 100"))
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (None: no limit)")
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        128, description="samples per optimizer micro-batch; auto: the largest batch on the throughput plateau "
                         "whose peak memory fits train.max_memory_fraction, measured before training",
        json_schema_extra=_range("32 … 600, or auto"))
    max_memory_fraction: float = Field(0.9, gt=0, le=1, description="batch_size auto: share of the device's memory "
                                       "the chosen batch may use at its peak (lab note 001)", json_schema_extra=_range("0.5 … 0.95"))
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step", json_schema_extra=_range("1 … 8"))
    clip_norm: float | None = Field(None, gt=0, description="clip the global gradient norm to this (None: off)", json_schema_extra=_range("0.25 … 5"))
    loss: Literal["ce", "bce"] = Field("ce", description="ce: cross-entropy on the target class; bce: on soft scores (VQA v2; refused on a data set without them) or on segmentation masks (required there)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing (train.loss ce; refused with bce)", json_schema_extra=_range("0 … 0.2"))
    mixup_alpha: float = Field(0.0, ge=0, description="mixup Beta(α, α) of images and labels, image classification only (0: off)", json_schema_extra=_range("0.1 … 0.4"))
    amp: Literal["off", "bf16", "fp16"] = Field("off", description="mixed precision: bf16 or fp16 autocast on the run's device, CUDA or CPU alike (fp16 with a GradScaler)")
    channels_last: bool = Field(False, description="store convolution weights and images NHWC (faster convolutions with AMP on recent GPUs)")
    compile: bool = Field(False, description="torch.compile the model in training, bench and lr-find (the first steps compile; checkpoints hold the plain model's weights)")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = Field("default", description="torch.compile mode, with train.compile")
    device: str = Field("auto", description="auto ($VQALAB_DEVICE when set, else CUDA when available, else CPU), cpu, cuda, cuda:N, mps")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes", json_schema_extra=_range("0 … CPU cores"))
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads during the run (None: the cores free to it: affinity less other processes' load, or its share of the machine; recorded in summary.json)", json_schema_extra=_range("1 … CPU cores"))
    early_stop_patience: int | None = Field(None, ge=1, description="stop after this many epochs without improvement (None: off)")
    early_stop_metric: Literal["val_acc", "val_loss"] = Field("val_acc", description="metric watched for the best epoch and early stopping")
    checkpoint_every: int = Field(1, ge=1, description="write a checkpoint every N epochs (and always at the last)")
    progress: bool = Field(True, description="show tqdm progress bars")
    tensorboard: bool = Field(True, description="write TensorBoard event files into <run>/tb/ (metrics.csv is written either way)")
    log_every_steps: int = Field(10, ge=1, description="TensorBoard: write train loss, LR, gradient norm and samples/s every N optimizer steps", json_schema_extra=_range("10 … 100"))

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not DEVICE_PATTERN.fullmatch(value):
            raise ValueError("expected auto, cpu, cuda, cuda:N (N = GPU index) or mps")
        return value

    @field_validator("batch_size", mode="wrap")
    @classmethod
    def _batch_size_or_auto(cls, value, handler):
        try:
            return handler(value)
        except ValidationError:  # one message instead of one per member of the union
            raise ValueError("expected an integer ≥ 1 or 'auto'") from None


class RunConfig(Section):
    experiment: str = Field("default", min_length=1, max_length=MAX_NAME_CHARS, description="runs/<experiment>/ groups related runs")
    name: str = Field("run", min_length=1, max_length=MAX_NAME_CHARS, description="short run name, the suffix of the run folder")
    seed: int = Field(0, ge=0, lt=2**32, description="seed for Python, NumPy and torch; always recorded")
    runs_root: str = Field("runs", description="folder holding all runs (relative to the project root)")
    model: dict[str, Any] = Field(default_factory=lambda: {"name": "vqa_mean_mlp"}, description="registry name and keyword arguments of the model")
    data: dict[str, Any] = Field(default_factory=lambda: {"name": "easy_vqa"}, description="registry name and keyword arguments of the data set")
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


SECTIONS = {"optim": OptimConfig, "schedule": ScheduleConfig, "train": TrainConfig}

# Keys a run reads only when another key has one of the values given; otherwise they are inert
# and left out of the config hash (``runs.config_hash``): a sweep over one trains a single run.
READ_ONLY_WITH = {
    "optim.betas": ("optim.name", ("adam", "adamw")),
    "optim.eps": ("optim.name", ("adam", "adamw")),
    "optim.momentum": ("optim.name", ("sgd",)),
    "schedule.step_size": ("schedule.name", ("step",)),
    "schedule.gamma": ("schedule.name", ("step",)),
    "schedule.min_lr_ratio": ("schedule.name", ("cosine",)),
    "train.max_memory_fraction": ("train.batch_size", ("auto",)),
}


def inert_keys(flat: dict[str, Any]) -> list[str]:
    """The keys of a flattened config (``{"optim.name": "adam", ...}``) that its run never reads."""
    return [key for key, (other, values) in READ_ONLY_WITH.items() if key in flat and flat.get(other) not in values]


def _valid_keys(model_cls: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name in model_cls.model_fields:
        keys.append(prefix + name)
        if name in SECTIONS and model_cls is RunConfig:
            keys += _valid_keys(SECTIONS[name], prefix=f"{name}.")
    return keys


def validation_message(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}': {did_you_mean(key, _valid_keys(RunConfig))}")
        else:
            lines.append(f"{source}: {key} = {short_repr(e.get('input'))}: {e['msg']}")
    return "\n".join(lines)


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is not a section")
        node = child
    node[last] = value


def parse_overrides(overrides: list[str] | None) -> dict:
    tree: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, text = item.split("=", 1)
        set_dotted(tree, key.strip(), parse_value(text, key.strip()))
    return tree


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge; ``update`` wins. ``model``/``data`` switch builder when ``name`` changes."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            if key in ("model", "data") and "name" in value and value["name"] != out[key].get("name"):
                out[key] = dict(value)
            else:
                out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parameter_table() -> list[dict]:
    """Every params key with default, type, meaning and range: rendered in reports and docs."""
    rows = []

    def walk(model_cls: type[BaseModel], prefix: str) -> None:
        for name, field in model_cls.model_fields.items():
            if prefix == "" and name in SECTIONS:
                walk(SECTIONS[name], f"{name}.")
                continue
            default = field.get_default(call_default_factory=True)
            extra = field.json_schema_extra or {}
            rows.append({
                "key": prefix + name,
                "default": default,
                "type": getattr(field.annotation, "__name__", str(field.annotation)).replace("typing.", ""),
                "meaning": field.description or "",
                "range": extra.get("range", "") if isinstance(extra, dict) else "",
            })

    walk(RunConfig, "")
    return rows


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def yaml_inline(value: Any) -> str:
    """``value`` as it would be written in a params file (``[0.9, 0.999]``, ``null``, ``1.0e-08``)."""
    text = yaml.safe_dump(_plain(value), default_flow_style=True, width=10_000).strip()
    return text[:-len("...")].strip() if text.endswith("...") else text


def type_text(annotation: Any) -> str:
    """A field's type for readers: ``one of adam, adamw, sgd``, ``int or None``, ``tuple[float, float]``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:  # Annotated[float, Field(ge=0)]: the bounds are in the range column
        return type_text(args[0])
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [type_text(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or None" if type(None) in args else "")
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_text(a) for a in args)}]" if args else name
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def parameter_rows() -> list[dict]:
    """``parameter_table()`` with defaults written as in a params file and readable types."""
    rows = []
    for row in parameter_table():
        section, _, name = row["key"].rpartition(".")
        field = (SECTIONS[section] if section else RunConfig).model_fields.get(name)
        kind = type_text(field.annotation) if field is not None else row["type"]
        rows.append({**row, "default": yaml_inline(row["default"]), "type": kind})
    return rows


def parameters_markdown() -> str:
    """docs/PARAMETERS.md: the parameter registry as a Markdown table."""
    def cell(text: str, code: bool = False) -> str:
        text = str(text).replace("\n", " ")
        # `<experiment>` would be read as an HTML tag outside a code span
        text = f"`{text}`" if code else html.escape(text, quote=False)
        return text.replace("|", "\\|")

    lines = [
        "# Parameters",
        "",
        "Every key of a run's params file (`params/train/*.yaml`, `build_config({...})` in notebooks,",
        "`vqalab train --set key=value`), with its default, type, meaning and recommended range.",
        "Generated from `vqalab.params.parameter_table()`; regenerate with",
        "`.venv/bin/python -m vqalab.params --parameters-doc docs/PARAMETERS.md`.",
        "`model` and `data` also take the keyword arguments of the registered builder they name.",
        "",
        "A key that a run never reads, given the others, is accepted and left out of the config hash",
        "(so a sweep over it trains one run and reuses it for the other values):",
        *(f"- `{key}`: read only when `{other}` is {' or '.join(values)}" for key, (other, values) in READ_ONLY_WITH.items()),
        "",
        "The config hash holds `train.device` as the type it resolves to (cpu, cuda) and each weights",
        "file a model loads (`model.*_weights`) as the SHA-256 of its bytes, not its path.",
        "",
        "| key | default | type | meaning | range |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in parameter_rows():
        lines.append("| " + " | ".join(cell(row[k], code=k in ("key", "default"))
                                        for k in ("key", "default", "type", "meaning", "range")) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vqalab.params", description="parameter registry")
    parser.add_argument("--parameters-doc", metavar="PATH", required=True,
                        help="write the parameter registry as Markdown (docs/PARAMETERS.md)")
    args = parser.parse_args(argv)
    Path(args.parameters_doc).write_text(parameters_markdown(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
