"""``nst-jax serve``: a local web page to stylize by clicking.

The page (``nst_jax/static/index.html``, plain HTML and JavaScript, served from here: nothing is fetched from
the internet) uploads a content and a style image, sets the main options, starts a run, shows the image as it
changes and offers the result as a PNG that carries nst_jax's metadata (:meth:`nst_jax.api.Result.save`).

One stylization runs at a time, in a background thread, through :func:`nst_jax.stylize`; its
``image_callback`` hands over the image at each progress record, which the page fetches when the JSON status
(polled by the page) names a new one. Endpoints (all relative to the page):

* ``GET options``: the options the page offers, with their defaults, choices and help from
  :class:`nst_jax.Settings`.
* ``POST run``: multipart form with the files ``content`` and ``style`` and the options; ``{"error": ...}``
  with status 400 (bad image or setting, one line) or 409 (a run is in progress).
* ``GET status``: ``state`` (``idle``, ``starting``, ``running``, ``done``, ``stopped``, ``error``),
  ``iteration``, ``total``, ``losses``, ``preview`` and ``result`` URLs (with a counter, so each new image has
  a new URL), ``error``.
* ``GET preview.png``, ``GET result.png``, ``POST stop``.

Needs the ``web`` extra (Starlette, uvicorn, python-multipart): ``pip install -e '.[web]'``.

Size: the whole web command (form parsing, the run thread, the endpoints, the server's start and stop); the
page itself is ``static/index.html``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import traceback
import typing
from importlib import resources
from pathlib import Path

try:
    import python_multipart  # noqa: F401 - Starlette parses the uploads with it; fail here, not at the first upload
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route
except ModuleNotFoundError as e:
    _missing = str(e.name).partition(".")[0]  # the package to install (python_multipart: python-multipart)
    _missing = {"python_multipart": "python-multipart"}.get(_missing, _missing)
    raise ModuleNotFoundError(f"nst-jax serve needs the web extra ({_missing} is not installed): "
                              f"pip install -e '.[web]' (from a clone) or pip install 'nst-jax[web]'",
                              name=e.name) from e

from nst_jax import api, config, display, images, optim, provenance, terms
from nst_jax.config import SettingError, Settings
from nst_jax.weights import WeightsError

#: The settings the page offers, in its order, with their labels; every other setting keeps the server's value.
OPTIONS = {
    "image_size": "Image size (long side, px)",
    "num_iterations": "Iterations",
    "style_weight": "Style weight",
    "content_weight": "Content weight",
    "tv_weight": "TV weight",
    "optimizer": "Optimizer",
    "style_loss": "Style loss",
    "init": "Start from",
    "original_colors": "Keep the content's colors",
}

#: Errors of a run or of its inputs that are shown on the page as their one-line message.
USER_ERRORS = (ValueError, TypeError, WeightsError, optim.NonFiniteLossError)

_BUSY = ("starting", "running")


def choices(name: str) -> tuple[str, ...] | None:
    """The values the page offers for a setting, or None for a number or a flag."""
    if name == "style_loss":
        return terms.kinds("style")  # what the registry holds, so a newly registered statistic shows up
    if name == "init":  # 'image' needs a third file: left to the command line
        return tuple(i for i in typing.get_args(config.Init) if i != "image")
    if name == "optimizer":
        return typing.get_args(config.Optimizer)
    return None


def options(base: Settings | None = None) -> list[dict]:
    """What the page shows for each of :data:`OPTIONS`: name, label, kind (``int``, ``float``, ``bool`` or
    ``choice``), default (``base``'s value; default :class:`nst_jax.Settings`'s), choices and the help text."""
    base = base or Settings()
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    out = []
    for name, label in OPTIONS.items():
        f = fields[name]
        kind = "choice" if choices(name) else type(f.default).__name__
        out.append({"name": name, "label": label, "kind": kind, "default": getattr(base, name),
                    "choices": choices(name), "help": f.metadata.get("help", "")})
    return out


def preview_every(num_iterations: int) -> int:
    """How often (iterations) a run hands an image to the page: about 20 times per run, and at least every
    10 iterations (each image costs a copy from the device and a PNG encoding)."""
    return max(1, min(10, num_iterations // 20))


def settings_from_form(form, base: Settings | None = None) -> Settings:
    """The :class:`Settings` of a run: ``base`` (default :class:`nst_jax.Settings()`) with the page's fields
    (strings; a missing flag is False), recording every :func:`preview_every` iterations.

    Raises:
        SettingError: a field that is empty, not a number, or out of range; the message names the field by its
            field name (:func:`error_text` renders it with the page's labels).
    """
    base = base or Settings()
    defaults = {o["name"]: o for o in options(base)}
    values: dict = {}
    for name, opt in defaults.items():
        raw = form.get(name)
        kind = opt["kind"]
        if kind == "bool":
            values[name] = str(raw).lower() in ("true", "on", "1", "yes")
            continue
        raw = "" if raw is None else str(raw).strip()
        if not raw:
            raise SettingError("{0} is empty: enter a value (default: {default}).", name, default=opt["default"])
        if kind == "int":
            try:
                values[name] = int(raw)
            except ValueError:
                raise SettingError("{0} must be a whole number, got {got!r}.", name, got=raw) from None
        elif kind == "float":
            try:
                values[name] = float(raw)
            except ValueError:
                raise SettingError("{0} must be a number, got {got!r}.", name, got=raw) from None
        else:
            values[name] = raw
    settings = base.replace(**values)
    return settings.replace(print_every=preview_every(settings.num_iterations))


def error_text(error: BaseException) -> str:
    """An error's one-line message for the page: settings named by the page's labels."""
    if isinstance(error, SettingError):
        return error.render(lambda name: OPTIONS.get(name, name))
    return str(error)


class Busy(RuntimeError):
    """A run was started while another one is in progress."""


class Stopped(Exception):
    """Raised from the image callback to end a run the page asked to stop."""


class Runner:
    """One stylization at a time in a background thread, and what the page sees of it.

    Attributes:
        base: the settings of every run, before the page's options (:func:`settings_from_form`).
        workdir: where uploads and results are kept (those of the previous run are removed at a new start).
    """

    def __init__(self, base: Settings, workdir: Path):
        self.base, self.workdir = base, Path(workdir)
        self._lock = threading.Lock()
        self._run = 0  # runs started
        self._folders = 0  # run folders made
        self._state, self._error, self._message = "idle", None, ""
        self._record: optim.Record | None = None
        self._total = 0
        self._preview: bytes | None = None
        self._previews = 0  # images handed over, over all runs: the preview URL's counter
        self._latest = None  # the newest image (float array), for a stopped run's download
        self._result: Path | None = None
        self._download_name = "nst-jax.png"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- starting

    def busy_message(self) -> str | None:
        """Why a new run cannot start now, or None if it can."""
        with self._lock:
            if self._state not in _BUSY:
                return None
            where = (f"iteration {self._record.iteration} of {self._total}" if self._record is not None
                     else "preparing")
            return f"a stylization is already running ({where}): wait for it to finish, or press Stop first."

    def new_run_dir(self) -> Path:
        """A fresh folder for the next run's uploads and result (:meth:`start` removes the earlier ones)."""
        with self._lock:
            self._folders += 1
            path = self.workdir / f"run-{self._folders}"
        path.mkdir(parents=True)
        return path

    def start(self, folder: Path, content: Path, style: Path, settings: Settings) -> None:
        """Checks the inputs (loads and resizes both images) and starts the run in a background thread; the
        result goes to ``folder``.

        Raises:
            Busy: a run is in progress.
            ValueError: a bad image (``images.ImageError``), named by its upload's file name.
        """
        if (why := self.busy_message()) is not None:
            raise Busy(why)
        try:
            c = images.load_image(content, label="content image")
            images.resize_long_side(c, settings.image_size, label="content image")
            api.prepare_styles(style, settings)
        except images.ImageError as e:  # name the upload, not the folder it was saved in
            text = str(e)
            for path in (content, style):
                text = text.replace(str(path.parent) + os.sep, "")
            raise images.ImageError(text) from None
        with self._lock:
            if self._state in _BUSY:
                raise Busy("a stylization is already running: wait for it to finish, or press Stop first.")
            self._run += 1
            self._state, self._error = "starting", None
            self._message = "compiling (the first run at an image size takes longest)"
            self._record, self._total, self._latest = None, settings.num_iterations, None
            self._result = folder / "result.png"
            self._download_name = f"{content.stem}_{style.stem}.png"
            self._stop.clear()
            self._thread = threading.Thread(target=self._work, args=(settings, content, style, self._result),
                                            name="nst-jax-serve-run")
            self._thread.start()
        for old in self.workdir.glob("run-*"):  # the previous run's uploads and result
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)

    def stop(self) -> bool:
        """Asks the running stylization to stop at its next progress record; False if none runs."""
        with self._lock:
            if self._state not in _BUSY:
                return False
            self._stop.set()
            self._message = "stopping"
            return True

    def wait(self, timeout: float | None = None) -> None:
        """Waits for the current run's thread (tests, shutdown)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # ---- the run (background thread)

    def _on_image(self, record: optim.Record, image) -> None:
        png = display.png_bytes(image)
        with self._lock:
            self._record, self._latest, self._preview = record, image, png
            self._previews += 1
            self._state, self._message = "running", "running"
        if self._stop.is_set():
            raise Stopped

    def _work(self, settings: Settings, content: Path, style: Path, out: Path) -> None:
        try:
            try:
                result = api.stylize(content, style, settings, progress=False, image_callback=self._on_image)
                result.save(out)
                self._finish("done", "done")
            except Stopped:  # the latest image, with what a result records, marked unfinished as Ctrl-C's are
                with self._lock:
                    record, latest = self._record, self._latest
                inputs = provenance.describe_inputs(api.input_paths(content, style, settings))
                partial = api.Result(latest, [record], settings, weights=api.weights_used(settings.weights),
                                     inputs=inputs)
                partial.save(out, metadata={"iteration": record.iteration, "partial": True})
                self._finish("stopped", f"stopped at iteration {record.iteration}")
        except USER_ERRORS as e:
            self._finish("error", "error", error=error_text(e))
        except Exception as e:  # noqa: BLE001 - shown on the page; the traceback goes to the server's terminal
            traceback.print_exc()
            self._finish("error", "error", error=f"unexpected error ({type(e).__name__}: {e}); the details are in "
                                                 f"the terminal that runs nst-jax serve")

    def _finish(self, state: str, message: str, error: str | None = None) -> None:
        with self._lock:
            self._state, self._message, self._error = state, message, error

    # ---- what the page reads

    def status(self) -> dict:
        """The page's view of the current (or last) run; see the module docstring."""
        with self._lock:
            rec = self._record
            finished = self._state in ("done", "stopped")
            return {
                "state": self._state, "message": self._message, "error": self._error, "run": self._run,
                "iteration": None if rec is None else rec.iteration, "total": self._total,
                "elapsed": None if rec is None else rec.elapsed,
                "losses": None if rec is None else {"total": rec.total, **rec.terms},
                "preview": None if self._preview is None else f"preview.png?n={self._previews}",
                "result": f"result.png?run={self._run}" if finished else None,
                "download_name": self._download_name,
            }

    def preview(self) -> bytes | None:
        """The newest image as PNG bytes, or None before the first."""
        with self._lock:
            return self._preview

    def result(self) -> tuple[Path, str] | None:
        """The finished (or stopped) run's PNG and its download name, or None."""
        with self._lock:
            if self._state in ("done", "stopped") and self._result.is_file():
                return self._result, self._download_name
            return None


