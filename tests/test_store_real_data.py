"""The real AMi-Br benchmark from ../shared, imported once per session (``real_store``)."""

from __future__ import annotations

import pytest

from mitoprobe.store import Store
from mitoprobe.store.dataset import patch_id_for

pytestmark = pytest.mark.slow

EXPECTED = {  # (dataset, split): (patches, atypical), from the paper and the issue
    ("AMi-Br", "train"): (2894, 648),
    ("AMi-Br", "test"): (826, 184),
    ("AtNorM-Br", "test"): (746, 128),
    ("AtNorM-MD", "test"): (2107, 219),
}
# Pinned ids: a change to the id scheme would orphan every stored vector, so it must be deliberate.
GOLDEN_IDS = {
    "AMi-Br/Normal/MIDOG21_6.png": "13d72f61dceb4a04",
    "AtNorM-MD/Normal/1.png": "0eca46f420df7ca8",
}


@pytest.fixture(scope="module")
def patches(real_store: Store):
    return real_store.patches()


def test_counts(patches):
    got = {k: (len(g), int(g["y"].sum())) for k, g in patches.groupby(["dataset", "split"])}
    assert got == EXPECTED
    assert len(patches) == 6573


def test_labels_match_y(patches):
    assert ((patches["label"] == "Atypical") == (patches["y"] == 1)).all()


def test_every_amibr_patch_has_a_slide(patches):
    amibr = patches[patches["dataset"] == "AMi-Br"]
    assert amibr["slide"].notna().all() and (amibr["slide"] != "").all()
    assert amibr["source"].notna().all()
    assert patches.loc[patches["dataset"] != "AMi-Br", "slide"].isna().all()


def test_expert_vote_columns(patches):
    votes = [f"expert{k}_atypical" for k in range(1, 6)]
    amibr = patches[patches["dataset"] == "AMi-Br"]
    md = patches[patches["dataset"] == "AtNorM-MD"]
    br = patches[patches["dataset"] == "AtNorM-Br"]
    assert (amibr["n_experts"] == 3).all() and (md["n_experts"] == 5).all() and (br["n_experts"] == 0).all()
    assert amibr[votes[:3]].notna().all().all() and amibr[votes[3:]].isna().all().all()
    assert md[votes].notna().all().all()
    assert br[votes].isna().all().all()
    # The AtNorM-MD label is the majority of its 5 votes.
    assert ((md[votes].sum(axis=1) >= 3).astype(int) == md["y"]).all()


def test_test_slides_disjoint_from_train(patches):
    amibr = patches[patches["dataset"] == "AMi-Br"]
    train = set(amibr.loc[amibr["split"] == "train", "slide"])
    test = set(amibr.loc[amibr["split"] == "test", "slide"])
    assert train and test and not train & test


def test_ids_unique_and_stable(patches, real_data_dir):
    assert patches["patch_id"].is_unique
    assert (patches["patch_id"].str.fullmatch(r"[0-9a-f]{16}")).all()
    ids = patches.set_index("relpath")["patch_id"]
    for relpath, pid in GOLDEN_IDS.items():
        assert ids[relpath] == pid
    for _, r in patches.sample(25, random_state=0).iterrows():
        raw = (real_data_dir / r["relpath"]).read_bytes()
        assert patch_id_for(r["dataset"], r["filename"], raw) == r["patch_id"]


def test_images_are_rgb_128(real_store: Store, patches):
    import io

    from PIL import Image

    sample = patches.sample(20, random_state=1)["patch_id"].tolist()
    for png in real_store.images(sample).values():
        with Image.open(io.BytesIO(png)) as img:
            assert (img.mode, img.size) == ("RGB", (128, 128))

