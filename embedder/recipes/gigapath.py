"""Prov-GigaPath tile encoder (ViT-g, 16 px patches): CLS 1,536-d.

Model card: resize 256 bicubic + centre crop 224, ImageNet mean/std; kwargs = the hub config's
``model_args`` (DINOv2 giant with 16 px patches, 224 px input). Precision: fp32, no autocast, as
the AMi-Br benchmark's ``prov-gigapath.py`` extracts features (plain ``torch.no_grad()``).
"""

from . import vit_pair

vit_pair("gigapath", "gigapath", "prov-gigapath/prov-gigapath", 1536, arch="vit_giant_patch14_dinov2",
         kwargs=(("img_size", 224), ("in_chans", 3), ("patch_size", 16), ("embed_dim", 1536), ("depth", 40),
                 ("num_heads", 24), ("init_values", 1e-5), ("mlp_ratio", 5.33334), ("num_classes", 0)),
         resize=256, precision="fp32", note="Prov-GigaPath tile encoder (Xu et al. 2024), CLS")