def _safe_name(upload_name: str | None, fallback: str) -> str:
    """A plain file name for an upload: its own name's letters, digits, ``._-`` (kept in error messages)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(upload_name or "").name).strip("._") or fallback
    return name[:100]


def create_app(settings: Settings | None = None, workdir: str | Path | None = None) -> Starlette:
    """The web application of ``nst-jax serve``.

    Args:
        settings: the settings of every run (weights, layers, ...; default :class:`nst_jax.Settings()`); the
            page starts from their values of :data:`OPTIONS` and replaces those.
        workdir: where uploads and results are kept; default a new temporary folder.

    Returns:
        A Starlette app; its ``state.runner`` is the :class:`Runner`.

    Raises:
        SettingError: ``settings`` ask for snapshots (``save_every``), which the page does not write.
    """
    settings = settings or Settings()
    if settings.save_every:
        raise SettingError("{save_every=}: the page does not write snapshots; leave {save_every} at 0.", "save_every",
                           save_every=settings.save_every)
    runner = Runner(settings, Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="nst-jax-")))
    page = resources.files("nst_jax").joinpath("static", "index.html").read_text(encoding="utf-8")

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def get_options(request: Request) -> Response:
        return JSONResponse(options(runner.base))

    async def run(request: Request) -> Response:
        if (why := runner.busy_message()) is not None:
            return JSONResponse({"error": why}, status_code=409)
        async with request.form(max_files=2, max_fields=50) as form:
            uploads = {}
            for role in ("content", "style"):
                upload = form.get(role)
                if not isinstance(upload, UploadFile) or not upload.filename:
                    return JSONResponse({"error": f"choose a {role} image first."}, status_code=400)
                uploads[role] = (upload.filename, await upload.read())
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
        try:
            settings = settings_from_form(fields, runner.base)
        except SettingError as e:
            return JSONResponse({"error": error_text(e)}, status_code=400)
        folder = runner.new_run_dir()
        paths = {}
        for role, (filename, data) in uploads.items():
            paths[role] = folder / role / _safe_name(filename, role)
            paths[role].parent.mkdir()
            paths[role].write_bytes(data)
        try:
            await run_in_threadpool(runner.start, folder, paths["content"], paths["style"], settings)
        except Busy as e:
            shutil.rmtree(folder, ignore_errors=True)
            return JSONResponse({"error": str(e)}, status_code=409)
        except USER_ERRORS as e:
            shutil.rmtree(folder, ignore_errors=True)
            return JSONResponse({"error": error_text(e)}, status_code=400)
        return JSONResponse(runner.status())

    async def stop(request: Request) -> Response:
        return JSONResponse({"stopping": runner.stop()})

    async def status(request: Request) -> Response:
        return JSONResponse(runner.status(), headers={"Cache-Control": "no-store"})

    async def preview(request: Request) -> Response:
        png = runner.preview()
        if png is None:
            return JSONResponse({"error": "no image yet: start a run."}, status_code=404)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    async def result(request: Request) -> Response:
        found = runner.result()
        if found is None:
            return JSONResponse({"error": "no finished run yet."}, status_code=404)
        path, name = found
        return Response(path.read_bytes(), media_type="image/png",
                        headers={"Content-Disposition": f'attachment; filename="{name}"',
                                 "Cache-Control": "no-store"})

    app = Starlette(routes=[
        Route("/", index), Route("/options", get_options), Route("/run", run, methods=["POST"]),
        Route("/stop", stop, methods=["POST"]), Route("/status", status), Route("/preview.png", preview),
        Route("/result.png", result),
    ])
    app.state.runner = runner
    return app


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one), or a one-line error naming the port."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be a number from 0 to 65535 (0: any free port), got {port!r}.")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ValueError(f"host {host!r} is not a known address ({e.strerror}): use e.g. 127.0.0.1.") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(64)
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host} port {port} ({e.strerror}): pass another port "
                         f"(--port), or stop the program that uses it.") from None
    return sock


def serve(host: str = "127.0.0.1", port: int = 8000, settings: Settings | None = None) -> None:
    """Runs the page's server until Ctrl-C: binds ``host:port``, loads the weights, prints the address. At the
    end a run in progress is stopped at its next progress record (after its compilation, if it is compiling).

    Args:
        host: the address to listen on; the default is reachable from this computer only (the page has no
            login: anyone who can reach it can run stylizations).
        port: the port; 0 picks a free one (the printed address says which).
        settings: the settings of every run (see :func:`create_app`).

    Raises:
        ValueError: a bad host or port, the port is in use, or ``settings`` ask for snapshots.
        nst_jax.WeightsError: the weights could not be loaded.
    """
    sock = listen(host, port)
    workdir = Path(tempfile.mkdtemp(prefix="nst-jax-serve-"))
    runner = None
    try:
        app = create_app(settings, workdir)
        runner = app.state.runner
        # load (or download) the weights now: a problem shows here, not on the page at the first run
        api.get_params(app.state.runner.base.weights)
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(f"nst-jax serve: listening on {host}: the page has no login, anyone who can reach this "
                  f"address can use it.", file=sys.stderr)
        print(f"nst-jax serve: open http://{shown}:{bound}/ in a browser (Ctrl-C stops the server)", flush=True)
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    finally:
        sock.close()
        try:  # Python cannot exit while a run's thread is inside XLA (it aborts): stop the run and wait for it
            if runner is not None and runner.stop():
                print("nst-jax serve: stopping the run in progress (at its next iteration)...", file=sys.stderr,
                      flush=True)
            if runner is not None:
                runner.wait()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


__all__ = ["OPTIONS", "Busy", "Runner", "Stopped", "create_app", "listen", "options", "preview_every", "serve",
           "settings_from_form"]
