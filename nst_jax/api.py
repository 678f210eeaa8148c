"""The library entry point: ``nst_jax.stylize(content, style, **settings) -> Result``."""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import images, optim, vgg, weights
from nst_jax.config import Settings, stages
from nst_jax.objective import Objective, make_targets


@dataclass
class Result:
    """The outcome of a stylization.

    Attributes:
        array: the output, float32 ``(H, W, 3)`` RGB in [0, 1].
        history: loss records; ``history[0]`` is the initial image at iteration 0.
        settings: the settings used.
        output: where the image was written, if it was.
    """

    array: np.ndarray
    history: list[optim.Record]
    settings: Settings
    output: Path | None = None
    snapshots: list[Path] = field(default_factory=list)

    @property
    def image(self):
        """The output as a ``PIL.Image``."""
        return images.to_pil(self.array)

    @property
    def loss(self) -> float:
        """Final total loss."""
        return self.history[-1].total

    def save(self, path, *, metadata: dict | None = None) -> Path:
        """Writes the output atomically (PNG gets the settings as metadata)."""
        meta = {"settings": self.settings.to_dict(), **(metadata or {})}
        return images.save_image(self.array, path, metadata=meta)

    def _repr_png_(self) -> bytes:  # notebooks display the result
        import io

        buf = io.BytesIO()
        self.image.save(buf, format="PNG")
        return buf.getvalue()


@functools.lru_cache(maxsize=2)
def _cached_params(spec: str | None):
    return weights.resolve_params(spec)


def get_params(spec: str | None):
    """VGG-19 params for a weights spec (see :func:`nst_jax.load_vgg19`), cached per spec."""
    if spec is None:
        spec = os.environ.get("NST_JAX_WEIGHTS") or None
    if spec is not None and spec != "random":
        spec = str(Path(spec).expanduser().resolve())
    return _cached_params(spec)


def make_settings(settings: Settings | None = None, **overrides) -> Settings:
    """``settings`` (default: neural-style's) with ``overrides`` applied; unknown names are an error."""
    settings = settings or Settings()
    names = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown setting(s) {', '.join(unknown)}; valid settings: {', '.join(sorted(names))}.")
    return dataclasses.replace(settings, **overrides) if overrides else settings


def prepare_styles(style, s: Settings) -> list[np.ndarray]:
    """Loads and resizes the style image(s) to ``image_size * style_scale`` (long side)."""
    styles = list(style) if isinstance(style, (list, tuple)) else [style]
    if not styles:
        raise ValueError("no style image given: pass at least one.")
    if s.style_blend_weights is not None and len(s.style_blend_weights) != len(styles):
        raise ValueError(f"style_blend_weights has {len(s.style_blend_weights)} value(s) for {len(styles)} "
                         "style image(s); give one weight per style image.")
    size = max(1, int(s.image_size * s.style_scale))
    out = []
    for i, st in enumerate(styles, start=1):
        label = "style image" if len(styles) == 1 else f"style image {i}"
        out.append(images.resize_long_side(images.load_image(st, label=label), size, label=label))
    return out


def initial_image(s: Settings, content: np.ndarray, styles: list[np.ndarray], key=None) -> jax.Array:
    """The starting point in Caffe space, ``(H, W, 3)``, for content of shape ``content.shape``."""
    h, w = content.shape[:2]
    if s.init == "random":
        key = jax.random.key(s.seed) if key is None else key
        return 0.001 * jax.random.normal(key, (h, w, 3), jnp.float32)  # neural-style: randn * 0.001
    if s.init == "content":
        src = content
    elif s.init == "style":
        src = images.resize(styles[0], (h, w))
    else:
        src = images.resize(images.load_image(s.init_image, label="init image"), (h, w))
    return vgg.preprocess(jnp.asarray(src))


