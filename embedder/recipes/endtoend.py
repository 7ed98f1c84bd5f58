"""The paper's end-to-end baselines (fully fine-tuned by ``mitoprobe finetune --method full``).

EfficientNetV2-M is trained from scratch in the paper (``.random``); Swin-B and ViT-L/16 start from
timm's ImageNet weights (``.hf``). As embedders they are plain ImageNet/random controls.
"""

from . import Recipe, register

register(Recipe(
    name="efficientnetv2_m.random", family="endtoend", arch="efficientnetv2_m", kwargs=(("num_classes", 0),),
    weights="random", outputs=(("vector", 1280),), paper_outputs=("vector",),
    note="EfficientNetV2-M, random init (the paper trains it from scratch)"))
register(Recipe(
    name="swin_base.hf", family="endtoend", arch="swin_base_patch4_window7_224", kwargs=(("num_classes", 0),),
    weights="hf", hub_id="timm/swin_base_patch4_window7_224.ms_in22k_ft_in1k",
    outputs=(("vector", 1024),), paper_outputs=("vector",),
    note="Swin-B/4 w7 (ImageNet-22k -> 1k), global average pool"))
register(Recipe(
    name="vit_large.hf", family="endtoend", arch="vit_large_patch16_224", kwargs=(("num_classes", 0),),
    weights="hf", hub_id="timm/vit_large_patch16_224.augreg_in21k_ft_in1k",
    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), outputs=(("cls", 1024), ("mean", 1024)),
    note="ViT-L/16 (AugReg ImageNet-21k -> 1k), CLS"))
