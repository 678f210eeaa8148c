"""Weight sources: download/checksum/cache (against a local HTTP server), resolution order, file readers, errors."""

from __future__ import annotations

import errno
import hashlib
import http.server
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pooch
import pytest

from nst_jax import vgg, weights
from nst_jax.weights import WeightsError

FNAME = weights.KERAS_FILENAME


# ------------------------------------------------------------------------------------------------------------
# Helpers


def write_keras_2016_h5(path: Path, params: dict, dtype=np.float32) -> Path:
    """Writes params exactly like the original 2016 Keras no-top file (Keras 1 ``save_weights``).

    Root attribute ``layer_names`` (bytes); one group per layer, including the
    input and pooling layers, each with attribute ``weight_names`` (bytes, empty
    for weightless layers); datasets ``blockB_convI_W_1:0`` (HWIO kernel, BGR
    input) and ``blockB_convI_b_1:0`` directly under the layer group.
    """
    layer_names = ["input_1"]
    for b, n, _ in vgg.BLOCKS:
        layer_names += [f"block{b}_conv{i}" for i in range(1, n + 1)] + [f"block{b}_pool"]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in layer_names])
        for name in layer_names:
            g = f.create_group(name)
            if "_conv" not in name:
                g.attrs["weight_names"] = np.array([])  # what h5py makes of Keras 1's empty list
                continue
            b, i = name[len("block"):].split("_conv")
            ours = params["params"][f"conv{b}_{i}"]
            w_name, b_name = f"{name}_W_1:0", f"{name}_b_1:0"
            g.attrs["weight_names"] = np.array([w_name.encode(), b_name.encode()])
            g.create_dataset(w_name, data=np.asarray(ours["kernel"], dtype))
            g.create_dataset(b_name, data=np.asarray(ours["bias"], dtype))
    return path


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def nonzero_bias_params(seed: int) -> dict:
    """Random params with non-zero biases, so swapped kernel/bias or layers would be caught."""
    params = weights.random_params(seed)
    rng = np.random.default_rng(seed)
    for layer in params["params"].values():
        layer["bias"] = rng.normal(size=layer["bias"].shape).astype(np.float32)
    return params


def assert_params_equal(a: dict, b: dict) -> None:
    assert a["params"].keys() == b["params"].keys()
    for name in a["params"]:
        for kind in ("kernel", "bias"):
            np.testing.assert_array_equal(np.asarray(a["params"][name][kind]), np.asarray(b["params"][name][kind]),
                                          err_msg=f"{name}/{kind}")


