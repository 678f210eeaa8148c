"""Outputs say how they were made: inputs (name, path, short hash), weights, settings, losses, software and
device; ``nst-jax info`` prints it and ``nst-jax --from OUT`` reruns with the same settings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jax
import pytest

import nst_jax
from nst_jax import cli, images

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONTENT, STYLE = EXAMPLES / "tubingen.jpg", EXAMPLES / "starry_night.jpg"
FLAGS = ["--weights", "random", "--image-size", "48", "--num-iterations", "3", "--quiet"]


def _short_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def _check_inputs(meta: dict, content: Path = CONTENT, style: Path = STYLE) -> None:
    by_role = {i["role"]: i for i in meta["inputs"]}
    assert by_role["content image"] == {"role": "content image", "file": content.name,
                                        "path": str(content.resolve()), "sha256": _short_hash(content)}
    assert by_role["style image"]["file"] == style.name and by_role["style image"]["sha256"] == _short_hash(style)


def test_single_image_output_records_inputs_software_and_losses(tmp_path):
    out = tmp_path / "out.png"
    r = nst_jax.stylize(CONTENT, STYLE, output=out, weights="random", image_size=48, num_iterations=3,
                        progress=False)
    meta = images.read_metadata(out)
    _check_inputs(meta)
    env = meta["environment"]
    assert env["jax"] == jax.__version__ and env["nst_jax"] == nst_jax.__version__
    assert env["backend"] == jax.default_backend() and env["device"] == jax.devices()[0].device_kind
    assert meta["weights"] == {"source": "random", "seed": 0}
    assert meta["iterations"] == 3 and meta["loss"] == pytest.approx(r.loss)
    assert set(meta["terms"]) == {"content", "style", "tv"}
    assert meta["created"].endswith("+00:00")


def test_batch_outputs_record_content_and_style(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(CONTENT.read_bytes())
    summary = nst_jax.batch.run_job(folder, STYLE, tmp_path / "out", weights="random", image_size=48,
                                    num_iterations=2, progress=False)
    assert summary.exit_code == 0
    meta = images.read_metadata(tmp_path / "out" / "a.png")
    _check_inputs(meta, content=folder / "a.jpg")
    results = nst_jax.stylize_batch([CONTENT], STYLE, weights="random", image_size=48, num_iterations=2,
                                    progress=False)
    assert [i["role"] for i in results[0].inputs] == ["content image", "style image"]


def test_info_prints_how_an_output_was_made(tmp_path, capsys):
    out = tmp_path / "out.png"
    assert cli.main(["--content", str(CONTENT), "--style", str(STYLE), "--output", str(out), *FLAGS,
                     "--style-weight", "50"]) == 0
    capsys.readouterr()
    assert cli.main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert str(CONTENT.resolve()) in text and _short_hash(CONTENT) in text and _short_hash(STYLE) in text
    assert "--style-weight 50" in text and "--image-size 48" in text
    assert "--content-weight" not in text  # only what differs from the defaults
    assert "random (seed 0)" in text and "final loss:" in text and f"jax {jax.__version__}" in text
    assert cli.main(["info", "--json", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["style_weight"] == 50


def test_info_on_a_foreign_image_is_a_clear_error(tmp_path, capsys):
    foreign = tmp_path / "photo.png"
    images.to_pil(images.load_image(CONTENT)).save(foreign)
    with pytest.raises(SystemExit) as e:
        cli.main(["info", str(foreign)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "records no nst-jax settings" in err and "Traceback" not in err


def test_from_reruns_with_the_recorded_settings_and_style(tmp_path, capsys):
    first = tmp_path / "first.png"
    assert cli.main(["--content", str(CONTENT), "--style", str(STYLE), "--output", str(first), *FLAGS,
                     "--style-weight", "50", "--tv-weight", "0.01"]) == 0
    other = tmp_path / "other.jpg"
    other.write_bytes((EXAMPLES / "starry_night.jpg").read_bytes())
    second = tmp_path / "second.png"
    assert cli.main(["--from", str(first), "--content", str(other), "--output", str(second), "--quiet",
                     "--num-iterations", "2"]) == 0
    a, b = images.read_metadata(first), images.read_metadata(second)
    expected = {**a["settings"], "num_iterations": 2}
    assert b["settings"] == expected
    assert [i["path"] for i in b["inputs"] if i["role"] == "style image"] == [str(STYLE.resolve())]
    assert [i["path"] for i in b["inputs"] if i["role"] == "content image"] == [str(other.resolve())]
