"""MahmoodLab UNI (ViT-L/16, CLS 1,024-d) and UNI2-h (ViT-H/14 SwiGLU, 8 registers, CLS 1,536-d).

Model cards: UNI ``init_values=1e-5, dynamic_img_size=True``; UNI2-h the ``timm_kwargs`` listed in
its card. Both ImageNet mean/std. Geometry: torchvision ``Resize(224)`` + ``CenterCrop(224)``, whose
default interpolation is **bilinear** (the UNI repo's ``get_eval_transforms`` and README; the AMi-Br
benchmark scripts build the same transform from the hub's ``pretrained_cfg`` with timm's
``create_transform``). Precision: the benchmark's ``uni.py``/``uni2-h.py`` extract features under
``torch.autocast(dtype=torch.float16)``.
"""

from . import vit_pair

vit_pair("uni", "uni", "MahmoodLab/uni", 1024, arch="vit_large_patch16_224",
         kwargs=(("img_size", 224), ("patch_size", 16), ("init_values", 1e-5), ("num_classes", 0),
                 ("dynamic_img_size", True)),
         interpolation="bilinear", precision="fp16", note="UNI (Chen et al. 2024), CLS")
vit_pair("uni2_h", "uni", "MahmoodLab/UNI2-h", 1536, arch="vit_giant_patch14_224",
         kwargs=(("img_size", 224), ("patch_size", 14), ("depth", 24), ("num_heads", 24),
                 ("init_values", 1e-5), ("embed_dim", 1536), ("mlp_ratio", 2.66667 * 2),
                 ("num_classes", 0), ("no_embed_class", True), ("mlp_layer", "SwiGLUPacked"),
                 ("act_layer", "SiLU"), ("reg_tokens", 8), ("dynamic_img_size", True)),
         interpolation="bilinear", precision="fp16", note="UNI2-h (MahmoodLab 2025), CLS")
