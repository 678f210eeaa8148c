"""The normalized VGG-19 (nst_jax.normalize): the rescaling's invariants checked in float64 NumPy against the
original network's activations, the file and its provenance, ``--weights normalized``, the CLI and its errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import jax
import numpy as np
import pytest

from nst_jax import api, cli, images, normalize, vgg, weights

ROOT = Path(__file__).resolve().parents[1]
SIZE = 48  # the images' side: every array test shares one shape, so each function compiles once
RELU = [f"relu{name[4:]}" for name in vgg.CONV_LAYERS]


def _block_last_conv(block: int) -> str:
    return [name for name in vgg.CONV_LAYERS if name.startswith(f"conv{block}_")][-1]


def _scale_of(layer: str) -> str:
    """The convolution whose scale divides a layer's activations (a pool's: its block's last convolution)."""
    return _block_last_conv(int(layer[4])) if layer.startswith("pool") else "conv" + layer[4:]


@jax.jit
def _all_features(params, x):
    return vgg.apply(params, vgg.preprocess(x), vgg.LAYERS, pooling="avg")


def features(params, image: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's activations of one image, ``(H, W, C)`` float64."""
    out = _all_features(jax.tree.map(np.asarray, params), image[None].astype(np.float32))
    return {name: np.asarray(f[0], np.float64) for name, f in out.items()}


def biased_params(seed: int = 0) -> dict:
    """Random params with small non-zero biases, so that a bias left unscaled would be caught."""
    params = weights.random_params(seed)
    rng = np.random.default_rng(seed)
    for layer in params["params"].values():
        layer["bias"] = rng.normal(scale=0.1, size=layer["bias"].shape).astype(np.float32)
    return params


@pytest.fixture(scope="module")
def arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.uniform(size=(SIZE, SIZE, 3)).astype(np.float32) for _ in range(2)]


@pytest.fixture(scope="module")
def case(arrays):
    """(original params, its normalization on the two arrays, the original's and the normalized features)."""
    params = biased_params()
    result = normalize.normalize(params, arrays, examples=False, size=SIZE)
    return (params, result, [features(params, a) for a in arrays],
            [features(result.params, a) for a in arrays])


def original_means(orig: list[dict]) -> dict[str, np.ndarray]:
    """Per convolution, its channels' mean activation over both images and all positions (the images have
    one shape: the mean of their means)."""
    return {name: np.mean([f["relu" + name[4:]].mean(axis=(0, 1)) for f in orig], axis=0)
            for name in vgg.CONV_LAYERS}


def test_scales_are_the_mean_activations_of_the_original_network(case):
    _, result, orig, _ = case
    means = original_means(orig)
    for name, mean in means.items():
        active = mean > 0
        np.testing.assert_allclose(result.scales[name][active], mean[active], rtol=1e-5, err_msg=name)
        assert (result.scales[name][~active] == 1).all()  # never active: scale 1
        assert result.dead[name] == np.sum(~active)
    assert sum(result.dead.values()) < 0.2 * sum(c for _, c in vgg.CONV_CHANNELS.values())  # most are active


def test_every_layer_is_the_original_divided_by_its_channel_scales(case):
    _, result, orig, norm = case
    for o, n in zip(orig, norm):
        for layer in vgg.LAYERS:
            # n = o / s, compared as n * s = o in the original's units: relative to the layer's largest
            # activation (float32 rounding of sums that cancel defeats an element-wise relative test)
            err = np.abs(n[layer] * result.scales[_scale_of(layer)] - o[layer]).max() / np.abs(o[layer]).max()
            assert err <= 1e-5, f"{layer}: relative error {err:.2e}"


def test_normalized_mean_activations_are_one(case):
    _, result, orig, norm = case
    barely = 0
    for relu in RELU:
        conv = "conv" + relu[4:]
        total = sum(f[relu].reshape(-1, f[relu].shape[-1]).sum(axis=0) for f in norm)
        count = sum(f[relu].shape[0] * f[relu].shape[1] for f in norm)
        mean = total / count
        active = mean > 0
        assert active.sum() == len(mean) - result.dead[conv]
        # A channel active at a few positions by a hair (mean < 1e-4 of its largest pre-activation) has a mean
        # below float32 rounding of its sums: the two networks round differently there, so it is left out.
        magnitude = np.max([np.abs(f[conv]).max(axis=(0, 1)) for f in orig], axis=0)
        resolved = active & (result.scales[conv] > 1e-4 * magnitude)
        barely += np.sum(active & ~resolved)
        np.testing.assert_allclose(mean[resolved], 1.0, atol=1e-3, err_msg=relu)
    assert barely <= 0.01 * sum(c for _, c in vgg.CONV_CHANNELS.values())


