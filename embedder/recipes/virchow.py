"""Paige Virchow and Virchow2 (ViT-H/14, SwiGLU): CLS ⊕ mean of patch tokens = 2,560-d.

Kwargs = the hub config's ``model_args`` plus the model card's ``mlp_layer=SwiGLUPacked,
act_layer=SiLU``. Virchow2 has 4 register tokens: the patch mean skips every prefix token via
``model.num_prefix_tokens`` (5 for Virchow2, 1 for Virchow), never a hard-coded slice.
Precision: fp16 autocast, as the AMi-Br benchmark's ``virchow.py``/``virchow2.py`` extract features.
"""

from . import vit_pair

_COMMON = (("img_size", 224), ("init_values", 1e-5), ("num_classes", 0), ("mlp_ratio", 5.3375),
           ("global_pool", ""), ("dynamic_img_size", True), ("mlp_layer", "SwiGLUPacked"),
           ("act_layer", "SiLU"))

vit_pair("virchow", "virchow", "paige-ai/Virchow", 1280, arch="vit_huge_patch14_224", kwargs=_COMMON,
         paper_outputs=("cls", "mean"), precision="fp16", note="Virchow (Vorontsov et al. 2024), CLS ⊕ patch mean")
vit_pair("virchow2", "virchow", "paige-ai/Virchow2", 1280, arch="vit_huge_patch14_224",
         kwargs=_COMMON + (("reg_tokens", 4),), paper_outputs=("cls", "mean"), precision="fp16",
         note="Virchow2 (Zimmermann et al. 2024), CLS ⊕ patch mean, 4 registers skipped")
