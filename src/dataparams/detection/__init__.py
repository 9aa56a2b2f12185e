"""Object detection with data parameters: the KITTI experiment of sec. 3.3.

* :mod:`~dataparams.detection.kitti` -- KITTI label files, difficulty levels, split files, the
  :class:`KittiDetection` dataset with a global per-box index;
* :mod:`~dataparams.detection.transforms` -- transforms of ``(image, target)`` items that carry
  every per-box entry with the boxes: flip, resize, and SSD's augmentation (photometric
  distortion, zoom-out, IoU crop);
* :mod:`~dataparams.detection.kitti_eval` -- the official devkit's 2D AP (easy / moderate /
  hard, AP|R40 and 11-point);
* :mod:`~dataparams.detection.synthetic` -- a small KITTI-format data set of Fashion-MNIST
  scenes with controlled occlusion, truncation, DontCare and label corruption;
* :mod:`~dataparams.detection.models` -- torchvision SSD detectors (SSD300-VGG16, a tiny SSD for
  the CPU), a tiny RetinaNet, and the training forward without torchvision's fixed loss;
* :mod:`~dataparams.detection.box_parameters` -- the SSD loss with one data parameter per box
  (positives at their box's sigma, negatives at the batch's mean box sigma, no negatives on
  ignore regions such as DontCare);
* :mod:`~dataparams.detection.focal_box_parameters` -- the same on RetinaNet's focal loss
  (per-class sigmoids, every anchor);
* :mod:`~dataparams.detection.config`, :mod:`~dataparams.detection.train`,
  :mod:`~dataparams.detection.presets` -- the run configuration, the trainer writing a run
  directory, and the named presets;
* :mod:`~dataparams.detection.summary` -- a run's headline number (Car AP at IoU 0.7, or COCO
  mAP) and its mean ± std over seeds;
* :mod:`~dataparams.detection.curriculum`, :mod:`~dataparams.detection.figures` -- what the box
  temperatures learned (per level, rank correlations, flipped-box AUROC), Figure 3 and the report
  (:func:`~dataparams.detection.figures.object_detection_report`);
* :mod:`~dataparams.detection.issues` -- ``find-issues`` on a detection run: the boxes ranked by
  how likely their class is wrong (``box_issues.csv``, per-image ``image_issues.csv``, report).

The figures need matplotlib; :mod:`~dataparams.detection.figures` is imported on use, not here.
"""

from dataparams.detection.box_parameters import (
    SSDBoxLoss,
    SSDBoxParameterLoss,
    anchor_temperatures,
    ignored_anchors,
    ssd_box_parameter_loss,
)
from dataparams.detection.config import (
    BoxCurriculumConfig,
    DetectionConfig,
    DetectionDataConfig,
    DetectionModelConfig,
    DetectionOptimConfig,
    detection_config_from_dict,
    detection_config_to_dict,
    validate_detection_config,
)
from dataparams.detection.curriculum import BoxTable, curriculum_statistics, rank_correlation
from dataparams.detection.focal_box_parameters import (
    FocalBoxLoss,
    FocalBoxParameterLoss,
    focal_box_parameter_loss,
)
from dataparams.detection.kitti import (
    DEFAULT_CLASSES,
    DIFFICULTIES,
    KittiDetection,
    KittiFormatError,
    KittiObject,
    box_difficulty,
    default_ignore_types,
    format_label_line,
    parse_label_line,
    read_label_file,
    read_split_file,
    write_label_file,
    write_split_file,
)
from dataparams.detection.kitti_eval import (
    ClassResult,
    evaluate,
    evaluate_detailed,
    evaluate_dirs,
    format_table,
    kitti_eval_command,
    load_label_dirs,
)
from dataparams.detection.models import (
    DETECTOR_ARCHS,
    FOCAL_ARCHS,
    AspectBoxGenerator,
    TinySSDBackbone,
    build_detector,
    detector_from_config,
    load_detector_weights,
    ssd_training_outputs,
    weights_file,
)
from dataparams.detection.presets import (
    DETECTION_PRESETS,
    ensure_synthetic_data,
    get_detection_preset,
    list_detection_presets,
)
from dataparams.detection.summary import headline, summarize_seeds
from dataparams.detection.synthetic import (
    BOX_ERROR_KINDS,
    SYNTHETIC_CLASS_SOURCES,
    KittiSetStatistics,
    SyntheticKittiConfig,
    SyntheticKittiSet,
    box_error_kinds,
    describe_kitti_set,
    flipped_box_mask,
    read_truth,
    write_synthetic_kitti,
)
from dataparams.detection.train import train_detection
from dataparams.detection.transforms import (
    AUGMENTATIONS,
    Compose,
    RandomHorizontalFlip,
    RandomIoUCrop,
    RandomPhotometricDistort,
    RandomScale,
    RandomZoomOut,
    collate_detection,
    crop,
    hflip,
    photometric_distort,
    resize,
    scale,
    select_boxes,
    ssd_augmentation,
    zoom_out,
)

__all__ = [
    "AUGMENTATIONS",
    "BOX_ERROR_KINDS",
    "DEFAULT_CLASSES",
    "DETECTION_PRESETS",
    "DETECTOR_ARCHS",
    "DIFFICULTIES",
    "FOCAL_ARCHS",
    "SYNTHETIC_CLASS_SOURCES",
    "AspectBoxGenerator",
    "BoxCurriculumConfig",
    "BoxTable",
    "ClassResult",
    "FocalBoxLoss",
    "FocalBoxParameterLoss",
    "Compose",
    "DetectionConfig",
    "DetectionDataConfig",
    "DetectionModelConfig",
    "DetectionOptimConfig",
    "KittiDetection",
    "KittiFormatError",
    "KittiObject",
    "KittiSetStatistics",
    "RandomHorizontalFlip",
    "RandomIoUCrop",
    "RandomPhotometricDistort",
    "RandomScale",
    "RandomZoomOut",
    "SSDBoxLoss",
    "SSDBoxParameterLoss",
    "SyntheticKittiConfig",
    "SyntheticKittiSet",
    "TinySSDBackbone",
    "anchor_temperatures",
    "box_difficulty",
    "build_detector",
    "detector_from_config",
    "collate_detection",
    "crop",
    "curriculum_statistics",
    "default_ignore_types",
    "box_error_kinds",
    "describe_kitti_set",
    "detection_config_from_dict",
    "detection_config_to_dict",
    "ensure_synthetic_data",
    "evaluate",
    "evaluate_detailed",
    "evaluate_dirs",
    "flipped_box_mask",
    "focal_box_parameter_loss",
    "format_label_line",
    "format_table",
    "get_detection_preset",
    "headline",
    "hflip",
    "ignored_anchors",
    "kitti_eval_command",
    "list_detection_presets",
    "load_detector_weights",
    "load_label_dirs",
    "object_detection_report",
    "parse_label_line",
    "photometric_distort",
    "rank_correlation",
    "read_label_file",
    "read_split_file",
    "read_truth",
    "resize",
    "scale",
    "select_boxes",
    "ssd_augmentation",
    "ssd_box_parameter_loss",
    "ssd_training_outputs",
    "summarize_seeds",
    "train_detection",
    "validate_detection_config",
    "weights_file",
    "write_label_file",
    "write_split_file",
    "write_synthetic_kitti",
    "zoom_out",
]


def __getattr__(name: str):
    # The report draws with matplotlib, an optional extra: import it only when asked for.
    if name == "object_detection_report":
        from dataparams.detection.figures import object_detection_report

        return object_detection_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
