"""Parity with the paper's fine-tuning scripts (DeepMicroscopy/AMi-Br_Benchmark @3acf4da).

The scripts' pipelines are written out here as the scripts build them (torchvision v1 ``transforms`` on
``PIL.Image.open(...).convert("RGB")``; UNI2-h through timm's ``create_transform``), then compared with what
``mitoprobe`` builds from ``FinetuneConfig.paper(model, method)``:

* evaluation transforms: identical tensors on real patches, for the 7 LoRA models and 3 end-to-end baselines;
* training transforms: identical tensors under the same torch seed (the same random draws);
* training: a few optimizer steps of the scripts' loop (peft ``get_peft_model`` with ``modules_to_save=["head"]``,
  or the end-to-end ``nn.Module`` with a new head; Adam; ``BCEWithLogitsLoss``; the scripts' labels Atypical = 0)
  against ``finetune.train.train_fold`` on a tiny ViT from the same initial weights and draws: identical weights
  (the scripts learn P(normal), mitoprobe P(atypical): the head comes out negated, everything else equal to
  rounding, 1e-7: the label flip changes the arithmetic of BCE in the last bits, not its value).
"""

from __future__ import annotations

import io
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from mitoprobe.embedder.recipes import IMAGENET_MEAN, IMAGENET_STD, Recipe, get_recipe, register
from mitoprobe.embedder.recipes.hoptimus import HOPTIMUS_MEAN, HOPTIMUS_STD
from mitoprobe.embedder.transforms import decode_png
from mitoprobe.finetune import FinetuneConfig
from mitoprobe.finetune.augment import train_transform
from mitoprobe.paper.finetune import E2E_ENTRIES, ENTRIES, LORA_ENTRIES, NORM_STATS, entry_for, paper_entry
from mitoprobe.store.errors import RecipeError

HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMNET = (IMAGENET_MEAN, IMAGENET_STD)
HOPT = (HOPTIMUS_MEAN, HOPTIMUS_STD)

# The scripts' validation transforms (line numbers in finetune.paper), keyed by the recipe each one trains.
SCRIPT_EVAL = {
    "virchow.hf": lambda: T.Compose([T.Resize(224), T.CenterCrop(224), T.ToTensor(), T.Normalize(*HALF)]),
    "virchow2.hf": lambda: T.Compose([T.Resize(224), T.CenterCrop(224), T.ToTensor(), T.Normalize(*HALF)]),
    "uni.hf": lambda: T.Compose([T.Resize(224), T.CenterCrop(224), T.ToTensor(), T.Normalize(*IMNET)]),
    "gigapath.hf": lambda: T.Compose([T.Resize(224), T.CenterCrop(224), T.ToTensor(), T.Normalize(*IMNET)]),
    "hoptimus0.hf": lambda: T.Compose([T.Resize(224), T.ToTensor(), T.Normalize(*HOPT)]),
    "hoptimus1.hf": lambda: T.Compose([T.Resize(224), T.ToTensor(), T.Normalize(*HOPT)]),
    "uni2_h.hf": lambda: _uni2h_timm_transform(),
    "efficientnetv2_m.random": lambda: T.Compose([T.Resize((224, 224)), T.ToTensor(), T.Normalize(*IMNET)]),
    "swin_base.hf": lambda: T.Compose([T.Resize((224, 224)), T.ToTensor(), T.Normalize(*IMNET)]),
    "vit_large.hf": lambda: T.Compose([T.Resize((224, 224)), T.ToTensor(), T.Normalize(*IMNET)]),
}

# The scripts' training transforms.
_V_TRAIN = lambda: T.Compose([T.RandomResizedCrop(224, scale=(0.8, 1.0)), T.RandomHorizontalFlip(),  # noqa: E731
                              T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1), T.ToTensor(),
                              T.Normalize(*HALF)])


def _uni_train(first, stats):
    return lambda: T.Compose([first(), T.RandomHorizontalFlip(), T.RandomRotation(15),
                              T.ColorJitter(brightness=0.2, contrast=0.2), T.ToTensor(), T.Normalize(*stats)])


