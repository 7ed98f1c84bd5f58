"""Embedders that need no download: handcrafted features and small random-weight controls.

``OFFLINE_DEFAULTS`` (in ``embedder``) names the ones ``mitoprobe run`` uses when no foundation
model weights are present.
"""

from . import Recipe, register

register(Recipe(
    name="handcrafted", family="offline", arch="handcrafted", weights="none", input_size=128,
    placement="native", precision="fp32", outputs=(("vector", 57),), paper_outputs=("vector",),
    note="nucleus morphology + H&E colour + texture (scikit-image), CPU"))

# The figure's shape alone (``embedder.morphology``): the handcrafted path with ``features="morphology"``.
# Colour and texture are site-specific; shape carries over to other scanners and species (AtNorM-MD).
register(Recipe(
    name="morphology", family="offline", arch="handcrafted", kwargs=(("features", "morphology"),), weights="none",
    input_size=128, placement="native", precision="fp32", outputs=(("vector", 28),), paper_outputs=("vector",),
    note="nucleus morphology only: shape of the central haematoxylin component (scikit-image), CPU"))

# A random-weight CNN at the patches' native 128 px: cheap on CPU, and random conv features are
# a known non-trivial floor for what any pretrained model must beat.
register(Recipe(
    name="resnet18.random", family="offline", arch="resnet18", kwargs=(("num_classes", 0),),
    weights="random", input_size=128, resize=128, placement="native", precision="fp32",
    outputs=(("vector", 512),), paper_outputs=("vector",),
    note="random-weight ResNet-18 control, native 128 px, global average pool"))

# A small random ViT in the paper's geometry (128 -> 224 upsample): tests and the throughput benchmark.
register(Recipe(
    name="vit_small.random", family="offline", arch="vit_small_patch16_224", kwargs=(("num_classes", 0),),
    weights="random", precision="bf16", outputs=(("cls", 384), ("mean", 384)),
    note="random-weight ViT-S/16 control, 128 -> 224 upsample"))

# The offline fine-tuning preset's backbone (``mitoprobe finetune --preset offline``): a ResNet-18 at
# half width (2.8 M parameters) on the patch's centre (the mitosis is centred): resize 128 -> 96 px,
# centre crop 80 px (a 107 px field of view). Small enough to train from scratch on a CPU.
register(Recipe(
    name="offline_cnn.random", family="offline", arch="resnet18",
    kwargs=(("channels", (32, 64, 128, 256)), ("num_classes", 0), ("stem_width", 32)),
    weights="random", input_size=80, resize=96, interpolation="bilinear", placement="upsample",
    outputs=(("vector", 256),), paper_outputs=("vector",),
    note="half-width ResNet-18, random init, 107 px centre at 80 px: the offline preset's backbone until issue 13"))

# The offline preset's backbone since issue 13 (round 3): the same network on the 85 px centre at the same
# scale (resize 128 -> 96, centre crop 64). 1.7x the training images per second of the 80 px input on a
# 2-core AVX2 CPU, so the 30-minute budget of ``run --full`` allows ~3x the epochs; held-out AUROC on
# fold 0 went from 0.81 (80 px, 12 epochs) to 0.85 (docs/offline-accuracy.md). ``offline_cnn.random``
# stays registered: runs trained on it still resolve to the geometry they were trained with.
register(Recipe(
    name="offline_cnn64.random", family="offline", arch="resnet18",
    kwargs=(("channels", (32, 64, 128, 256)), ("num_classes", 0), ("stem_width", 32)),
    weights="random", input_size=64, resize=96, interpolation="bilinear", placement="upsample",
    outputs=(("vector", 256),), paper_outputs=("vector",),
    note="half-width ResNet-18, random init, 85 px centre at 64 px: the offline preset's backbone"))