def test_gram_entries_are_divided_by_both_channels_scales(case):
    _, result, orig, norm = case

    def gram(f):
        h, w, c = f.shape
        flat = f.reshape(h * w, c)
        return flat.T @ flat / (c * h * w)

    for relu in ("relu1_1", "relu3_1", "relu5_1"):
        s = result.scales["conv" + relu[4:]]
        g_orig, g_norm = gram(orig[0][relu]), gram(norm[0][relu])
        i, j = np.argwhere(g_orig == g_orig.max())[0]  # an entry of two active channels
        assert g_norm[i, j] == pytest.approx(g_orig[i, j] / (s[i] * s[j]), rel=1e-5)
        # every entry, in the original's units (see the test above)
        assert np.abs(g_norm * np.outer(s, s) - g_orig).max() <= 1e-5 * np.abs(g_orig).max(), relu


def test_dead_channels_keep_scale_one_and_are_counted(arrays):
    params = biased_params()
    layer = params["params"]["conv1_1"]
    layer["kernel"][..., 5] = 0.0
    layer["bias"][5] = -1.0  # relu1_1 channel 5 is 0 everywhere
    params["params"]["conv3_1"]["bias"][[0, 7]] = -1e9  # and so are relu3_1's channels 0 and 7
    result = normalize.normalize(params, arrays, examples=False, size=SIZE)
    means = original_means([features(params, a) for a in arrays])
    assert means["conv1_1"][5] == 0 and (means["conv3_1"][[0, 7]] == 0).all()
    assert result.dead == {name: int(np.sum(m == 0)) for name, m in means.items()}
    assert result.scales["conv1_1"][5] == 1.0 and (result.scales["conv3_1"][[0, 7]] == 1.0).all()
    assert result.metadata["dead_channels"] == sum(result.dead.values()) >= 3
    assert result.metadata["layers"]["conv3_1"]["dead"] == result.dead["conv3_1"] >= 2
    norm = features(result.params, arrays[0])
    assert (norm["relu1_1"][..., 5] == 0).all() and (norm["relu3_1"][..., [0, 7]] == 0).all()
    live = means["conv3_1"] > 0
    after = np.mean([features(result.params, a)["relu3_1"].mean(axis=(0, 1)) for a in arrays], axis=0)
    np.testing.assert_allclose(after[live], 1.0, atol=1e-3)  # the live channels are still normalized


def test_file_round_trips_and_describe_shows_its_provenance(tmp_path, arrays):
    out = tmp_path / "normalized.npz"
    result = normalize.normalize_weights(out, "random", arrays, examples=False, size=SIZE)
    assert result.path == out and out.is_file()
    loaded = weights.load_params(out)
    for name in vgg.CONV_LAYERS:
        for kind in ("kernel", "bias"):
            np.testing.assert_array_equal(loaded["params"][name][kind], result.params["params"][name][kind])
    assert weights.load_vgg19(out).params["params"]["conv5_4"]["kernel"].shape == (3, 3, 512, 512)
    record = weights.describe(out)
    assert record["source"] == "file" and record["md5"] == hashlib.md5(out.read_bytes()).hexdigest()
    prov = record["provenance"]
    assert prov == weights.npz_metadata(out) == result.metadata
    assert prov["source"] == {"source": "random", "seed": 0}
    assert prov["images"] == [{"name": f"array {i + 1}", "shape": [SIZE, SIZE],
                               "sha256": hashlib.sha256(a.astype(np.float32).tobytes()).hexdigest()[:12]}
                              for i, a in enumerate(arrays)]
    assert (prov["size"], prov["pooling"]) == (SIZE, "avg")
    assert prov["dead_channels"] == sum(layer["dead"] for layer in prov["layers"].values())
    assert list(prov["layers"]) == list(vgg.CONV_LAYERS)
    assert prov["software"].startswith("nst_jax ")
    conv1 = prov["layers"]["conv1_1"]
    assert conv1["scale_min"] <= conv1["scale_median"] <= conv1["scale_max"]
    # the summary of relu1_1's channel means, computed here from the original (random) network
    means = np.mean([features(weights.random_params(0), a)["relu1_1"].mean(axis=(0, 1)) for a in arrays], axis=0)
    means = means[means > 0]
    for key, value in (("scale_min", means.min()), ("scale_median", np.median(means)), ("scale_max", means.max())):
        assert conv1[key] == pytest.approx(value, rel=1e-5), key


