import numpy as np
import pytest

from canvas_jax.data import loader as P
from canvas_jax.data.shapes import ShapesConfig, ShapesSource
from canvas_jax.errors import InputError


def _source(n=64, resolution=16):
    return ShapesSource(ShapesConfig(resolution=resolution), num_examples=n, seed=2)


def test_batch_contract_from_memory(tokenizer):
    cfg = P.ImagePipelineConfig(resolution=16, mask_kinds=("rectangles", "brush", "outpaint"))
    batch = next(P.make_image_iterator(_source(), tokenizer, cfg, batch_size=4, seed=0))
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.float32
    assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0 and batch["image"].min() < 0 < batch["image"].max()
    for key in ("input_ids", "attention_mask"):
        assert batch[key].shape == (4, 32) and batch[key].dtype == np.int32
    assert batch["mask"].shape == (4, 16, 16, 1) and batch["mask"].dtype == np.float32
    assert set(np.unique(batch["mask"])) <= {0.0, 1.0}
    assert batch["heldout"].dtype == np.int32 and batch["heldout"].shape == (4,)
    assert "caption" not in batch
    # ids are the tokenizer's for the record's caption (no dropout configured)
    texts = [tokenizer.decode(ids) for ids in batch["input_ids"]]
    assert all(t.startswith("a ") and " at the " in t for t in texts)


def test_from_dataset_folder_and_resize(shapes_dir, tokenizer):
    cfg = P.ImagePipelineConfig(resolution=8, keep_caption=True)
    it = P.make_image_iterator(shapes_dir, tokenizer, cfg, batch_size=3, split="test", shuffle=False, num_epochs=1)
    batches = list(it)
    assert len(batches) == 2 and batches[0]["image"].shape == (3, 8, 8, 3)
    src = ShapesSource(ShapesConfig(resolution=16), num_examples=6, seed=3, split="test")
    assert list(batches[0]["caption"]) == [src[i]["caption"] for i in range(3)]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        P.make_image_iterator(shapes_dir + "_nope", tokenizer, cfg, batch_size=2)


def test_caption_dropout_rate(tokenizer):
    cfg = P.ImagePipelineConfig(resolution=16, caption_dropout=0.3, keep_caption=True)
    it = P.make_image_iterator(_source(200), tokenizer, cfg, batch_size=50, seed=4)
    batches = [next(it) for _ in range(4)]
    empty = np.concatenate([b["caption"] == "" for b in batches])
    assert 0.2 < empty.mean() < 0.4
    ids = np.concatenate([b["attention_mask"] for b in batches]).sum(-1)
    assert np.all((ids == 2) == empty)  # a dropped caption tokenizes to [CLS] [SEP] only


def test_flip_swaps_left_and_right(tokenizer):
    cfg = P.ImagePipelineConfig(resolution=16, random_flip=True, swap_left_right=True, keep_caption=True)
    batch = next(P.make_image_iterator(_source(), None, cfg, batch_size=32, seed=0, shuffle=False))
    src = _source()
    flipped = 0
    for i in range(32):
        image = src[i]["image"].astype(np.float32) / 127.5 - 1
        if np.allclose(batch["image"][i], image[:, ::-1]) and not np.allclose(image, image[:, ::-1]):
            flipped += 1
            assert batch["caption"][i] == P.swap_left_right(src[i]["caption"])
        else:
            np.testing.assert_allclose(batch["image"][i], image)
            assert batch["caption"][i] == src[i]["caption"]
    assert 5 < flipped < 27
    assert P.swap_left_right("a red circle at the top left and a blue square at the center right") == \
        "a red circle at the top right and a blue square at the center left"


def test_state_restore_gives_the_same_next_batch(tokenizer):
    cfg = P.ImagePipelineConfig(resolution=16, caption_dropout=0.5, random_flip=True, random_crop=True,
                                crop_scale=1.25, mask_kinds=("brush",))
    it = P.make_image_iterator(_source(20), tokenizer, cfg, batch_size=4, seed=9)
    for _ in range(7):  # past the end of the first epoch
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(2)]
    fresh = P.make_image_iterator(_source(20), tokenizer, cfg, batch_size=4, seed=9)
    fresh.set_state(state)
    for want in expected:
        got = next(fresh)
        assert set(got) == set(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_shards_are_disjoint():
    cfg = P.ImagePipelineConfig(resolution=16, keep_caption=True)
    seen = []
    for shard in range(2):
        it = P.make_image_iterator(_source(8), None, cfg, batch_size=4, seed=0, num_epochs=1, shard_index=shard,
                                   shard_count=2)
        seen.append({c for b in it for c in b["caption"]})
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_bad_config_is_named():
    with pytest.raises(InputError, match="caption_dropout=1.5"):
        P.ImagePipelineConfig(caption_dropout=1.5)
    with pytest.raises(InputError, match="mask_kinds"):
        P.ImagePipelineConfig(mask_kinds=("circles",))
    with pytest.raises(InputError, match="source"):
        P.open_source(42)