def _e2e_train():
    return T.Compose([T.Resize((224, 224)), T.RandomHorizontalFlip(), T.RandomRotation(10),
                      T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1),
                      T.RandomResizedCrop(224, scale=(0.8, 1.0)), T.ToTensor(), T.Normalize(*IMNET)])


SCRIPT_TRAIN = {
    "virchow.hf": _V_TRAIN, "virchow2.hf": _V_TRAIN,
    "uni.hf": _uni_train(lambda: T.RandomResizedCrop(224), IMNET),
    "gigapath.hf": _uni_train(lambda: T.RandomResizedCrop(224), IMNET),
    "hoptimus0.hf": _uni_train(lambda: T.RandomResizedCrop(224), HOPT),
    "hoptimus1.hf": _uni_train(lambda: T.Resize(224), HOPT),
    "uni2_h.hf": lambda: _uni2h_timm_transform(),  # lines 110-111: the evaluation transform for training too
    "efficientnetv2_m.random": _e2e_train, "swin_base.hf": _e2e_train, "vit_large.hf": _e2e_train,
}
METHOD = {name: ("full" if name.split(".")[0] in {e.models[0] for e in E2E_ENTRIES} else "lora") for name in SCRIPT_EVAL}


def _uni2h_timm_transform():
    """uni2-h_lora.py:110-111: ``create_transform(**resolve_data_config(model.pretrained_cfg, model=model))`` with
    the hub's pretrained_cfg for UNI2-h (224 px, crop_pct 1.0, bilinear, ImageNet statistics): timm's own code."""
    from timm.data import create_transform, resolve_data_config

    cfg = dict(input_size=(3, 224, 224), interpolation="bilinear", crop_pct=1.0, crop_mode="center",
               mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return create_transform(**resolve_data_config(cfg))


@pytest.fixture(scope="module")
def patches(real_data_dir) -> list[bytes]:
    """A few real patches of each class and set (AMi-Br, AtNorM-Br, AtNorM-MD)."""
    out = []
    for sub in ("AMi-Br/Atypical", "AMi-Br/Normal", "AtNorM-Br", "AtNorM-MD"):
        files = sorted((real_data_dir / sub).rglob("*.png"))[:2]
        out += [f.read_bytes() for f in files]
    assert len(out) >= 6
    return out


def _pil(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png)).convert("RGB")  # as the scripts' Dataset.__getitem__


def test_every_script_has_an_entry_and_every_entry_a_script():
    assert {e.key for e in LORA_ENTRIES} == {f"{m}/lora" for m in
                                            ("virchow", "virchow2", "uni", "uni2_h", "gigapath", "hoptimus0", "hoptimus1")}
    assert {e.key for e in E2E_ENTRIES} == {"efficientnetv2_m/full", "swin_base/full", "vit_large/full"}
    for name in SCRIPT_EVAL:
        e = entry_for(name, METHOD[name])
        assert e is not None and e.script.endswith(".py") and get_recipe(name)
        for field_name, s in e.settings.items():
            assert s.line not in (None, ""), (e.key, field_name)
        cfg = FinetuneConfig.paper(name, METHOD[name])
        assert cfg.options() == {} and cfg.precision == "fp32" and cfg.lr == 5e-5
    # a recipe's .random twin shares the script; a model without one gets the generic entry, said so
    assert entry_for("uni.random", "lora") is entry_for("uni.hf", "lora")
    assert paper_entry("resnet18.random", "full").key == "generic/full"
    assert FinetuneConfig.paper("uni.hf", "lora", lr=1e-4).options() == {"lr": 1e-4}


@pytest.mark.parametrize("name", sorted(SCRIPT_EVAL))
def test_evaluation_transform_equals_the_scripts(name, patches):
    cfg = FinetuneConfig.paper(name, METHOD[name])
    ours = cfg.eval_preprocess(get_recipe(name))
    script = SCRIPT_EVAL[name]()
    for png in patches:
        want = script(_pil(png))
        got = torch.from_numpy(ours(decode_png(png)))
        assert got.shape == want.shape == (3, 224, 224)
        assert torch.equal(got, want), f"{name}: max |diff| {float((got - want).abs().max())}"


