"""The typed schema of params.yaml: loaded once at the top of a stage, then passed down.

One schema for the whole file keeps params flat and discoverable: every key a stage can read is
declared here with its type, default and bounds. Unknown keys are errors (a typo in params.yaml
must not be silently ignored), and every error names the field, e.g.
``params.yaml: loader.crop_height: Input should be greater than 0``.

Every float is finite (``.inf`` or ``.nan`` in params.yaml is an error, in lists and tuples
too: a learning rate of ``.inf`` trains a NaN model that would otherwise be registered), and
sizes, rates and counts have upper bounds where a value past them can only be a typo or an
overflow: the ``MAX_*`` constants below, each far above any published setting.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from segflow.errors import SegflowError

# The one CRF schema: a leaf module (errors and io only), so parsing params.yaml does not
# import the CRF's maths, evaluation or Ray.
from segflow.postprocess.crf_params import CRF_FIELDS, CRFParams

#: Every dataset.name; segflow.data.datasets maps each to its adapter (and checks it has one).
DATASETS = ("synthetic", "camvid", "voc", "cityscapes", "ade20k", "folder")
DATA_ROOT_ENV = "SEGFLOW_DATA_ROOT"
SYNTHETIC_DIR = "data/synthetic"
#: A Ray run's name is an identifier: it becomes a directory under the storage path, and a
#: name that could climb out of it (``..``, ``a/../..``, an absolute path) must never parse.
RUN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
#: Object stores a storage path may name (pyarrow.fs opens them; segflow.storage).
STORAGE_SCHEMES = ("s3", "gs")
#: ``scheme://bucket/prefix``: the bucket by S3's and GCS's rules, then run-name-like segments,
#: so that no URI climbs out of its prefix (``..``), hides credentials (``key:secret@``) or
#: carries a query string a filesystem would interpret.
STORAGE_URI_PATTERN = (
    r"^(?P<scheme>[a-z0-9]+)://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])"
    r"(?P<prefix>(/[A-Za-z0-9][A-Za-z0-9_.-]{0,127})*)/?$"
)
#: Object stores shard.uri may name (through pyarrow.fs); anything else with a scheme is refused.
SHARD_URI_SCHEMES = STORAGE_SCHEMES

#: Pixels of an image side: a resize, crop or sliding window. 8K is 4x Cityscapes' 2048 and
#: above common aerial tiles; a typo such as 10**6 would allocate terabytes before failing.
MAX_SIDE = 8192
#: Image rescaling factors (loader augmentation, multi-scale evaluation): DeepLab uses 0.5-2.0;
#: 8x of an 8K side is already a 64K one.
MAX_SCALE = 8.0
#: Learning rates: SGD on segmentation uses 1e-3..0.1 (DeepLab v3+ 0.007, x10 on the head);
#: a rate past 10 diverges on the first steps and trains a NaN model.
MAX_LR = 10.0
#: Weight decay: 1e-5..5e-2 in practice (AdamW's 0.05); 1 would shrink every weight to 0.
MAX_WEIGHT_DECAY = 1.0
#: Epochs of a run: Cityscapes' 80k iterations are ~215 epochs, small medical sets ~1000.
MAX_EPOCHS = 10_000
#: Images per step on one worker: 1024 small crops fit a large GPU; more is a typo.
MAX_BATCH = 1024
#: Model options the model builder takes as its own arguments (segflow.models.registry.build):
#: in ``model_options`` they would collide with the values of ``train.*`` and the dataset's.
RESERVED_MODEL_OPTIONS = ("num_classes", "backbone", "output_stride", "pretrained")


class _Section(BaseModel):
    # allow_inf_nan: .inf and .nan are not numbers a user means (checked for every float,
    # also inside tuples and lists; model_options' free-form values by _check_model_options).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def check_storage_uri(value: str) -> None:
    """A local path passes as it is (the user's own disk); a URI must be
    ``s3://bucket/prefix`` or ``gs://bucket/prefix`` (:data:`STORAGE_URI_PATTERN`), with no
    ``.``/``..`` segment: whatever a run deletes or resumes under it stays under the prefix."""
    if "://" not in value:
        return
    match = re.fullmatch(STORAGE_URI_PATTERN, value)
    if match is None or match["scheme"] not in STORAGE_SCHEMES:
        raise ValueError(
            f"must be a local path or scheme://bucket/prefix with scheme in {STORAGE_SCHEMES}, "
            "a bucket name (a-z, 0-9, '.', '-') and path segments of letters, digits, '_', '-', "
            "'.'"
        )
    if ".." in match["bucket"] or any(part in (".", "..") for part in match["prefix"].split("/")):
        raise ValueError("'.' and '..' may not appear as a bucket or path segment")


def _check_model_options(options: dict, where: str) -> None:
    """No option the builder takes itself, no non-finite number anywhere in the values.

    ``where`` prefixes the option's name in the message (``train.model_options.``): a rule that
    names its own field is printed as it is by :func:`parse_params`.
    """

    def non_finite(value: object) -> bool:
        if isinstance(value, float):
            return not math.isfinite(value)
        if isinstance(value, list):
            return any(non_finite(v) for v in value)
        if isinstance(value, dict):
            return any(non_finite(v) for v in value.values())
        return False

    for name, value in options.items():
        if name in RESERVED_MODEL_OPTIONS:
            source = "the dataset's class count" if name == "num_classes" else f"train.{name}"
            raise ValueError(
                f"{where}{name}: segflow passes {name} to the model itself (from {source}); "
                f"remove it from model_options"
            )
        if non_finite(value):
            raise ValueError(f"{where}{name}: numbers must be finite (got {value!r})")


class DatasetParams(_Section):
    name: Literal[DATASETS] = "synthetic"
    #: Root of the dataset on disk (a dependency of the ingest stage). The synthetic dataset is
    #: generated into data/synthetic by the synthesize stage. $SEGFLOW_DATA_ROOT overrides it
    #: when a stage script runs outside DVC.
    root: str = "data/synthetic"
    #: Which split the evaluate stage scores (a CamVid copy without test/: use val).
    test_split: str = "test"
    #: folder datasets: YAML file with the class table (``classes:`` a list of {id, name,
    #: color}; optionally each class's stored mask value(s), ``value: 255``, and ``ignore:``
    #: beside it); None: ``<root>/classes.yaml``.
    classes_file: str | None = None
    #: validate fails when more than this share of a split's mask pixels is ignored (255 after
    #: the value mapping): usually masks whose values the class table does not map (0/255).
    max_ignored_share: float = Field(0.5, ge=0, le=1)
    #: voc: add SBD's train_aug list (ImageSets/Segmentation/train_aug.txt, SegmentationClassAug/).
    voc_train_aug: bool = False
    #: Every dataset file (image, mask, class table, split list) must resolve inside
    #: dataset.root: a symlink out of it (to /etc/shadow, to another user's data) is refused,
    #: because ingest would read it and write its hash and path into the manifest. True allows
    #: links out, for a root that is a farm of links into a shared store.
    follow_symlinks_outside_root: bool = False
    #: Largest image or mask (width x height) that is decoded; the header is read first, so a
    #: decompression bomb (a small PNG that says 40000x40000) is refused before any decode. At
    #: most Pillow's own hard limit (2 x PIL.Image.MAX_IMAGE_PIXELS), which refuses larger ones.
    max_pixels: int = Field(100_000_000, gt=0, le=178_956_970)
    #: A regular expression whose first group, searched in a sample's id, is the sample's group:
    #: what its images share beyond their labels (a video sequence, a patient, a scene, a
    #: site). CamVid's ids are ``<sequence>_<frame>``: ``^([^_]+)_``. null: no groups.
    group_pattern: str | None = None
    #: Groups of train held out as the split ``dev``: a development split that shares no group
    #: with train. When set, the best epoch, the CRF choice and the promotion gate are decided
    #: on dev (val is still scored and reported); the test split decides nothing. Needs
    #: group_pattern.
    holdout_groups: list[Annotated[str, Field(min_length=1)]] = []

    def resolved_root(self) -> Path:
        return Path(os.environ.get(DATA_ROOT_ENV) or self.root)

    @model_validator(mode="after")
    def _groups(self) -> DatasetParams:
        if self.group_pattern is not None:
            try:
                groups = re.compile(self.group_pattern).groups
            except re.error as exc:
                raise ValueError(f"group_pattern: not a regular expression ({exc})") from None
            if groups < 1:
                raise ValueError("group_pattern: needs a group, e.g. '^([^_]+)_'")
        if self.holdout_groups and self.group_pattern is None:
            raise ValueError("holdout_groups needs group_pattern (how a sample's group is read)")
        if self.test_split in ("train", "dev"):
            raise ValueError(
                f"test_split: {self.test_split!r} is a split segflow trains or decides on"
            )
        return self


class SyntheticParams(_Section):
    """Size of the embedded street-scene dataset that ingest generates deterministically."""

    #: A demo dataset: beyond 100k images per split, use a real dataset.
    num_train: int = Field(48, gt=0, le=100_000)
    num_val: int = Field(12, gt=0, le=100_000)
    num_test: int = Field(12, gt=0, le=100_000)
    height: int = Field(96, ge=32, le=MAX_SIDE)
    width: int = Field(128, ge=32, le=MAX_SIDE)
    seed: int = 0


class ShardParams(_Section):
    #: Where the shards live: a local directory (relative to the project) or an object-store
    #: prefix, ``s3://bucket/prefix`` (any S3-compatible endpoint via ``AWS_ENDPOINT_URL``) or
    #: ``gs://bucket/prefix``; every node then reads them through a per-node cache.
    uri: str = "data/shards"
    #: Upper bound on the rows in one .arrow file; bounds the memory a reader maps at once.
    rows_per_shard: int = Field(64, gt=0)
    #: Optional resize to a training scale before encoding (masks use nearest neighbour).
    resize_height: int | None = Field(None, gt=0, le=MAX_SIDE)
    resize_width: int | None = Field(None, gt=0, le=MAX_SIDE)
    #: Image encoding inside the shards: png is lossless, jpg is smaller and faster to decode.
    image_codec: Literal["png", "jpg"] = "png"
    jpeg_quality: int = Field(95, ge=1, le=100)

    @field_validator("uri")
    @classmethod
    def _known_scheme_with_bucket(cls, uri: str) -> str:
        return check_shard_uri(uri)

    @model_validator(mode="after")
    def _both_or_neither(self) -> ShardParams:
        if (self.resize_height is None) != (self.resize_width is None):
            raise ValueError("resize_height and resize_width must be set together")
        return self


def check_shard_uri(uri: str) -> str:
    """``uri`` as given if it is a local path or ``<scheme>://<bucket>[/prefix]`` of a known
    object store; a ValueError saying which rule it breaks otherwise (no trailing slash kept)."""
    if not uri.strip():
        raise ValueError("must name a directory or an s3:// or gs:// prefix")
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", uri)
    if match is None:
        return uri
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme not in SHARD_URI_SCHEMES:
        raise ValueError(f"scheme {scheme}:// is not one of {', '.join(SHARD_URI_SCHEMES)}")
    bucket = rest.split("/", 1)[0]
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]", bucket):
        raise ValueError(f"{uri!r} names no bucket (expected {scheme}://bucket/prefix)")
    return f"{scheme}://{rest.rstrip('/')}"


_Unit = Annotated[float, Field(ge=0, le=1)]
_Std = Annotated[float, Field(gt=0, le=1)]


class LoaderParams(_Section):
    crop_height: int = Field(96, gt=0, le=MAX_SIDE)
    crop_width: int = Field(128, gt=0, le=MAX_SIDE)
    scale_min: float = Field(0.5, gt=0, le=MAX_SCALE)
    scale_max: float = Field(2.0, gt=0, le=MAX_SCALE)
    hflip: float = Field(0.5, ge=0, le=1)
    #: Share of training crops placed on a pixel of a rare class: a class present in the image,
    #: drawn with weight 1 / sqrt(its share of the train pixels); 0: every crop uniform.
    rare_class_crop: float = Field(0.0, ge=0, le=1)
    #: Strength of brightness/contrast/saturation jitter (0 switches it off).
    color_jitter: float = Field(0.2, ge=0, le=1)
    #: Per-channel (RGB) normalisation of pixels scaled to [0, 1]: the mean lies in [0, 1]; the
    #: std divides, so 0 is a division by zero, and above 1 (the widest spread of [0, 1] data is
    #: 0.5) it can only be a value meant for 0-255 pixels.
    mean: tuple[_Unit, _Unit, _Unit] = (0.485, 0.456, 0.406)
    std: tuple[_Std, _Std, _Std] = (0.229, 0.224, 0.225)
    #: DataLoader processes per training worker; each holds a copy of the loader's state.
    num_workers: int = Field(0, ge=0, le=256)
    #: Who decodes and augments the train stage's batches. mmap: each training worker (and its
    #: ``num_workers`` DataLoader processes) memory-maps the shards; ray_data: Ray Data tasks
    #: on any node with free CPUs, streamed to the training workers (validation stays mmap).
    backend: Literal["mmap", "ray_data"] = "mmap"

    @model_validator(mode="after")
    def _scale_order(self) -> LoaderParams:
        if self.scale_min > self.scale_max:
            raise ValueError("scale_min must not exceed scale_max")
        return self


class RayRunParams(_Section):
    """Where and how a stage's workers run: the fields ``train`` and ``search`` share.

    Both stages launch their core loop through one Ray Train launcher
    (:mod:`segflow.train.distributed`), or in this process without Ray.
    """

    #: ray: Ray Train TorchTrainer (a local Ray, or the cluster in $RAY_ADDRESS);
    #: local: the plain PyTorch loop in this process (one device, no Ray).
    launcher: Literal["ray", "local"] = "ray"
    #: Ray Train workers (DDP ranks); each reads its own part of the shards.
    num_workers: int = Field(1, gt=0)
    use_gpu: bool = False
    #: CPUs reserved per worker; also the worker's torch thread count.
    cpus_per_worker: int = Field(1, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0)
    #: Worker crashes to recover from (each resumes at the last checkpoint); -1: unlimited.
    max_failures: int = Field(1, ge=-1)
    #: Where Ray Train keeps run state and checkpoints: a local directory (relative to the repo)
    #: or an object store, s3://bucket/prefix (endpoint and keys from $AWS_ENDPOINT_URL and
    #: $AWS_*; MinIO works the same) or gs://bucket/prefix: what a cluster whose nodes share no
    #: disk needs, since a worker on another node writes the checkpoints.
    storage_path: str = Field("ray_results", min_length=1)
    #: Run name (letters, digits, '_', '-', '.'; a directory under storage_path); null makes a
    #: fresh time-stamped one. Naming an earlier run (same storage_path) resumes it from its
    #: last checkpoint.
    run_name: str | None = Field(None, pattern=RUN_NAME_PATTERN)
    #: MLflow experiment of the runs ($MLFLOW_TRACKING_URI picks the server).
    experiment: str = Field("segflow", min_length=1)

    @field_validator("storage_path")
    @classmethod
    def _storage_uri(cls, value: str) -> str:
        check_storage_uri(value)
        return value


class CRFRNNParams(_Section):
    """CRF as RNN (``train.crf_rnn``): the dense CRF's mean-field iterations as a head trained
    with the network (segflow.models.crf_rnn; Zheng et al. 2015, ConvCRF's window)."""

    #: Mean-field iterations unrolled (the paper: 5 in training).
    iterations: int = Field(5, ge=1, le=20)
    #: Neighbourhood of each pixel, in cells of the (downsampled) grid; odd. Exact within it.
    window: int = Field(11, ge=3, le=31)
    #: Messages on a grid this many times coarser (ConvCRF's blur): reach = window // 2 x this.
    downsample: int = Field(1, ge=1, le=16)
    #: Bilateral kernel: position scale (input pixels) and intensity scale (normalised input:
    #: 1 ~ one std of the dataset's intensities).
    theta_alpha: float = Field(5.0, gt=0, le=1000)
    theta_beta: float = Field(0.2, gt=0, le=100)
    #: Spatial (smoothness) kernel's position scale, in input pixels.
    theta_gamma: float = Field(3.0, gt=0, le=1000)
    #: Train only the CRF on a frozen network (the paper's second stage); false: end to end.
    freeze_net: bool = False

    @field_validator("window")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"must be odd (got {value})")
        return value


class TrainParams(RayRunParams):
    """Model, optimisation, hardware and tracking of the train stage.

    The defaults train a small DeepLab v3+ on the synthetic dataset on two CPU cores in a couple
    of minutes; a GPU run sets ``use_gpu: true`` and a bigger model, batch and epoch count.
    """

    model: str = "deeplabv3plus"
    backbone: str | None = "resnet18"
    output_stride: int | None = 16
    #: Local file of ImageNet backbone weights in torchvision's key format, or null.
    pretrained: str | None = None
    #: Extra constructor options of the model, e.g. {width: 16} for a small U-Net or
    #: {aspp_channels: 64} for a narrow DeepLab head.
    #: Not num_classes, backbone, output_stride or pretrained (RESERVED_MODEL_OPTIONS).
    model_options: dict[str, int | float | str | bool | list | dict] = {}
    #: CRF as RNN on the model's logits, trained with it (segflow.models.crf_rnn); null: none.
    #: E.g. {iterations: 5, window: 11, downsample: 4}.
    crf_rnn: CRFRNNParams | None = None
    #: A segflow checkpoint (an earlier run's models/best.pt) whose trained weights start the
    #: network (mmsegmentation's load_from): with crf_rnn's freeze_net, the CRF-as-RNN paper's
    #: second stage. A network without the CRF head fills the head's ``net``. Read with
    #: weights_only=True; not a DVC dependency. null: freshly initialised weights.
    init_from: str | None = None
    epochs: int = Field(8, gt=0, le=MAX_EPOCHS)
    #: Train to this many minutes of wall time (null: off, train.epochs as they are): the LR
    #: decays with the fraction of it spent and the run stops at the last epoch that fits
    #: (segflow.train.budget); train.epochs is then an upper bound. A year at most (a typo).
    time_budget_min: float | None = Field(None, gt=0, le=525_600)
    #: With a budget: the minutes the stages after training (crf_tune, evaluate, register)
    #: take on a machine that trains at time_budget_reference_ips images/s. Where training
    #: runs k times slower, they are expected to take k times longer too, and training ends
    #: (k - 1) x this many minutes before its budget: the whole dvc repro keeps its total.
    #: Training keeps at least half its budget (then the total is overrun, and the log says
    #: so). 0: the budget is training's alone.
    time_budget_after_min: float = Field(0.0, ge=0, le=525_600)
    #: The training images/s (all workers) at which time_budget_after_min was measured; null:
    #: no scaling (training keeps its whole budget).
    time_budget_reference_ips: float | None = Field(None, gt=0, le=1_000_000)
    #: Images per step on each worker (the global batch is batch_size x num_workers).
    batch_size: int = Field(8, gt=0, le=MAX_BATCH)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0, le=MAX_LR)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0, le=MAX_WEIGHT_DECAY)
    #: The poly schedule's (1 - t)^power; DeepLab's 0.9; above 10 the LR is ~0 after a few %.
    poly_power: float = Field(0.9, ge=0, le=10)
    warmup_iters: int = Field(0, ge=0, le=10_000_000)
    #: ce | ohem (hard pixels only) | focal (Lin et al.) | lovasz (Lovasz-softmax, IoU surrogate).
    loss: Literal["ce", "ohem", "focal", "lovasz"] = "ce"
    #: focal's gamma: (1 - p_true)^gamma scales each pixel's CE; 0 is plain CE.
    focal_gamma: float = Field(2.0, ge=0, le=10)
    #: median_frequency (SegNet); inverse_log (ENet) and sqrt are gentler on the large classes.
    class_weights: Literal["none", "median_frequency", "inverse_log", "sqrt"] = "none"
    #: Clip every class weight at this value; 0: no clip.
    class_weight_max: float = Field(0.0, ge=0)
    dice_weight: float = Field(0.0, ge=0)
    ohem_thresh: float = Field(0.7, gt=0, le=1)
    ohem_min_kept: int = Field(100_000, gt=0)
    #: Clip the global gradient norm to this value; 0 switches clipping off.
    grad_clip: float = Field(0.0, ge=0)
    #: Mixed precision. auto: bf16 on GPUs that have it (fp16 + grad scaler on older ones) and
    #: on CPUs with AVX512-BF16 or AMX, fp32 elsewhere; true: always (fp16 on GPUs without
    #: bf16); false: fp32.
    bf16: Literal["auto"] | bool = "auto"
    #: LR of everything outside the backbone (heads, decoders) = lr x this; 10 is DeepLab's.
    head_lr_mult: float = Field(1.0, gt=0, le=100)
    #: EMA of the weights, updated every step with this decay (e.g. 0.999); 0: off. When on,
    #: the average is validated and saved as the model.
    ema_decay: float = Field(0.0, ge=0, lt=1)
    #: Warm the EMA's decay up from 0 (step t uses min(ema_decay, (1 + t) / (10 + t)), timm's
    #: and mmseg's warm-up): without it the average starts as the random initial weights and
    #: still holds a share of them after hundreds of steps, which costs a short run points.
    ema_warmup: bool = False
    #: Batch statistics of BatchNorm layers across the DDP workers (SyncBatchNorm).
    sync_bn: bool = False
    #: torch.compile the model for training (see benchmarks/ for whether it pays).
    compile: bool = False
    channels_last: bool = True
    #: Bitwise-reproducible kernels (slower); seeds are always set.
    deterministic: bool = False
    #: Print a progress line every this many steps (plain lines, readable in a CI log).
    log_every: int = Field(10, gt=0)
    #: A step whose loss is not finite (nan, inf) is skipped (no weight update: one bad batch
    #: must not poison the weights); this many in a row mean the run diverged, and training
    #: stops with an error before any checkpoint of it replaces a good one.
    nan_patience: int = Field(3, gt=0)
    #: The train stage's run directories (checkpoints, ~100 MB each) kept in storage_path,
    #: newest by modification time; older ones are deleted when the stage starts, never the
    #: run it continues. Runs you named yourself (run_name) are never deleted.
    keep_runs: int = Field(3, ge=0)

    cpus_per_worker: int = Field(2, gt=0)
    experiment: str = Field("segflow", min_length=1)

    @model_validator(mode="after")
    def _model_options(self) -> TrainParams:
        _check_model_options(self.model_options, "train.model_options.")
        return self