def free_port() -> int:
    """A port on which nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WeightsServer:
    """A local HTTP server: ``/ok/<name>`` serves a file, ``/truncated/<name>`` announces more than it sends,
    ``/slow/<name>`` serves it in pieces over about ``slow_seconds``."""

    def __init__(self):
        self.files: dict[str, Path] = {}
        self.requests: list[str] = []
        self.slow_seconds = 3.0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10  # bounded: a stuck client cannot hang the test session

            def do_GET(self):  # noqa: N802 (http.server API)
                server.requests.append(self.path)
                _, mode, name = self.path.split("/", 2)
                if name not in server.files or mode not in ("ok", "truncated", "slow"):
                    self.send_error(404)
                    return
                body = server.files[name].read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if mode == "ok":
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif mode == "slow":
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    pieces = 10
                    for k in range(pieces):
                        self.wfile.write(body[k * len(body) // pieces:(k + 1) * len(body) // pieces])
                        self.wfile.flush()
                        time.sleep(server.slow_seconds / pieces)
                else:  # the connection drops mid-transfer
                    self.send_header("Content-Length", str(len(body) + 1000))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True

            def log_message(self, *args):  # keep test output quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, name: str, mode: str = "ok") -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/{name}"

    def count(self, name: str) -> int:
        return sum(r.endswith("/" + name) for r in self.requests)


# ------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture()
def server():
    srv = WeightsServer()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
        srv.thread.join(timeout=5)


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache folder via ``$NST_JAX_CACHE``; ``$NST_JAX_WEIGHTS`` unset."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(weights.ENV_CACHE, str(folder))
    monkeypatch.delenv(weights.ENV_WEIGHTS, raising=False)
    return folder


@pytest.fixture(scope="session")
def small_h5(tmp_path_factory) -> Path:
    """A small file with the 2016 layout (wrong shapes: for download tests only)."""
    rng = np.random.default_rng(0)
    small = {"params": {name: {"kernel": rng.normal(size=(3, 3, 2, 2)).astype(np.float32),
                               "bias": rng.normal(size=(2,)).astype(np.float32)} for name in vgg.CONV_LAYERS}}
    return write_keras_2016_h5(tmp_path_factory.mktemp("small") / FNAME, small)


@pytest.fixture(scope="session")
def full_params() -> dict:
    return nonzero_bias_params(seed=7)


@pytest.fixture(scope="session")
def full_h5(tmp_path_factory, full_params) -> Path:
    """A full-shape VGG-19 file in the 2016 layout (~80 MB, written once per session)."""
    return write_keras_2016_h5(tmp_path_factory.mktemp("full") / FNAME, full_params)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ------------------------------------------------------------------------------------------------------------
# Download


def test_fetch_downloads_once_and_verifies(server, cache, small_h5):
    server.files[FNAME] = small_h5
    url, known = server.url(FNAME), "md5:" + md5(small_h5)
    path = weights.fetch_weights(url, known, progress=False)
    assert path == cache / FNAME  # $NST_JAX_CACHE is the default cache
    assert path.read_bytes() == small_h5.read_bytes()
    assert server.count(FNAME) == 1
    assert weights.fetch_weights(url, known, progress=False) == path
    assert server.count(FNAME) == 1  # cached and verified: no second download
    assert files_in(cache) == [FNAME]


def test_fetch_wrong_checksum_leaves_no_file(server, cache, small_h5):
    server.files[FNAME] = small_h5
    wrong = "0" * 32
    with pytest.raises(WeightsError) as e:
        weights.fetch_weights(server.url(FNAME), "md5:" + wrong, progress=False)
    msg = str(e.value)
    assert "checksum mismatch" in msg and wrong in msg and md5(small_h5) in msg and "removed" in msg
    assert files_in(cache) == []


def test_fetch_interrupted_transfer_leaves_no_half_file(server, cache, small_h5):
    server.files[FNAME] = small_h5
    url = server.url(FNAME, mode="truncated")
    with pytest.raises(WeightsError) as e:
        weights.fetch_weights(url, "md5:" + md5(small_h5), progress=False)
    assert url in str(e.value)
    assert files_in(cache) == []


def test_fetch_offline_explains_manual_placement(cache):
    url = f"http://127.0.0.1:{free_port()}/{FNAME}"
    with pytest.raises(WeightsError) as e:
        weights.fetch_weights(url, "md5:" + weights.KERAS_MD5, progress=False)
    msg = str(e.value)
    assert url in msg
    assert str(cache / FNAME) in msg  # where to put the file by hand
    assert weights.ENV_WEIGHTS in msg and "weights='random'" in msg and "--weights random" in msg
    assert "--weights PATH" in msg  # a downloaded file, named as the command line takes it
    assert files_in(cache) == []


def test_fetch_http_error_is_clear(server, cache):
    url = server.url("no_such_file.h5")
    with pytest.raises(WeightsError, match="404"):
        weights.fetch_weights(url, "md5:" + weights.KERAS_MD5, progress=False)


def test_fetch_offline_leaves_no_directory(tmp_path, monkeypatch):
    folder = tmp_path / "cache" / "nested"
    monkeypatch.setenv(weights.ENV_CACHE, str(folder))
    with pytest.raises(WeightsError):
        weights.fetch_weights(f"http://127.0.0.1:{free_port()}/{FNAME}", "md5:" + weights.KERAS_MD5, progress=False)
    assert not (tmp_path / "cache").exists()  # neither the folder nor its parent, both created for the download


def test_fetch_interrupted_by_ctrl_c_leaves_nothing(server, cache, small_h5, monkeypatch):
    server.files[FNAME] = small_h5

    def interrupted(self, url, output_file, pooch_, check_only=False):
        if hasattr(output_file, "write"):
            output_file.write(b"partial")
        else:
            Path(output_file).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(pooch.HTTPDownloader, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        weights.fetch_weights(server.url(FNAME), "md5:" + md5(small_h5), progress=False)
    assert not cache.exists()


def test_fetch_prints_nothing_before_a_failed_connection(cache):
    # A separate process: its stderr is what a user sees (loggers bound to pytest's streams would escape capfd).
    code = ("import sys\nfrom nst_jax import weights\ntry:\n"
            "    weights.fetch_weights(sys.argv[1], 'md5:' + weights.KERAS_MD5, progress=True)\n"
            "except weights.WeightsError:\n    print('refused')\n")
    url = f"http://127.0.0.1:{free_port()}/{FNAME}"
    r = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, timeout=300,
                       env=os.environ | {weights.ENV_CACHE: str(cache)})
    assert r.stdout.strip() == "refused", r.stderr
    assert "ownloading" not in r.stderr and url not in r.stderr  # no line announcing a download that never starts


def test_fetch_announces_the_download_once_connected(server, cache, small_h5, capfd):
    server.files[FNAME] = small_h5
    weights.fetch_weights(server.url(FNAME), "md5:" + md5(small_h5), progress=True)
    err = capfd.readouterr().err
    assert server.url(FNAME) in err and str(cache / FNAME) in err


def test_downloaded_file_gets_the_usual_permissions(server, cache, small_h5):
    server.files[FNAME] = small_h5
    old = os.umask(0o022)
    try:
        path = weights.fetch_weights(server.url(FNAME), "md5:" + md5(small_h5), progress=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # 0666 minus the umask, readable by other users


def test_fetch_refuses_a_corrupt_cached_file(server, cache, small_h5):
    server.files[FNAME] = small_h5
    cache.mkdir()
    bad = cache / FNAME
    bad.write_bytes(small_h5.read_bytes()[:1000])  # a truncated copy put there by hand
    with pytest.raises(WeightsError) as e:
        weights.fetch_weights(server.url(FNAME), "md5:" + md5(small_h5), progress=False)
    msg = str(e.value)
    assert str(bad) in msg and "corrupt" in msg and "delete it" in msg and md5(small_h5) in msg
    assert server.count(FNAME) == 0 and bad.stat().st_size == 1000  # not used, not silently replaced


@pytest.fixture()
def make_read_only(monkeypatch):
    """Makes a folder unwritable: mode 0555 and, where that does not stop this user (root), ``os.open`` and
    ``os.mkdir`` refuse to create anything inside it with EACCES, as the kernel does for other users."""
    folders: list[Path] = []
    real_open, real_mkdir = os.open, os.mkdir

    def inside(path) -> bool:
        path = Path(os.fsdecode(path)).absolute()
        return any(path == f or f in path.parents for f in folders)

    def refuse(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

    def fake_open(path, flags, mode=0o777, *args, **kwargs):
        if inside(path) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            refuse(path)
        return real_open(path, flags, mode, *args, **kwargs)

    def fake_mkdir(path, mode=0o777, *args, **kwargs):
        if inside(Path(os.fsdecode(path)).parent):
            refuse(path)
        return real_mkdir(path, mode, *args, **kwargs)

    def make(folder: Path) -> Path:
        folder.chmod(0o555)
        folders.append(folder.absolute())
        if os.access(folder, os.W_OK):
            monkeypatch.setattr(os, "open", fake_open)
            monkeypatch.setattr(os, "mkdir", fake_mkdir)
        return folder

    yield make
    for f in folders:
        f.chmod(0o755)


@pytest.mark.parametrize("sub", ["", "nested/cache"])
def test_read_only_cache_folder_is_explained(tmp_path, monkeypatch, make_read_only, sub):
    (tmp_path / "ro").mkdir()
    folder = make_read_only(tmp_path / "ro") / sub
    monkeypatch.setenv(weights.ENV_CACHE, str(folder))
    monkeypatch.delenv(weights.ENV_WEIGHTS, raising=False)
    monkeypatch.setattr(weights, "KERAS_URL", f"http://127.0.0.1:{free_port()}/{FNAME}")
    with pytest.raises(WeightsError) as e:
        weights.resolve_params(None, progress=False)
    msg = str(e.value)
    assert str(folder) in msg and "writable" in msg  # which folder, and what is wrong with it
    assert weights.ENV_CACHE in msg and weights.ENV_WEIGHTS in msg  # another cache folder, or a file


def test_read_only_cache_folder_holding_the_file_is_used(tmp_path, server, small_h5, make_read_only):
    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copy(small_h5, folder / FNAME)
    make_read_only(folder)
    path = weights.fetch_weights(server.url(FNAME), "md5:" + md5(small_h5), cache=folder, progress=False)
    assert path == folder / FNAME and server.count(FNAME) == 0


# Run by two processes at once: each imports nst_jax, says it is ready, waits for "go", then fetches.
_FETCH_CHILD = """
import sys, time
from pathlib import Path
from nst_jax import weights
url, known, ready, go = sys.argv[1:5]
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.005)
print(weights.fetch_weights(url, known, progress=True))
"""


def test_two_processes_fetching_at_once_download_once(server, cache, small_h5, tmp_path):
    server.files[FNAME] = small_h5
    server.slow_seconds = 3.0  # the first download lasts long enough for the second process to find it running
    url, known = server.url(FNAME, mode="slow"), "md5:" + md5(small_h5)
    env = {k: v for k, v in os.environ.items() if k != weights.ENV_WEIGHTS} | {weights.ENV_CACHE: str(cache)}
    go, ready = tmp_path / "go", [tmp_path / "ready0", tmp_path / "ready1"]
    procs = [subprocess.Popen([sys.executable, "-c", _FETCH_CHILD, url, known, str(r), str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in ready]
    try:
        deadline = time.monotonic() + 120
        while not all(r.exists() for r in ready):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a child did not start"
            time.sleep(0.01)
        go.touch()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [out.strip() for out, _ in outs] == [str(cache / FNAME)] * 2
    assert sum("another process" in err for _, err in outs) == 1, outs  # the two fetches did overlap
    assert server.count(FNAME) == 1  # exactly one GET: the second process waited and used the file
    assert files_in(cache) == [FNAME]  # no lock file or temporary file left
    assert (cache / FNAME).read_bytes() == small_h5.read_bytes()


# ------------------------------------------------------------------------------------------------------------
# Resolution order


def test_env_random(cache, monkeypatch):
    monkeypatch.setenv(weights.ENV_WEIGHTS, "random")
    assert_params_equal(weights.resolve_params(None), weights.random_params(0))


def test_env_path(cache, monkeypatch, tmp_path, full_params):
    npz = weights.save_npz(full_params, tmp_path / "vgg.npz")
    monkeypatch.setenv(weights.ENV_WEIGHTS, str(npz))
    assert_params_equal(weights.resolve_params(None), full_params)


def test_env_missing_path(cache, monkeypatch, tmp_path):
    monkeypatch.setenv(weights.ENV_WEIGHTS, str(tmp_path / "nope.h5"))
    with pytest.raises(WeightsError, match=r"NST_JAX_WEIGHTS.*nope\.h5.*does not exist"):
        weights.resolve_params(None)


def test_none_without_env_cache_or_network_raises(cache, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}/{FNAME}"
    monkeypatch.setattr(weights, "KERAS_URL", url)
    with pytest.raises(WeightsError) as e:
        weights.load_vgg19(None, progress=False)
    msg = str(e.value)
    assert url in msg and "random" in msg  # explains; never falls back to random weights
    assert str(cache / FNAME) in msg and weights.ENV_WEIGHTS in msg and "--weights random" in msg
    assert not cache.exists()


def test_none_downloads_then_uses_cache(server, cache, monkeypatch, full_h5, full_params):
    server.files[FNAME] = full_h5
    monkeypatch.setattr(weights, "KERAS_URL", server.url(FNAME))
    monkeypatch.setattr(weights, "KERAS_MD5", md5(full_h5))
    assert_params_equal(weights.resolve_params(None, progress=False), full_params)
    assert files_in(cache) == [FNAME] and server.count(FNAME) == 1
    fx = weights.load_vgg19(None, progress=False)  # now from the cache
    assert server.count(FNAME) == 1
    np.testing.assert_array_equal(fx.params["params"]["conv5_4"]["bias"], full_params["params"]["conv5_4"]["bias"])


def test_none_rejects_cached_file_with_wrong_md5(cache, monkeypatch, small_h5):
    cache.mkdir()
    shutil.copy(small_h5, cache / FNAME)
    monkeypatch.setattr(weights, "KERAS_URL", f"http://127.0.0.1:{free_port()}/{FNAME}")
    with pytest.raises(WeightsError, match=rf"MD5 {md5(small_h5)}, expected {weights.KERAS_MD5}") as e:
        weights.resolve_params(None)
    msg = str(e.value)
    assert str(cache / FNAME) in msg and "corrupt" in msg and "delete it" in msg and weights.KERAS_URL in msg


def test_explicit_random_is_deterministic_per_seed(cache):
    a, c = weights.random_params(0), weights.random_params(1)
    assert_params_equal(weights.resolve_params("random"), a)  # same seed, same params
    assert not np.array_equal(a["params"]["conv1_1"]["kernel"], c["params"]["conv1_1"]["kernel"])
    vgg.check_params(a)


def test_cache_dir_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv(weights.ENV_CACHE, raising=False)
    assert "nst_jax" in weights.cache_dir().parts  # pooch.os_cache("nst_jax")
    monkeypatch.setenv(weights.ENV_CACHE, str(tmp_path))
    assert weights.cache_dir() == tmp_path


# ------------------------------------------------------------------------------------------------------------
# Readers


def test_load_keras_2016_layout_roundtrip(full_h5, full_params):
    loaded = weights.load_keras_h5(full_h5)
    assert_params_equal(loaded, full_params)
    assert all(v.dtype == np.float32 for layer in loaded["params"].values() for v in layer.values())


def test_load_float16_file_gives_float32(tmp_path, full_params):
    path = write_keras_2016_h5(tmp_path / "half.h5", full_params, dtype=np.float16)
    loaded = weights.load_params(path)
    assert loaded["params"]["conv3_3"]["kernel"].dtype == np.float32
    np.testing.assert_allclose(loaded["params"]["conv3_3"]["kernel"], full_params["params"]["conv3_3"]["kernel"],
                               rtol=1e-3, atol=1e-4)


def test_npz_roundtrip_and_dispatch(tmp_path, full_params):
    path = weights.save_npz(full_params, tmp_path / "vgg19")  # no suffix appended
    assert path == tmp_path / "vgg19" and files_in(tmp_path) == ["vgg19"]
    with np.load(path) as data:
        assert sorted(data.files) == sorted(f"{n}/{k}" for n in vgg.CONV_LAYERS for k in ("kernel", "bias"))
    assert_params_equal(weights.load_npz(path), full_params)
    assert_params_equal(weights.load_params(path), full_params)
    assert_params_equal(weights.load_vgg19(path).params, full_params)


def test_npz_gets_the_usual_permissions(tmp_path, full_params):
    old = os.umask(0o022)
    try:
        path = weights.save_npz(full_params, tmp_path / "vgg19.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and files_in(tmp_path) == ["vgg19.npz"]


def test_params_dict_is_accepted(full_params):
    assert_params_equal(weights.resolve_params(full_params), full_params)


# ------------------------------------------------------------------------------------------------------------
# Bad files


def test_missing_path(tmp_path):
    path = tmp_path / "missing.h5"
    with pytest.raises(WeightsError, match=r"not found.*missing\.h5"):
        weights.load_vgg19(path)
    with pytest.raises(WeightsError, match="not found"):
        weights.load_keras_h5(path)


def test_text_file_named_h5(tmp_path):
    path = tmp_path / "vgg19.h5"
    path.write_text("<html>404 Not Found</html>")
    with pytest.raises(WeightsError, match=r"vgg19\.h5.*neither an HDF5"):
        weights.load_vgg19(str(path))
    with pytest.raises(WeightsError, match=r"vgg19\.h5.*not an HDF5 file"):
        weights.load_keras_h5(path)


def test_torch_checkpoint_gets_converter_hint(tmp_path):
    path = tmp_path / "vgg19.pth"
    path.write_bytes(b"\x80\x02not a zip")
    with pytest.raises(WeightsError, match="convert_torch_weights"):
        weights.load_params(path)


def test_hdf5_that_is_not_keras(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(WeightsError, match="not Keras weights"):
        weights.load_keras_h5(path)


def test_h5_missing_a_layer(tmp_path, full_h5):
    path = Path(shutil.copy(full_h5, tmp_path / "no_conv3_2.h5"))
    with h5py.File(path, "a") as f:
        del f["block3_conv2"]
        f.attrs["layer_names"] = np.array([n for n in f.attrs["layer_names"] if n != b"block3_conv2"])
    with pytest.raises(WeightsError, match=r"no_conv3_2\.h5.*missing layer 'block3_conv2' \(conv3_2\)"):
        weights.load_keras_h5(path)


def test_h5_with_wrong_shape(tmp_path, full_h5):
    path = Path(shutil.copy(full_h5, tmp_path / "bad_shape.h5"))
    with h5py.File(path, "a") as f:
        del f["block4_conv1/block4_conv1_b_1:0"]
        f["block4_conv1/block4_conv1_b_1:0"] = np.zeros(256, np.float32)
    with pytest.raises(WeightsError, match=r"'block4_conv1' \(conv4_1\) bias .* shape \(256,\), expected \(512,\)"):
        weights.load_keras_h5(path)


def test_h5_with_oihw_kernel_gets_hint(tmp_path, full_h5):
    path = Path(shutil.copy(full_h5, tmp_path / "oihw.h5"))
    with h5py.File(path, "a") as f:
        k = np.asarray(f["block1_conv1/block1_conv1_W_1:0"])
        del f["block1_conv1/block1_conv1_W_1:0"]
        f["block1_conv1/block1_conv1_W_1:0"] = k.transpose(3, 2, 0, 1)
    with pytest.raises(WeightsError, match=r"shape \(64, 3, 3, 3\), expected \(3, 3, 3, 64\).*OIHW"):
        weights.load_keras_h5(path)


def test_keras3_file_without_layer_names_is_refused(tmp_path):
    path = tmp_path / "old.weights.h5"
    with h5py.File(path, "w") as f:
        f["layers/conv2d/vars/0"] = np.zeros((3, 3, 3, 64), np.float32)
        f["layers/conv2d/vars/1"] = np.zeros(64, np.float32)
    with pytest.raises(WeightsError, match="no layer 'name' attribute"):
        weights.load_keras_h5(path)


def test_npz_missing_layer_and_bad_keys(tmp_path, full_params):
    arrays = {f"{n}/{k}": v for n, layer in full_params["params"].items() for k, v in layer.items()}
    path = tmp_path / "partial.npz"
    np.savez(path, **{k: v for k, v in arrays.items() if not k.startswith("conv5_4")})
    with pytest.raises(WeightsError, match=r"partial\.npz.*missing layer conv5_4"):
        weights.load_npz(path)
    np.savez(path, extra=np.zeros(1), **arrays)
    with pytest.raises(WeightsError, match=r"unexpected arrays \['extra'\]"):
        weights.load_npz(path)


def test_bad_weights_argument():
    with pytest.raises(WeightsError, match="weights must be"):
        weights.resolve_params(3)


def test_empty_file(tmp_path):
    path = tmp_path / FNAME
    path.touch()
    for load in (weights.load_vgg19, weights.load_params, weights.load_keras_h5, weights.load_npz):
        with pytest.raises(WeightsError) as e:
            load(path)
        assert str(path) in str(e.value) and "empty (0 bytes)" in str(e.value), load


@pytest.mark.parametrize("keep", [10, 600, 0.5, -100])
def test_truncated_h5_is_called_truncated(tmp_path, small_h5, keep):
    data = small_h5.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    path = tmp_path / "cut.h5"
    path.write_bytes(data[:n])
    with pytest.raises(WeightsError) as e:
        weights.load_vgg19(path)
    msg = str(e.value)
    assert str(path) in msg and "truncated or corrupt" in msg and "download it again" in msg


def test_corrupt_h5_always_gives_a_weights_error(tmp_path, small_h5):
    """Damaged HDF5 metadata anywhere in the file: an explanation naming the file, never a bare h5py error."""
    data = small_h5.read_bytes()
    path = tmp_path / "damaged.h5"
    for offset in range(0, len(data), 64):
        path.write_bytes(data[:offset] + bytes(32) + data[offset + 32:])
        # Undamaged metadata gives the (small) file's shape error; damaged metadata, "truncated or corrupt".
        with pytest.raises(WeightsError, match="damaged.h5"):
            weights.load_params(path)


def test_web_page_saved_as_h5_is_recognized(tmp_path):
    path = tmp_path / FNAME
    path.write_text("<!DOCTYPE html>\n<html><head><title>Sign in to the network</title></head></html>\n")
    for load in (weights.load_vgg19, weights.load_keras_h5):
        with pytest.raises(WeightsError) as e:
            load(path)
        assert str(path) in str(e.value) and "web page" in str(e.value) and weights.KERAS_URL in str(e.value)


def write_legacy_h5(path: Path, layers: dict[str, list[tuple[str, tuple[int, ...]]]]) -> Path:
    """A Keras 2 weights file (``layer_names``/``weight_names``) with the given layers' weights (zeros)."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in layers])
        for name, ws in layers.items():
            g = f.create_group(name)
            g.attrs["weight_names"] = np.array([w.encode() for w, _ in ws])
            for w, shape in ws:
                g.create_dataset(w, data=np.zeros(shape, np.float32))
    return path


