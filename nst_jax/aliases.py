"""neural-style's command line (jcjohnson/neural-style, ProGamerGov/neural-style-pt) understood as it is.

A user's ``-style_image a.jpg -content_image b.jpg -image_size 512 -gpu c -backend nn`` is rewritten into
nst-jax flags before parsing (:func:`translate`): options with an nst-jax equivalent become it (values
converted where the two differ, e.g. ``-original_colors 1``), options that only choose hardware or a Torch
backend are accepted and dropped with a one-line note (JAX picks the device and compiles the program itself),
and options that would change the result but that nst-jax does not have are refused with what to use instead.
"""

from __future__ import annotations

from collections.abc import Sequence

#: neural-style flag -> nst-jax flag (the value passes unchanged).
RENAMED = {
    "-style_image": "--style",
    "-content_image": "--content",
    "-output_image": "--output",
    "-image_size": "--image-size",
    "-num_iterations": "--num-iterations",
    "-style_weight": "--style-weight",
    "-content_weight": "--content-weight",
    "-tv_weight": "--tv-weight",
    "-init": "--init",
    "-init_image": "--init-image",
    "-optimizer": "--optimizer",
    "-learning_rate": "--learning-rate",
    "-pooling": "--pooling",
    "-style_scale": "--style-scale",
    "-print_iter": "--print-every",
    "-save_iter": "--save-every",
    "-content_layers": "--content-layers",
    "-style_layers": "--style-layers",
    "-lbfgs_num_correction": "--lbfgs-history",
}

#: Options that pick hardware or a Torch backend: not needed here. Name -> whether it takes a value.
NOT_NEEDED = {
    "-gpu": True,
    "-backend": True,
    "-cudnn_autotune": False,
    "-multidevice_strategy": True,
    "-disable_check": False,
}

#: Options that would change the result and have no nst-jax equivalent: name -> (takes a value, what to do).
UNSUPPORTED = {
    "-normalize_gradients": (False, "nst-jax does not normalize gradients; leave it out"),
    "-model_file": (True, "convert the model with scripts/convert_torch_weights.py and pass --weights FILE"),
    "-proto_file": (True, "convert the model with scripts/convert_torch_weights.py and pass --weights FILE"),
}


class AliasError(ValueError):
    """A neural-style option that nst-jax cannot honour; the message says what to use instead."""


def translate(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Rewrites neural-style options in ``argv`` into nst-jax flags.

    Returns:
        ``(argv, notes)``: the rewritten arguments, and one note per option that was dropped as not needed.

    Raises:
        AliasError: an option that would change the result and has no equivalent.
    """
    out: list[str] = []
    notes: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        name, eq, inline = a.partition("=")
        value = inline if eq else (args[i + 1] if i + 1 < len(args) else None)
        used = 1 if eq else 2  # tokens taken by an option with a value
        if name in RENAMED:
            if value is None:
                raise AliasError(f"{name} needs a value (nst-jax: {RENAMED[name]})")
            out += _renamed(name, value)
            i += used
        elif name == "-original_colors":
            if value is None or value not in ("0", "1"):
                raise AliasError(f"-original_colors takes 0 or 1, got {value!r} (nst-jax: --original-colors)")
            out.append("--original-colors" if value == "1" else "--no-original-colors")
            i += used
        elif name == "-style_blend_weights":
            if value is None:
                raise AliasError("-style_blend_weights needs a value, e.g. 3,7 (nst-jax: --style-blend-weights)")
            if value.lower() != "nil":
                out += ["--style-blend-weights", *[w for w in value.split(",") if w.strip()]]
            i += used
        elif name == "-seed":
            if value is None:
                raise AliasError("-seed needs a value (nst-jax: --seed)")
            if value.strip().startswith("-"):  # neural-style's -1: a random seed each run
                notes.append(f"-seed {value}: nst-jax runs are reproducible; using --seed 0 (pass another to vary)")
            else:
                out += ["--seed", value]
            i += used
        elif name in NOT_NEEDED:
            takes = NOT_NEEDED[name]
            shown = f"{name} {value}" if takes and not eq and value is not None else a
            notes.append(f"{shown}: not needed, JAX uses the available accelerator and compiles the program itself")
            i += used if takes else 1
        elif name in UNSUPPORTED:
            raise AliasError(f"{name} is not supported: {UNSUPPORTED[name][1]}")
        else:
            out.append(a)
            i += 1
    return out, notes


def _renamed(name: str, value: str) -> list[str]:
    flag = RENAMED[name]
    if flag == "--style":  # neural-style: comma-separated style images
        out = []
        for path in (p for p in value.split(",") if p.strip()):
            out += ["--style", path]
        return out
    return [flag, value]