def test_an_npz_without_provenance_is_described_as_before(tmp_path):
    out = weights.save_npz(weights.random_params(0), tmp_path / "plain.npz")
    assert "provenance" not in weights.describe(out) and weights.npz_metadata(out) is None


def _png(path: Path, array: np.ndarray) -> Path:
    images.to_pil(array).save(path)
    return path


def test_cli_writes_the_file(tmp_path, arrays, capsys):
    a, b = _png(tmp_path / "a.png", arrays[0]), _png(tmp_path / "b.png", arrays[1])
    out = tmp_path / "net.npz"
    code = cli.main(["normalize-weights", "--weights", "random", "--no-examples", "--images", str(a), str(b),
                     "--size", str(SIZE), "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"wrote {out}" in captured.out and "random weights (seed 0)" in captured.out
    prov = weights.describe(out)["provenance"]
    assert [(i["name"], i["sha256"]) for i in prov["images"]] == [
        ("a.png", hashlib.sha256(a.read_bytes()).hexdigest()[:12]),
        ("b.png", hashlib.sha256(b.read_bytes()).hexdigest()[:12])]


def test_script_is_the_same_command():
    text = (ROOT / "scripts" / "normalize_vgg.py").read_text()
    assert 'cli.main(["normalize-weights", *sys.argv[1:]])' in text


def _fails(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(["normalize-weights", "--weights", "random", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_bad_inputs_give_clear_errors(tmp_path, arrays, capsys):
    out = tmp_path / "out.npz"
    assert "no images" in _fails(["--no-examples", "--output", str(out)], capsys)
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    err = _fails(["--images", str(bad), "--output", str(out)], capsys)
    assert "bad.jpg" in err and "normalization image 3" in err  # after the two bundled examples
    assert "'" + str(tmp_path / "missing.jpg") + "'" in _fails(["--images", str(tmp_path / "missing.jpg"),
                                                               "--output", str(out)], capsys)
    assert "size must be an integer from 32" in _fails(["--size", "8", "--output", str(out)], capsys)
    assert "already the normalized network" in _fails(["--weights", "normalized", "--output", str(out)], capsys)
    out.write_bytes(b"keep me")
    err = _fails(["--output", str(out)], capsys)
    assert "already exists" in err and "--overwrite" in err and out.read_bytes() == b"keep me"
    image = _png(tmp_path / "a.png", arrays[0])
    err = _fails(["--images", str(image), "--output", str(image), "--overwrite"], capsys)
    assert "replace an input" in err and image.is_file()
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_weights_normalized_is_computed_once_and_cached(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(weights.ENV_WEIGHTS, "random")
    monkeypatch.setenv(weights.ENV_CACHE, str(tmp_path))
    monkeypatch.setattr(normalize, "DEFAULT_SIZE", 32)  # the bundled examples, small
    pending = weights.describe("normalized")
    assert pending["source"] == "normalized" and pending["of"] == {"source": "random", "seed": 0}
    params = weights.resolve_params("normalized")
    err = capsys.readouterr().err
    assert err.count("computing the normalized VGG-19 of random weights (seed 0)") == 1
    (path,) = tmp_path.glob("vgg19_normalized_random0_*.npz")
    assert pending["path"] == str(path.resolve())
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no lock or temporary file is left
    prov = weights.describe("normalized")["provenance"]
    assert [i["name"] for i in prov["images"]] == ["starry_night.jpg", "tubingen.jpg"]
    assert (prov["size"], prov["pooling"]) == (32, "avg")
    mtime = path.stat().st_mtime_ns
    np.testing.assert_array_equal(api.get_params("normalized")["params"]["conv2_1"]["bias"],
                                  params["params"]["conv2_1"]["bias"])
    assert api.weights_used("normalized")["provenance"] == prov
    assert "computing" not in capsys.readouterr().err and path.stat().st_mtime_ns == mtime
    # the same file as the command writes from the same inputs
    out = tmp_path / "cli.npz"
    assert cli.main(["normalize-weights", "--size", "32", "--output", str(out)]) == 0
    np.testing.assert_array_equal(weights.load_npz(out)["params"]["conv5_4"]["kernel"],
                                  params["params"]["conv5_4"]["kernel"])