@pytest.mark.parametrize("name", sorted(SCRIPT_TRAIN))
def test_training_transform_equals_the_scripts_under_the_same_draws(name, patches):
    cfg = FinetuneConfig.paper(name, METHOD[name])
    recipe = get_recipe(name)
    ours = train_transform(recipe, eval_preprocess=cfg.eval_preprocess(recipe), crop_from=cfg.crop_from,
                           **cfg.augment_kwargs())
    script = SCRIPT_TRAIN[name]()
    differing_draws = 0
    for i, png in enumerate(patches):
        for seed in (i, 100 + i):
            torch.manual_seed(seed)
            want = script(_pil(png))
            torch.manual_seed(seed)
            got = ours(decode_png(png))
            assert torch.equal(got, want), f"{name} seed {seed}: max |diff| {float((got - want).abs().max())}"
            differing_draws += not torch.equal(got, script(_pil(png)))  # next draws differ: augmentation is on
    augmented = name != "uni2_h.hf"
    assert (differing_draws > 0) == augmented


def test_normalisations_are_the_scripts():
    assert NORM_STATS["half"] == HALF and NORM_STATS["imagenet"] == IMNET and NORM_STATS["hoptimus"] == HOPT
    assert {e.key: e.values()["norm"] for e in ENTRIES} == {
        "virchow/lora": "half", "virchow2/lora": "half", "uni/lora": "imagenet", "gigapath/lora": "imagenet",
        "uni2_h/lora": "imagenet", "hoptimus0/lora": "hoptimus", "hoptimus1/lora": "hoptimus",
        "efficientnetv2_m/full": "imagenet", "swin_base/full": "imagenet", "vit_large/full": "imagenet"}
    assert {e.key: e.values()["eval_precision"] for e in ENTRIES if e.values()["eval_precision"] != "fp32"} == {
        "hoptimus0/lora": "fp16", "hoptimus1/lora": "fp16"}


# -- a few training steps: the scripts' loop against train_fold --------------------------------------------------
TINY_KW = (("img_size", 224), ("patch_size", 32), ("embed_dim", 32), ("depth", 2), ("num_heads", 2))


def _tiny(base: str, extra: tuple = ()) -> Recipe:
    """A tiny ViT registered as ``<base stem>.tinytest`` (so it takes that model's paper entry)."""
    name = f"{base.split('.')[0]}.tinytest"
    try:
        return get_recipe(name)
    except RecipeError:
        r = get_recipe(base)
        kw = dict(r.model_kwargs)
        for k in ("embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio", "img_size"):
            kw.pop(k, None)
        kw.update(dict(TINY_KW), **dict(extra))
        return register(replace(r, name=name, arch="vit_tiny_patch16_224" if r.is_vit else r.arch, weights="random",
                                hub_id=None, kwargs=tuple(kw.items()), outputs=tuple((k, 32) for k in r.output_dims),
                                note="tiny test ViT"))


def _script_model(recipe: Recipe, method: str):
    """The scripts' model on the tiny architecture: LoRA = timm model with a 1-logit head + get_peft_model
    (modules_to_save=["head"]); full = the end-to-end module with ``model.head = nn.Linear(d, 1)``."""
    import timm
    from peft import LoraConfig, get_peft_model

    from mitoprobe.embedder.factory import create_kwargs

    kw = create_kwargs(recipe)
    if method == "lora":
        kw["num_classes"] = 1  # reset_classifier(num_classes=1) / create_model(num_classes=1)
        base = timm.create_model(recipe.arch, pretrained=False, **kw)
        cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["qkv", "proj", "fc1", "fc2"], lora_dropout=0.3,
                         bias="none", modules_to_save=["head"])
        return get_peft_model(base, cfg)

    class BinaryViT(torch.nn.Module):  # vit_large_patch16_224.py:60-67
        def __init__(self):
            super().__init__()
            self.model = timm.create_model(recipe.arch, pretrained=False, **kw)
            self.model.head = torch.nn.Linear(self.model.num_features, 1)

        def forward(self, x):
            return self.model(x)

    return BinaryViT()


def _ours_name(script_name: str) -> str:
    """Script model parameter name -> mitoprobe classifier name."""
    n = script_name.removeprefix("base_model.model.").removeprefix("model.")
    n = n.replace("head.modules_to_save.default.", "head.")
    return n if n.startswith("head.") else f"backbone.{n}"