class CRFTuneParams(_Section):
    """The crf_tune stage: a Ray Tune sweep of dense-CRF settings on val, best mIoU wins.

    Each CRF field is one value (fixed) or a list of values: ``search: grid`` tries every
    combination of the lists; ``search: optuna`` draws ``num_samples`` points, each list a
    categorical choice. The default grid (8 points) centres on DeepLab v2's VOC values. What a
    value may be is :class:`segflow.postprocess.crf.CRFParams`'s rule, the one CRF schema;
    an error names the field as ``crf.<field>``.
    """

    search: Literal["grid", "optuna"] = "grid"
    #: Optuna trials (a grid runs each point once).
    num_samples: int = Field(8, gt=0, le=10_000)
    w_gauss: float | Annotated[list[float], Field(min_length=1)] = 3.0
    sigma_gamma: float | Annotated[list[float], Field(min_length=1)] = 3.0
    w_bilateral: float | Annotated[list[float], Field(min_length=1)] = [3.0, 5.0]
    sigma_alpha: float | Annotated[list[float], Field(min_length=1)] = [30.0, 80.0]
    sigma_beta: float | Annotated[list[float], Field(min_length=1)] = [3.0, 5.0]
    iterations: int | Annotated[list[int], Field(min_length=1)] = 10
    #: Predict and sweep the first this many val images (shard order); null: all of them.
    max_images: int | None = Field(12, gt=0)
    #: CPUs reserved per Tune trial (a trial runs its images one after another).
    cpus_per_trial: float = Field(1.0, gt=0)
    #: Saved probabilities: uint8 (1/255 steps, smallest) or float16.
    prob_dtype: Literal["uint8", "float16"] = "uint8"
    #: Images per Ray task when the evaluate stage runs the tuned CRF over the test split.
    images_per_task: int = Field(1, gt=0)

    def space(self) -> dict:
        """The sweep space in :mod:`segflow.tune.crf_search`'s format (lists = values tried)."""
        return {name: getattr(self, name) for name in CRF_FIELDS}

    @model_validator(mode="after")
    def _valid_crf_values(self) -> CRFTuneParams:
        for name in CRF_FIELDS:
            value = getattr(self, name)
            for v in value if isinstance(value, list) else [value]:
                try:
                    CRFParams.from_dict({name: v})
                except SegflowError as exc:
                    raise ValueError(str(exc)) from None
        return self