def test_vgg16_file_is_recognized(tmp_path):
    layers = {"input_1": []}
    for b, n in zip(range(1, 6), (2, 2, 3, 3, 3)):  # VGG-16: 13 convolutions
        for i in range(1, n + 1):
            layers[f"block{b}_conv{i}"] = [(f"block{b}_conv{i}/kernel:0", (3, 3, 1, 1)),
                                           (f"block{b}_conv{i}/bias:0", (1,))]
        layers[f"block{b}_pool"] = []
    path = write_legacy_h5(tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", layers)
    with pytest.raises(WeightsError) as e:
        weights.load_vgg19(path)
    msg = str(e.value)
    assert str(path) in msg and "VGG-16" in msg and FNAME in msg
    assert "block3_conv4" in msg and "block5_conv4" in msg  # what is missing


def test_other_network_file_is_recognized(tmp_path):
    layers = {"input_1": [], "conv1_pad": [], "conv1_conv": [("conv1_conv/kernel:0", (7, 7, 3, 4))],
              "conv1_bn": [("conv1_bn/gamma:0", (4,))], "conv2_block1_1_conv": [("conv2_block1_1_conv/kernel:0",
                                                                                 (1, 1, 4, 4))],
              "predictions": [("predictions/kernel:0", (4, 10)), ("predictions/bias:0", (10,))]}
    path = write_legacy_h5(tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels.h5", layers)
    with pytest.raises(WeightsError) as e:
        weights.load_vgg19(path)
    msg = str(e.value)
    assert str(path) in msg and "conv1_conv" in msg and "another network" in msg  # what the file holds
    assert "block1_conv1" in msg and FNAME in msg  # what was expected


def test_vgg19_file_with_classifier_top_loads(tmp_path, full_h5, full_params):
    path = Path(shutil.copy(full_h5, tmp_path / "with_top.h5"))
    with h5py.File(path, "a") as f:
        f.attrs["layer_names"] = np.array([*f.attrs["layer_names"], b"flatten", b"fc1", b"fc2", b"predictions"])
        f.create_group("flatten").attrs["weight_names"] = np.array([])
        for name in ("fc1", "fc2", "predictions"):
            g = f.create_group(name)
            g.attrs["weight_names"] = np.array([f"{name}_W_1:0".encode(), f"{name}_b_1:0".encode()])
            g[f"{name}_W_1:0"], g[f"{name}_b_1:0"] = np.zeros((4, 3), np.float32), np.zeros(3, np.float32)
    assert_params_equal(weights.load_keras_h5(path), full_params)


# ------------------------------------------------------------------------------------------------------------
# Which weights were used: notice for random weights, provenance in outputs and job summaries


def test_random_weights_notice_once_per_process():
    code = ("import os\nfrom nst_jax import weights\n"
            "weights.resolve_params('random')\nweights.resolve_params('random')\n"
            f"os.environ[{weights.ENV_WEIGHTS!r}] = 'random'\nweights.resolve_params(None)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if "random" in line.lower()]
    assert len(lines) == 1, r.stderr
    assert "not a stylization" in lines[0]


def test_describe_names_the_weights_used(cache, monkeypatch, tmp_path, small_h5, full_params):
    assert weights.describe("random") == {"source": "random", "seed": 0}
    assert weights.describe(full_params) == {"source": "params"}
    assert weights.describe(None) == {"source": "file", "path": str(cache / FNAME), "md5": weights.KERAS_MD5,
                                      "url": weights.KERAS_URL}
    monkeypatch.setenv(weights.ENV_WEIGHTS, "random")
    assert weights.describe(None) == {"source": "random", "seed": 0}

    path = Path(shutil.copy(small_h5, tmp_path / "mine.h5")).resolve()
    monkeypatch.setenv(weights.ENV_WEIGHTS, str(path))
    hashed = []
    real_hash = pooch.file_hash
    monkeypatch.setattr(pooch, "file_hash", lambda *a, **k: hashed.append(a) or real_hash(*a, **k))
    expected = {"source": "file", "path": str(path), "md5": md5(path)}
    assert weights.describe(None) == weights.describe(path) == weights.describe(str(path)) == expected
    assert len(hashed) == 1  # the digest is computed once per file, not once per image
    path.write_bytes(path.read_bytes() + b"\0")
    assert weights.describe(path)["md5"] == md5(path) and len(hashed) == 2  # a changed file is hashed again
    with pytest.raises(WeightsError, match="not found"):
        weights.describe(tmp_path / "missing.h5")


def tiny_image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((24, 32, 3), dtype=np.float32)


def test_png_metadata_records_the_weights_used(tmp_path, monkeypatch, full_h5):
    import nst_jax
    from nst_jax import images

    monkeypatch.delenv(weights.ENV_WEIGHTS, raising=False)
    kw = dict(image_size=32, num_iterations=1, content_layers=("relu1_1",), style_layers=("relu1_1",),
              progress=False)
    out = nst_jax.stylize(tiny_image(0), tiny_image(1), weights=str(full_h5), output=tmp_path / "file.png", **kw)
    assert images.read_metadata(out.output)["weights"] == {"source": "file", "path": str(full_h5.resolve()),
                                                           "md5": md5(full_h5)}
    out = nst_jax.stylize(tiny_image(0), tiny_image(1), weights="random", output=tmp_path / "random.png", **kw)
    assert images.read_metadata(out.output)["weights"] == {"source": "random", "seed": 0}


@pytest.fixture()
def finished_job(tmp_path) -> tuple[Path, Path, Path]:
    """An input folder whose one output already exists: a job over it only plans and writes its summary."""
    from nst_jax import images

    inputs, out = tmp_path / "in", tmp_path / "out"
    style = images.save_image(tiny_image(1), tmp_path / "style.png")
    images.save_image(tiny_image(0), inputs / "a.png")
    images.save_image(tiny_image(2), out / "a.png")
    return inputs, style, out


@pytest.mark.parametrize("runner", ["local", "ray"])
def test_job_summary_records_the_weights_used(finished_job, monkeypatch, runner):
    from nst_jax import batch

    monkeypatch.delenv(weights.ENV_WEIGHTS, raising=False)
    inputs, style, out = finished_job
    if runner == "ray":
        pytest.importorskip("ray")
        from nst_jax.ray_job import run_ray_job as run
    else:
        run = batch.run_job
    old = os.umask(0o027)
    try:
        summary = run(inputs, style, out, weights="random", image_size=32, progress=False)
    finally:
        os.umask(old)
    data = json.loads(summary.path.read_text())
    assert data["totals"]["skipped"] == 1 and data["runner"] == runner
    assert data["weights"] == {"source": "random", "seed": 0}
    # Written like the image outputs: 0666 minus the umask (not a private 0600 file).
    assert stat.S_IMODE(summary.path.stat().st_mode) == 0o640


# ------------------------------------------------------------------------------------------------------------
# scripts/convert_torch_weights.py (NumPy path; torch is only needed to read .pth files)


@pytest.fixture(scope="module")
def converter():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "convert_torch_weights.py"
    spec = importlib.util.spec_from_file_location("convert_torch_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torch_state_dict(seed: int) -> dict[str, np.ndarray]:
    """A synthetic VGG-19 state dict: OIHW kernels at torchvision's feature indices, plus a classifier entry."""
    rng = np.random.default_rng(seed)
    state = {"classifier.0.weight": np.zeros((2, 2), np.float32)}
    for idx, (cin, cout) in zip((0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34),
                                vgg.CONV_CHANNELS.values()):
        state[f"features.{idx}.weight"] = rng.normal(0, 0.1, (cout, cin, 3, 3)).astype(np.float32)
        state[f"features.{idx}.bias"] = rng.normal(0, 0.1, (cout,)).astype(np.float32)
    return state


def torch_conv1_1(state, x_nchw, padding: str):
    """conv1_1 as PyTorch computes it: NCHW input, OIHW kernel, zero or reflect padding of 1."""
    import jax

    if padding == "reflect":
        x_nchw = np.pad(x_nchw, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    out = jax.lax.conv_general_dilated(x_nchw, state["features.0.weight"], (1, 1),
                                       "VALID" if padding == "reflect" else ((1, 1), (1, 1)),
                                       dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                       precision=jax.lax.Precision.HIGHEST)
    return np.asarray(out) + state["features.0.bias"][None, :, None, None]


@pytest.mark.parametrize("padding", ["zero", "reflect"])
def test_convert_torchvision_first_layer(converter, padding):
    state = torch_state_dict(0)
    params = converter.state_dict_to_params(state, "torchvision")
    rgb01 = np.random.default_rng(1).random((1, 9, 11, 3))
    mean, std = np.array(converter.TORCHVISION_MEAN_RGB), np.array(converter.TORCHVISION_STD_RGB)
    normalized = ((rgb01 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)  # torchvision's input, NCHW RGB
    ref = torch_conv1_1(state, normalized, padding).transpose(0, 2, 3, 1)
    x = vgg.preprocess(np.asarray(rgb01, np.float32))  # ours: Caffe space, BGR
    got = np.asarray(vgg.forward({k: (v["kernel"], v["bias"]) for k, v in params["params"].items()}, x,
                                 ("conv1_1",), padding=padding, precision="highest")["conv1_1"])
    scale = np.abs(ref).max()
    if padding == "zero":
        # Exact inside; on the border, zero padding means "torchvision mean" there and "Caffe mean" here.
        np.testing.assert_allclose(got[:, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], rtol=0, atol=1e-5 * scale)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-2 * scale)
    else:
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * scale)


def test_convert_caffe_is_a_transpose(converter, tmp_path):
    state = torch_state_dict(2)
    params = converter.state_dict_to_params(state, "caffe")
    np.testing.assert_array_equal(params["params"]["conv1_1"]["kernel"][1, 2, 0, 5],
                                  state["features.0.weight"][5, 0, 1, 2])  # [h, w, in, out] = [out, in, h, w]
    np.testing.assert_array_equal(params["params"]["conv5_4"]["kernel"],
                                  state["features.34.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["params"]["conv3_1"]["bias"], state["features.10.bias"])
    path = weights.save_npz(params, tmp_path / "caffe.npz")
    assert_params_equal(weights.load_params(path), params)


def test_convert_rejects_incomplete_state_dict(converter):
    state = torch_state_dict(3)
    del state["features.21.weight"]
    with pytest.raises(ValueError, match=r"missing \['features.21.weight'\]"):
        converter.state_dict_to_params(state, "caffe")
    with pytest.raises(ValueError, match="source must be"):
        converter.state_dict_to_params(torch_state_dict(3), "keras")


def test_convert_without_torch_says_how_to_install(converter, tmp_path):
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torch is installed")
    src = tmp_path / "vgg19.pth"
    src.write_bytes(b"x")
    with pytest.raises(SystemExit, match="pip install torch"):
        converter.main([str(src), str(tmp_path / "out.npz"), "--source", "caffe"])


@pytest.mark.parametrize("source", ["torchvision"])  # "caffe" is a plain transpose, checked above without torch
def test_convert_end_to_end_against_torch(converter, tmp_path, source):
    """A torch VGG-19 (reflect padding, so the conversion is exact everywhere) vs ours on the converted file."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    layers, names = [], []
    for b, n, cout in vgg.BLOCKS:
        for i in range(1, n + 1):
            cin = vgg.CONV_CHANNELS[f"conv{b}_{i}"][0]
            layers += [nn.Conv2d(cin, cout, 3, padding=1, padding_mode="reflect"), nn.ReLU()]
            names += [f"conv{b}_{i}", f"relu{b}_{i}"]
        layers.append(nn.MaxPool2d(2, 2))
        names.append(f"pool{b}")
    model = nn.Module()
    model.features = nn.Sequential(*layers)  # state dict keys features.N.weight, as torchvision's vgg19
    src = tmp_path / "vgg19.pth"
    torch.save(model.state_dict(), src)
    out = tmp_path / "vgg19.npz"
    assert converter.main([str(src), str(out), "--source", source]) == 0

    rgb01 = np.random.default_rng(4).random((1, 37, 45, 3)).astype(np.float32)
    if source == "torchvision":
        mean, std = np.array(converter.TORCHVISION_MEAN_RGB), np.array(converter.TORCHVISION_STD_RGB)
        x = ((rgb01 - mean) / std).astype(np.float32)
    else:
        x = np.asarray(vgg.preprocess(rgb01))  # Caffe-space BGR
    refs, h = {}, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        for name, layer in zip(names, model.features):
            h = layer(h)
            refs[name] = h.numpy().transpose(0, 2, 3, 1)
    fx = weights.load_vgg19(out, padding="reflect", precision="highest")
    wanted = [n for n in names if not n.startswith("conv")]
    feats = fx.features(rgb01, wanted)
    for name in wanted:
        ref = refs[name]
        err = np.abs(np.asarray(feats[name]) - ref).max() / np.abs(ref).max()
        assert err < 1e-4, (name, err)