def _copy_initial(ours, script) -> None:
    """The script model starts from mitoprobe's initial weights; its head negated (it learns P(normal))."""
    src = ours.state_dict()
    with torch.no_grad():
        for n, p in script.named_parameters():
            if "head.original_module" in n:
                continue
            q = src[_ours_name(n)]
            p.copy_(-q.view_as(p) if _ours_name(n).startswith("head.") else q.view_as(p))


def _script_steps(model, pngs, y_atypical, transform, seed: int, steps: int, batch_size: int, num_samples: int):
    """The scripts' training loop (virchow2_lora.py:110-165 / vit_large_patch16_224.py:98-150) for ``steps``
    steps, on train_fold's draws (the scripts seed nothing): its sampler (``finetune.data.EpochSampler``, which
    draws the scripts' ``WeightedRandomSampler`` order from the epoch seed, checked here) and its per-sample
    augmentation seeds, applied to torch's CPU generator around the scripts' transform."""
    from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

    from mitoprobe.finetune.data import EpochSampler

    labels = [int(1 - a) for a in y_atypical]  # df['final_label'].map({'Atypical': 0, 'Normal': 1})

    class ImageDataset(Dataset):
        def __len__(self):
            return len(pngs)

        def __getitem__(self, item):
            idx, sample_seed = item
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(sample_seed)
                image = transform(_pil(pngs[idx]))
            return image, torch.tensor(labels[idx], dtype=torch.float32).unsqueeze(0)

    class_counts = [labels.count(i) for i in range(2)]
    class_weights = [1.0 / c if c > 0 else 0.0 for c in class_counts]
    sample_weights = [class_weights[label] for label in labels]
    torch.manual_seed(seed)
    sampler = EpochSampler(np.asarray(y_atypical), "weighted", num_samples, seed)
    scripts = WeightedRandomSampler(sample_weights, num_samples, replacement=True,
                                    generator=torch.Generator().manual_seed(seed))
    assert [i for i, _ in sampler] == list(scripts)
    loader = DataLoader(ImageDataset(), batch_size=batch_size, sampler=sampler, num_workers=0,
                        generator=torch.Generator())
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-5, weight_decay=1e-5)
    criterion = torch.nn.BCEWithLogitsLoss()
    model.train()
    for step, (images_batch, labels_batch) in enumerate(loader):
        if step >= steps:
            break
        optimizer.zero_grad()
        outputs = model(images_batch)
        if outputs.ndim == 3:  # virchow2_lora.py:150-152: the CLS token's logit
            outputs = outputs[:, 0]
        loss = criterion(outputs, labels_batch)
        loss.backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("base,method", [("virchow2.hf", "lora"), ("uni.hf", "lora"), ("vit_large.hf", "full")])