class TuneModelChoice(_Section):
    """One architecture a train sweep may pick; it replaces all four model keys of ``train``."""

    model: str
    backbone: str | None = None
    output_stride: int | None = None
    model_options: dict[str, int | float | str | bool | list | dict] = {}

    @field_validator("model_options")
    @classmethod
    def _model_options(cls, value: dict) -> dict:
        _check_model_options(value, "")
        return value


def _range(high: float) -> object:
    """[low, high] of a log-uniform sweep, both in (0, ``high``]."""
    bounded = Annotated[float, Field(gt=0, le=high)]
    return Annotated[list[bounded], Field(min_length=2, max_length=2)]


_LrRange = _range(MAX_LR)
_DecayRange = _range(MAX_WEIGHT_DECAY)
_Side = Annotated[int, Field(gt=0, le=MAX_SIDE)]
_Batch = Annotated[int, Field(gt=0, le=MAX_BATCH)]
_Crop = Annotated[list[_Side], Field(min_length=2, max_length=2)]


class TuneParams(_Section):
    """The tune stage: a Ray Tune sweep of training hyper-parameters (off by default).

    Each trial trains ``max_epochs`` epochs with the plain loop in one process; ASHA stops the
    weak trials early on val mIoU. The best setting goes to reports/best_train_params.yaml, and
    with ``enabled`` the train stage trains with it (a DVC dependency: tune runs first).
    """

    enabled: bool = False
    num_samples: int = Field(8, gt=0, le=10_000)
    #: Epochs per trial (ASHA's max_t); the LR schedule spans these epochs.
    max_epochs: int = Field(4, gt=0, le=MAX_EPOCHS)
    grace_period: int = Field(1, gt=0)
    #: ASHA keeps 1/reduction_factor of the trials at each rung (2-4 in practice).
    reduction_factor: float = Field(2, gt=1, le=100)
    search: Literal["optuna", "random"] = "optuna"
    cpus_per_trial: float = Field(2, gt=0)
    gpus_per_trial: float = Field(0, ge=0)
    #: [low, high], sampled log-uniformly.
    lr: _LrRange = [0.005, 0.1]
    weight_decay: _DecayRange = [1e-5, 1e-3]
    batch_size: Annotated[list[_Batch], Field(min_length=1)] = [4, 8]
    #: [height, width] choices; empty: the loader's crop.
    crops: list[_Crop] = []
    #: Architecture choices; empty: the train stage's model.
    models: list[TuneModelChoice] = []

    @model_validator(mode="after")
    def _ranges(self) -> TuneParams:
        for name in ("lr", "weight_decay"):
            low, high = getattr(self, name)
            if not low < high:
                raise ValueError(f"{name} must be [low, high] with low < high")
        if self.grace_period > self.max_epochs:
            raise ValueError("grace_period must not exceed max_epochs")
        return self