def stylize(content, style, settings: Settings | None = None, *, output: str | os.PathLike | None = None,
            callback: Callable[[optim.Record], None] | None = None, progress: bool = True,
            **overrides) -> Result:
    """Stylizes one content image.

    Args:
        content: a path, a ``PIL.Image`` or an ``(H, W, 3)`` float array in [0, 1].
        style: one style image (same kinds) or a list of them (blended by ``style_blend_weights``).
        settings: a :class:`Settings`; ``overrides`` (any of its field names) are applied on top.
        output: if given, the result is written there atomically (PNG metadata holds the settings),
            and snapshots (``save_every``) next to it as ``<stem>_<iteration><suffix>``.
        callback: called with each progress :class:`~nst_jax.optim.Record` (outside ``jit``).
        progress: show a progress bar (``tqdm.auto``: terminal or notebook).

    Returns:
        A :class:`Result`; ``result.image`` is a PIL image, ``result.history[0]`` the initial loss.

    Raises:
        ValueError: a bad setting or input (``images.ImageError`` for images), naming it.
        nst_jax.optim.NonFiniteLossError: the loss became NaN/inf (nothing is written).
    """
    s = make_settings(settings, **overrides)
    out_path = images.check_output_path(output) if output is not None else None
    content_img = images.load_image(content, label="content image")
    content_img = images.resize_long_side(content_img, s.image_size, label="content image")
    styles = prepare_styles(style, s)
    params = get_params(s.weights)

    objective = Objective.from_settings(s)
    spec = optim.SolverSpec.from_settings(s)
    plan = coarse_to_fine(s)
    history: list[optim.Record] = []
    snapshots: list[Path] = []
    bar = _progress_bar(sum(st.iterations for st in plan)) if progress else None
    t_start = time.perf_counter()

    def on_stop(state: optim.State, elapsed: float, *, offset: int, size: int, last: bool, t_stage: float) -> None:
        it = offset + int(state.iteration)
        t = jax.device_get(state.terms)
        rec = optim.Record(it, float(t.total), float(t.content), float(t.style), float(t.tv),
                           t_stage - t_start + elapsed, size)
        if not history or (history[-1].iteration, history[-1].size) != (it, size):
            history.append(rec)
        if bar is not None:
            bar.update(it - bar.n)
            bar.set_postfix(loss=f"{rec.total:.4g}", content=f"{rec.content:.3g}", style=f"{rec.style:.3g}",
                            **({"size": size} if len(plan) > 1 else {}))
        if callback is not None:
            callback(rec)
        stage_it = int(state.iteration)
        if (last and out_path is not None and s.save_every and stage_it and stage_it % s.save_every == 0
                and stage_it < s.num_iterations):
            snap = out_path.with_name(f"{out_path.stem}_{stage_it}{out_path.suffix}")
            snapshots.append(images.save_image(finish_image(state.x, content_img, s), snap,
                                               metadata={"settings": s.to_dict(), "iteration": stage_it}))

    x, offset = None, 0
    try:
        for stage in plan:
            stage_content, stage_styles = stage.images(content_img, styles, s)
            targets = make_targets(objective, params, vgg.preprocess(jnp.asarray(stage_content)),
                                   [vgg.preprocess(jnp.asarray(st)) for st in stage_styles], s.style_blend_weights)
            x0 = initial_image(s, stage_content, stage_styles) if x is None else upsample(x, stage_content.shape[:2])
            stepper = optim.single_image_stepper(objective, spec, params, targets, s.loop)
            n_iter = stage.iterations
            state = optim.run(stepper, x0, n_iter, chunk_size=s.chunk_size,
                              stops=optim.checkpoints(n_iter, s.print_every, s.save_every if stage.last else 0),
                              on_stop=functools.partial(on_stop, offset=offset, size=stage.size, last=stage.last,
                                                        t_stage=time.perf_counter()))
            x, offset = state.x, offset + int(state.iteration)
    finally:
        if bar is not None:
            bar.close()
    result = Result(finish_image(state.x, content_img, s), history, s, snapshots=snapshots)
    if out_path is not None:
        result.output = result.save(out_path, metadata={"iterations": int(state.iteration),
                                                        "loss": result.loss})
    return result


@dataclass(frozen=True)
class Stage:
    """One stage of a stylization: the long side, its iterations, and whether it is the last (full size)."""

    size: int
    iterations: int
    last: bool

    def images(self, content_img: np.ndarray, styles: list[np.ndarray],
               s: Settings) -> tuple[np.ndarray, list[np.ndarray]]:
        """The stage's content and style images: the full-size ones at the last stage, else resized."""
        return (content_img, styles) if self.last else stage_images(content_img, styles, self.size, s)


def coarse_to_fine(s: Settings) -> list[Stage]:
    """The stages of a stylization (:func:`nst_jax.config.stages`): each stage after the first starts from
    the previous one's result upsampled (:func:`upsample`); one stage without ``scales``."""
    plan = stages(s)
    return [Stage(size, n, k == len(plan) - 1) for k, (size, n) in enumerate(plan)]


def stage_images(content_img: np.ndarray, styles: list[np.ndarray], size: int,
                 s: Settings) -> tuple[np.ndarray, list[np.ndarray]]:
    """The content and style images of a coarse-to-fine stage of long side ``size``, resized from the
    full-size ones (style images to ``size * style_scale``)."""
    label = f"content image at coarse-to-fine scale {size}"
    stage_content = images.resize_long_side(content_img, size, label=label)
    style_size = max(1, int(size * s.style_scale))
    stage_styles = [images.resize_long_side(st, style_size, label=f"style image at coarse-to-fine scale {size}")
                    for st in styles]
    return stage_content, stage_styles


def upsample(x: jax.Array, size_hw: tuple[int, int]) -> jax.Array:
    """Bicubic resize of Caffe-space images ``(H, W, 3)`` or ``(N, H, W, 3)`` to ``size_hw``: a coarse stage's
    result becomes the next stage's start."""
    resize = functools.partial(_resize_hw, size_hw=tuple(size_hw))
    return jax.vmap(resize)(x) if x.ndim == 4 else resize(x)


@functools.partial(jax.jit, static_argnames="size_hw")
def _resize_hw(x, size_hw):
    return jax.image.resize(x, (*size_hw, x.shape[-1]), method="cubic")


def finish_image(x: jax.Array, content_img: np.ndarray, s: Settings) -> np.ndarray:
    """Caffe-space optimized image -> RGB [0, 1] float32 output (content colors restored if asked)."""
    rgb = np.clip(np.asarray(vgg.deprocess(x), np.float32), 0.0, 1.0)
    if s.original_colors:
        rgb = images.original_colors(content_img, rgb)
    return rgb


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="it", dynamic_ncols=True, leave=False)


__all__: Sequence[str] = ["Result", "stylize", "get_params", "make_settings"]