def test_training_steps_equal_the_scripts_loop(base, method, patches, tmp_path):
    from safetensors.torch import load_file

    from mitoprobe.finetune.model import build_classifier
    from mitoprobe.finetune.train import FoldImages, Runtime, epoch_seed, train_fold

    torch.set_num_threads(1)
    recipe = _tiny(base)
    steps, bs = 3, 4
    cfg = FinetuneConfig.paper(recipe.name, method, max_epochs=1, max_steps=steps, batch_size=bs)
    assert cfg.options() == {"max_epochs": 1, "max_steps": steps, "batch_size": bs}
    pngs = patches[:8]
    y = np.array([1, 0, 1, 0, 0, 1, 0, 0][:len(pngs)], dtype=np.float32)  # 1 = atypical (mitoprobe)
    ids = np.array([f"p{i}" for i in range(len(pngs))])
    data = FoldImages(fold=0, train_ids=ids, train_y=y, val_ids=ids[:4], val_y=y[:4], test_ids={},
                      images=dict(zip(ids, pngs)))
    train_fold(cfg, data, tmp_path / "fold0", Runtime(progress=False))
    trained = load_file(str(tmp_path / "fold0" / "model.safetensors"))

    initial, _ = build_classifier(cfg)  # the same deterministic initial weights train_fold started from
    script = _script_model(recipe, method)
    _copy_initial(initial, script)
    tf = train_transform(recipe, eval_preprocess=cfg.eval_preprocess(recipe), crop_from=cfg.crop_from,
                         **cfg.augment_kwargs())
    # the scripts' own torchvision pipeline at the tiny model's 224 px (see the transform tests for equality)
    script_tf = SCRIPT_TRAIN[base]()
    assert tf is not None
    _script_steps(script, pngs, y, script_tf, epoch_seed(cfg.seed, 0, 0), steps, bs, len(pngs))

    compared = 0
    for n, p in script.named_parameters():
        if not p.requires_grad:
            continue
        ours = trained[_ours_name(n)].view_as(p)
        want = -p.detach() if _ours_name(n).startswith("head.") else p.detach()
        if n.endswith("attn.qkv.bias"):  # the key bias: its gradient is 0 in exact arithmetic (softmax is
            d = len(want) // 3           # shift-invariant), so Adam turns rounding noise into steps of any sign
            ours, want = torch.cat([ours[:d], ours[2 * d:]]), torch.cat([want[:d], want[2 * d:]])
        # rounding only: the label flip changes BCE's arithmetic (not its value) in the last bits
        torch.testing.assert_close(ours, want, rtol=0, atol=1e-7, msg=f"{base} {n}")
        compared += 1
    n_trainable = sum(1 for _, p in initial.named_parameters() if p.requires_grad)
    assert compared == n_trainable == len(trained) if method == "lora" else compared == n_trainable
    # the steps moved the weights (a test that cannot fail proves nothing)
    start = {k: v for k, v in initial.state_dict().items() if k in trained}
    assert any(not torch.equal(start[k], trained[k]) for k in trained)


# -- the table's line numbers against the scripts themselves (a checkout of the paper's repository) ----------------
PAPER_SCRIPTS = Path(os.environ.get("MITOPROBE_PAPER_SCRIPTS", "/nonexistent"))
# what the cited line of each setting must contain
LINE_TOKENS = {
    "batch_size": "batch_size = 8", "max_epochs": "num_epochs = 100", "lr": "lr=5e-5", "weight_decay": "weight_decay=1e-5",
    "optimizer": "optim.Adam(", "schedule": "mode='max'", "lr_factor": "factor=0.5", "lr_patience": "patience=3",
    "min_lr": "min_lr=1e-7", "loss": "BCEWithLogitsLoss()", "sampler": "WeightedRandomSampler(",
    "select_on": "> best_val", "threshold": "> 0.5", "precision": "= model(images_batch)", "lora_r": "r=8",
    "lora_alpha": "lora_alpha=16", "lora_dropout": "lora_dropout=0.3", "lora_targets": "target_modules=",
    "norm": ("Normalize", "create_transform"), "train_crop": ("RandomResizedCrop", "Resize(", "create_transform"),
    "crop_scale": ("RandomResizedCrop", "create_transform"), "hflip": ("RandomHorizontalFlip", "create_transform"),
    "rotate_degrees": ("RandomRotation", "create_transform", "transforms"), "early_stop": "early_stop_patience =",
    "color_jitter": ("ColorJitter", "create_transform"), "eval_resize": ("Resize(", "create_transform"),
    "eval_interpolation": ("Resize(", "create_transform"),
}


@pytest.mark.skipif(not PAPER_SCRIPTS.is_dir(), reason="set MITOPROBE_PAPER_SCRIPTS to a checkout of "
                    "DeepMicroscopy/AMi-Br_Benchmark at 3acf4da to check the table's line numbers")
@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.key)
def test_every_cited_line_says_what_the_table_says(entry):
    lines = (PAPER_SCRIPTS / entry.script).read_text().splitlines()
    for name, s in entry.settings.items():
        if name == "eval_precision":
            notebook = (PAPER_SCRIPTS / entry.notebook).read_text().replace('\\"', '"')
            assert (s.line in notebook) if s.value != "fp32" else ("autocast" not in notebook), (entry.key, name)
            continue
        first = int(str(s.line).split()[0].split(",")[0].split("-")[0])
        tokens = LINE_TOKENS[name] if isinstance(LINE_TOKENS[name], tuple) else (LINE_TOKENS[name],)
        assert any(t in lines[first - 1] for t in tokens), f"{entry.key} {name}: line {first} is {lines[first - 1]!r}"


