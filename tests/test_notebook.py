"""examples/quickstart.ipynb runs top to bottom and shows pictures (not arrays) for a result, a batch and a grid."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def _html_pictures(output) -> int:
    html = output.get("data", {}).get("text/html", "")
    return html.count('src="data:image/png;base64,')


def test_quickstart_runs_and_displays_pictures(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # smaller and shorter than the notebook's own settings, to keep the test quick
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = cell.source.replace("image_size=96, num_iterations=30", "image_size=48, num_iterations=4")
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    by_source = {cell.source.strip().splitlines()[-1]: cell for cell in nb.cells if cell.cell_type == "code"}
    for name, pictures in (("result", 1), ("sweep", 3), ("grid", 2)):
        outputs = [o for o in by_source[name].outputs if o.output_type == "execute_result"]
        assert outputs, f"cell ending with {name!r} displayed nothing"
        assert _html_pictures(outputs[0]) == pictures, name
        assert "array(" not in outputs[0]["data"]["text/plain"]
        assert len(outputs[0]["data"]["text/plain"].splitlines()) <= 1 + pictures
    plot = [o for o in by_source["result.plot();"].outputs if o.output_type == "display_data"]
    assert plot and "image/png" in plot[0]["data"]
    Image.open(io.BytesIO(base64.b64decode(plot[0]["data"]["image/png"]))).verify()
    preview = by_source["preview = nst_jax.stylize(CONTENT, STYLE, preview_every=5, progress=False, **SMALL)"]
    shown = [o for o in preview.outputs if o.output_type in ("display_data", "update_display_data")]
    assert shown and _html_pictures(shown[-1]) == 1
    texture_cell = ('nst_jax.stylize(None, STYLE, content_weight=0, aspect=1.5, '
                    '**{**SMALL, "init": "random", "optimizer": "adam"})')
    texture = [o for o in by_source[texture_cell].outputs if o.output_type == "execute_result"]
    assert texture and _html_pictures(texture[0]) == 1