class SearchParams(RayRunParams):
    """The search stage: Auto-DeepLab's architecture search (first-order DARTS), off by default.

    The defaults are a tiny supernet that searches the synthetic dataset in about 2 minutes on
    one CPU thread; the paper's values (Liu et al. 2019, Cityscapes) are in the comments and in
    params.yaml. trainA (network weights) and trainB (alpha, beta) are the two halves of the
    train split, drawn by ``seed``.
    """

    enabled: bool = False
    #: L, network layers (paper 12; the supernet's memory grows with L x B).
    layers: int = Field(4, gt=0, le=64)
    #: F, filters per block at stride 4 (paper 8 in search, 20-64 when retraining).
    filter_multiplier: int = Field(2, gt=0, le=256)
    #: B, blocks per cell (paper 5).
    blocks: int = Field(3, gt=0, le=16)
    #: Epochs of the search (paper 40); alpha and beta are updated from warmup_epochs on (20).
    epochs: int = Field(4, gt=0, le=MAX_EPOCHS)
    warmup_epochs: int = Field(2, ge=0)
    #: Images per step on each worker, from trainA and from trainB (paper 2 per GPU).
    batch_size: int = Field(4, gt=0, le=MAX_BATCH)
    #: Search crop (paper 321 x 321).
    crop_height: int = Field(48, gt=0, le=MAX_SIDE)
    crop_width: int = Field(64, gt=0, le=MAX_SIDE)
    #: Network weights: SGD, momentum, cosine LR from lr to lr_min (paper 0.025 -> 0.001).
    lr: float = Field(0.025, gt=0, le=MAX_LR)
    lr_min: float = Field(0.001, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(3e-4, ge=0, le=MAX_WEIGHT_DECAY)
    #: Architecture (alpha, beta): Adam (paper 3e-3, weight decay 1e-3). Adam moves each
    #: entry by about arch_lr per step whatever the gradient's size, so 3e-3 needs hundreds of
    #: architecture steps to move a logit by 1: the paper's ~15,000 do, a CPU search of a few
    #: hundred does not (its entropies stay near 1); raise it for short searches (0.1 found the
    #: path of tests/search/test_search_learns.py in 40 steps).
    arch_lr: float = Field(3e-3, gt=0, le=MAX_LR)
    arch_weight_decay: float = Field(1e-3, ge=0, le=MAX_WEIGHT_DECAY)
    #: DARTS-'s auxiliary skip (Chu et al. 2021) against a collapse to parameter-free ops:
    #: every mixed op adds ``aux_skip x input`` outside the softmax, the coefficient decaying
    #: linearly from this value to 0 over the search (0: off; the paper's value is 1).
    aux_skip: float = Field(0.0, ge=0, le=10)
    #: How the supernet adds the class scores of its last layer's heads (one per stride).
    #: sum: as the paper; marginal: each weighted by the beta chain's probability of ending at
    #: its stride, so beta gets a gradient from which output stride serves the task (with sum,
    #: a node's scale is undone by the BatchNorm after it, see segflow/search/supernet.py).
    head_weights: Literal["sum", "marginal"] = "sum"
    experiment: str = Field("segflow-search", min_length=1)

    @model_validator(mode="after")
    def _order(self) -> SearchParams:
        if self.warmup_epochs >= self.epochs:
            raise ValueError("warmup_epochs must be less than epochs (no architecture update)")
        if self.lr_min > self.lr:
            raise ValueError("lr_min must not exceed lr")
        return self


_Scale = Annotated[float, Field(gt=0, le=MAX_SCALE)]


class EvaluateParams(_Section):
    """Inference mode of the crf_tune and evaluate stages, and what the report shows."""

    #: single: one pass over the whole image; multiscale: averaged over scales (and flips);
    #: sliding: a crop-sized window slid over the image.
    mode: Literal["single", "multiscale", "sliding"] = "single"
    #: multiscale: the scales averaged (DeepLab's aug test uses 0.5-1.75).
    scales: Annotated[list[_Scale], Field(min_length=1)] = [0.75, 1.0, 1.25]
    #: multiscale: add horizontally flipped copies.
    flip: bool = True
    #: sliding: window size; null takes the training crop (loader.crop_height/crop_width).
    crop_height: int | None = Field(None, gt=0, le=MAX_SIDE)
    crop_width: int | None = Field(None, gt=0, le=MAX_SIDE)
    #: sliding: share of a window that overlaps the next one.
    overlap: float = Field(1 / 3, ge=0, lt=1)
    #: Qualitative sample figures in the report (image | truth | prediction | with CRF).
    num_samples_report: int = Field(4, ge=0, le=1000)
    #: Timed inference calls (after 2 warm-up calls) for ms per image and peak memory.
    speed_repeats: int = Field(10, gt=0, le=10_000)


class RegisterParams(_Section):
    """The register stage: the registered model's name (the gate's settings are ``gate``)."""

    #: Registered model name is ``<prefix>-<dataset.name>``.
    model_name_prefix: str = Field("segflow", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")


class GateParams(_Section):
    """The promotion gate of the register stage: on which split, with how much evidence.

    The gate re-scores the champion on the decision split and compares it with the new model
    image by image (a paired bootstrap). The decision split is never the test split: a choice
    made on test, repeated at every retrain, would drift the champion's reported test score up
    with the number of decisions. The test split is scored and reported for every version.
    """

    #: The split the gate decides on. auto: ``dev`` (dataset.holdout_groups) when the shards
    #: have it, else ``val`` (then shared with the best-epoch and CRF choices; and when val is
    #: also dataset.test_split, the reported split: gate.md and the version's tags say so).
    #: Naming the test split here is refused.
    split: str = Field("auto", min_length=1)
    #: Fewer images than this on the decision split and the gate keeps the champion, saying
    #: "underpowered": a bootstrap over a handful of images gives a tight-looking interval that
    #: means nothing. 20 is a floor, not a target; frames of one video are not independent
    #: either (with groups the bootstrap resamples whole groups).
    min_images: int = Field(20, ge=1, le=1_000_000)
    #: ``champion`` moves to a new version only if the lower bound of the paired-bootstrap
    #: interval of (new - champion) mIoU on the decision split exceeds this. mIoU lies in
    #: [0, 1], so a min_gain of 1 or more could never promote anything.
    min_gain: float = Field(0.0, ge=0, lt=1)
    #: Two-sided confidence of that interval (0.95: the 2.5th percentile is the lower bound).
    confidence: float = Field(0.95, gt=0.5, lt=1)
    #: Bootstrap resamples of the decision split's images (or groups).
    bootstrap_samples: int = Field(2000, ge=100, le=1_000_000)


_CRON_FIELD = r"[0-9*/,A-Za-z-]+"


class RetrainParams(_Section):
    """The scheduled retraining flow (``segflow retrain``) and its schedule."""

    #: Cadence, one cron expression (minute hour day-of-month month day-of-week) for every
    #: scheduler in infra/schedule/ (Kubernetes CronJob, systemd timer, crontab line); render
    #: them with ``segflow schedule``.
    schedule: str = Field("0 3 * * 1", pattern=rf"^{_CRON_FIELD}( {_CRON_FIELD}){{4}}$")
    #: DVC targets brought to their latest version first with ``dvc update`` (``.dvc`` files of
    #: ``dvc import`` / ``dvc import-url``), e.g. [data/raw.dvc].
    update: list[str] = []
    #: ``dvc pull`` before the run (a shared DVC remote holds the data and the cache).
    pull: bool = False
    #: MLflow experiment with one run per retrain attempt; its tags are the audit record.
    experiment: str = Field("segflow-retrain", min_length=1)


class MlflowParams(_Section):
    """How every stage and command talks to an MLflow tracking server: one bounded HTTP policy.

    The stages (train, search, tune, register), ``segflow retrain`` and ``segflow predict`` put
    these into MLflow's own settings (:meth:`environ`) before their first MLflow call, replacing
    any exported value, so each reads the same policy from params.yaml. MLflow's defaults (7
    retries, 120 s per request) make a server that refuses connections an error after ~4
    minutes and one that accepts but never answers an error after ~20. The wait is bounded by
    (urllib3's backoff: 0, then 2, 4, 8... x ``http_backoff_factor`` s, plus up to 1 s each):

    - connection refused: ``http_backoff_factor`` x (2^``http_retries`` - 2) s, about 5 s with
      the defaults;
    - no answer: (``http_retries`` + 1) x ``http_timeout_s`` s more, about 35 s with them.

    A tracking server that restarts during a run needs more retries to be waited out (e.g. 5
    retries: ~60 s); big checkpoints over a slow artifact proxy a longer timeout. The default
    sqlite store makes no HTTP calls.
    """

    #: Retries of a failed request (refused, timed out, 429/5xx answers); MLflow allows <= 10.
    http_retries: int = Field(2, ge=0, le=10)
    #: Seconds to connect, and to wait for each answer (an upload's answer included).
    http_timeout_s: int = Field(10, gt=0, le=600)
    #: Exponential backoff between retries (MLflow reads an integer, at most 120).
    http_backoff_factor: int = Field(2, ge=0, le=120)

    def environ(self) -> dict[str, str]:
        """MLflow's environment variables for this policy (it reads them at every request)."""
        return {
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.http_retries),
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(self.http_timeout_s),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(self.http_backoff_factor),
        }


# pydantic warns that the field name "register" shadows ``ABCMeta.register`` of the model
# class; only class-level access sees that method, instances read the field as usual.
warnings.filterwarnings("ignore", message='Field name "register" in "Params"', category=UserWarning)


class Params(_Section):
    seed: int = 0
    dataset: DatasetParams = DatasetParams()
    synthetic: SyntheticParams = SyntheticParams()
    shard: ShardParams = ShardParams()
    loader: LoaderParams = LoaderParams()
    train: TrainParams = TrainParams()
    crf: CRFTuneParams = CRFTuneParams()
    tune: TuneParams = TuneParams()
    search: SearchParams = SearchParams()
    evaluate: EvaluateParams = EvaluateParams()
    register: RegisterParams = RegisterParams()
    gate: GateParams = GateParams()
    retrain: RetrainParams = RetrainParams()
    mlflow: MlflowParams = MlflowParams()

    @model_validator(mode="after")
    def _synthetic_root(self) -> Params:
        if self.dataset.name == "synthetic" and Path(self.dataset.root) != Path(SYNTHETIC_DIR):
            raise ValueError(
                f"dataset.root must be {SYNTHETIC_DIR} for the synthetic dataset "
                f"(got {self.dataset.root!r}); set dataset.name for a real dataset"
            )
        if self.gate.split in (self.dataset.test_split, "train"):
            raise ValueError(
                f"gate.split: {self.gate.split!r} is the split the model "
                + ("is scored on" if self.gate.split != "train" else "trains on")
                + "; the gate decides on a split of its own (auto: dev, else val)"
            )
        return self


def parse_params(data: dict, source: str = "params.yaml") -> Params:
    """Validate a params mapping; errors name the source file and the dotted field."""
    try:
        return Params.model_validate(data or {})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(top level)"
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            own = err["msg"].removeprefix("Value error, ")
            if own.startswith(f"{field}."):  # a rule that names its own field (crf.<field>)
                lines.append(f"{source}: {own}")
            else:
                lines.append(f"{source}: {field}: {err['msg']}{shown}")
        raise SegflowError("\n".join(lines)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml (a missing file is an error naming it)."""
    path = Path(path)
    if not path.is_file():
        raise SegflowError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SegflowError(f"{path}: not valid YAML: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise SegflowError(f"{path}: top level must be a mapping of sections")
    return parse_params(data or {}, source=str(path))