def test_runs_stored_before_the_table_are_not_shown_as_paper_settings():
    import pandas as pd

    from mitoprobe.classifiers.labels import options_text
    from mitoprobe.classifiers.runs import LEGACY_FINETUNE_OPTIONS, relabel_legacy_finetune

    runs = pd.DataFrame(dict(
        family=["finetune", "finetune", "probe", "finetune"], options=["{}", "{}", "{}", '{"lr": 0.001}'],
        config_json=['{"config": {"norm": "paper"}}', '{"paper_entry": {"key": "uni/lora", "script": "uni_lora.py"}}', "{}", "{}"]))
    out = relabel_legacy_finetune(runs)
    assert list(out["options"]) == [LEGACY_FINETUNE_OPTIONS, "{}", "{}", '{"lr": 0.001}']
    assert options_text(out["options"][0]).startswith("settings=pre-table defaults")
    from mitoprobe.classifiers.labels import family_label

    legacy = dict(out.iloc[0], model="uni.hf", head="lora", family_id="f" * 16)
    assert family_label(legacy).endswith("(pre-table)")
    scripted = dict(out.iloc[1], model="uni.hf", head="lora", family_id="e" * 16)
    assert family_label(scripted).endswith("(paper)")
    assert list(runs["options"]) == ["{}", "{}", "{}", '{"lr": 0.001}']  # the caller's frame is untouched


@pytest.mark.parametrize("name", sorted(SCRIPT_EVAL))
def test_cli_records_the_scripts_configuration(name, monkeypatch, capsys, tmp_path):
    """``mitoprobe finetune --model M --method <its script's>`` hands the job that script's configuration."""
    from types import SimpleNamespace

    import mitoprobe.commands.finetune as cmd
    from conftest import make_six_slide_store, run_cli

    store = make_six_slide_store(tmp_path).root  # a real store: a folder that is not one is refused
    seen = {}

    def fake(store, cfg, folds, **kw):
        seen["cfg"] = cfg
        return SimpleNamespace(records={}, run_key="0" * 16, run_dir=tmp_path, folds_done=[], rows_appended=0,
                               ensemble=False)

    monkeypatch.setattr(cmd, "run_finetune", fake)
    code, out = run_cli(monkeypatch, capsys, "finetune", "--model", name, "--method", METHOD[name],
                        "--store", str(store))
    assert code == 0, out
    cfg = seen["cfg"]
    assert cfg == FinetuneConfig.paper(name, METHOD[name]) and cfg.options() == {}
    assert cfg.paper_entry().script.endswith(".py")
    # and a departure on purpose is recorded as one
    code, out = run_cli(monkeypatch, capsys, "finetune", "--model", name, "--method", METHOD[name], "--store",
                        str(store), "--precision", "bf16", "--color-jitter", "0.1,0.1,0,0", "--train-crop", "none")
    assert code == 0, out
    want = {"precision": "bf16", "color_jitter": (0.1, 0.1, 0.0, 0.0), "train_crop": "none"}
    if cfg.train_crop == "none":  # H-optimus-1 and UNI2-h train without a crop already
        want.pop("train_crop")
    assert seen["cfg"].options() == want


def test_the_offline_presets_identity_did_not_move():
    """The preset's run key moves only when the preset does (round 4 added the subtype head), and the round-3
    preset keeps its key: stores trained by `mitoprobe run --full` before keep their runs (nothing retrains)."""
    from mitoprobe.store.hashing import config_hash

    assert config_hash(FinetuneConfig.preset("offline").to_dict()) == "4bf21b1b9a281191"
    assert config_hash(FinetuneConfig.preset("offline", aux_subtypes=0.0).to_dict()) == "4e18b66d83444c75"


def test_every_setting_has_a_cli_option():
    from dataclasses import fields

    from mitoprobe.commands.finetune import finetune_cmd

    cli = {p.name for p in finetune_cmd.params}
    renamed = {"max_epochs": "epochs"}
    missing = [f.name for f in fields(FinetuneConfig)
               if f.name not in ("model", "method", "schema_version") and renamed.get(f.name, f.name) not in cli]
    assert missing == []
