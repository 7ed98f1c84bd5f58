"""Bioptimus H-optimus-0 and H-optimus-1 (ViT-g/14, 4 registers, DINOv2): CLS 1,536-d.

Model cards: ``init_values=1e-5, dynamic_img_size=False`` and the H&E-specific mean/std below.
Precision: fp16 autocast, as the AMi-Br benchmark's ``hoptimus0.py``/``hoptimus1.py`` extract
features (after a PIL ``resize((224, 224))``, bicubic by default: the recipes' geometry).
"""

from . import vit_pair

HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
_KW = (("img_size", 224), ("init_values", 1e-5), ("num_classes", 0), ("global_pool", "token"),
       ("dynamic_img_size", False))

vit_pair("hoptimus0", "hoptimus", "bioptimus/H-optimus-0", 1536, arch="vit_giant_patch14_reg4_dinov2",
         kwargs=_KW, mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD, precision="fp16", note="H-optimus-0 (Bioptimus 2024), CLS")
vit_pair("hoptimus1", "hoptimus", "bioptimus/H-optimus-1", 1536, arch="vit_giant_patch14_reg4_dinov2",
         kwargs=_KW, mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD, precision="fp16", note="H-optimus-1 (Bioptimus 2025), CLS")
