"""What a study returns and how the report folder is written.

A study (:func:`nst_jax.study.study`) returns a :class:`Section`: its text (markdown, written from the numbers it
measured), tables, figures (PNG files already in the output directory) and numbers. :func:`write` turns the
sections of one run into

* ``index.md``: the sections in order, tables as markdown, figures as image links;
* ``index.html``: the same, self-contained (every PNG inlined as a base64 data URI, the style inline: no
  external file, so it can be mailed or archived alone);
* ``study.json``: every number, table and figure of every section, with the command, the date, the machine
  (CPU model and flags, the JAX backend and device) and the weights.

Each file is written atomically (temporary file, fsync, rename), as every nst_jax output.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import os
import platform
import re
from pathlib import Path
from typing import Any

from nst_jax import images, provenance

#: The files :func:`write` writes into the output directory, by role.
FILES = {"markdown": "index.md", "html": "index.html", "json": "study.json"}


@dataclasses.dataclass
class Table:
    """A table of a section: column headers and rows of cells (numbers are shown with 4 significant digits)."""

    headers: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclasses.dataclass
class Figure:
    """A picture of a section: ``path`` relative to the output directory (a PNG written there), and its caption."""

    path: str
    caption: str = ""


@dataclasses.dataclass
class Section:
    """What one study found.

    Attributes:
        title: the section's heading.
        text: markdown: what was run and what it shows, written from the measured numbers.
        tables: its tables.
        figures: its pictures (grids, loss curves).
        numbers: every number it measured, by name (JSON-serializable; ``study.json`` holds them).
        seconds: its wall time (set by :func:`nst_jax.study.run_studies`).
        name: the study's registered name (set by :func:`nst_jax.study.run_studies`).
        seeds: the practitioners' reports it follows (set by :func:`nst_jax.study.run_studies`).
    """

    title: str
    text: str
    tables: list[Table] = dataclasses.field(default_factory=list)
    figures: list[Figure] = dataclasses.field(default_factory=list)
    numbers: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    name: str = ""
    seeds: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """The section as JSON data."""
        return {"name": self.name, "title": self.title, "seeds": list(self.seeds), "seconds": self.seconds,
                "text": self.text, "numbers": self.numbers,
                "tables": [dataclasses.asdict(t) for t in self.tables],
                "figures": [dataclasses.asdict(f) for f in self.figures]}


@dataclasses.dataclass
class Report:
    """The outcome of :func:`nst_jax.study.run_studies`.

    Attributes:
        sections: one per study, in the order run.
        output_dir: the report folder.
        meta: the command, date, machine, software, weights, size and inputs of the run.
        seconds: total wall time.
        files: what was written, by role (:data:`FILES`).
    """

    sections: list[Section]
    output_dir: Path
    meta: dict
    seconds: float = 0.0
    files: dict[str, Path] = dataclasses.field(default_factory=dict)

    def section(self, name: str) -> Section:
        """The section of the study ``name``."""
        for s in self.sections:
            if s.name == name:
                return s
        raise KeyError(f"no study {name!r} in this report; it has {', '.join(s.name for s in self.sections)}.")

    def to_dict(self) -> dict:
        """Everything in the report as JSON data (``study.json``)."""
        return {"software": images.software_name(), **self.meta, "seconds": self.seconds,
                "studies": [s.to_dict() for s in self.sections]}


def machine() -> dict:
    """This machine: CPU model and flags (the SIMD ones that decide XLA:CPU's speed), cores, OS, and the JAX
    backend and device (:func:`nst_jax.provenance.environment`)."""
    cpu = {"model": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            info = f.read()
    except OSError:
        info = ""
    if m := re.search(r"^model name\s*:\s*(.+)$", info, re.M):
        cpu["model"] = m.group(1).strip()
    if m := re.search(r"^flags\s*:\s*(.+)$", info, re.M):
        simd = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")
        cpu["flags"] = [f for f in simd if f in m.group(1).split()]
    return {"cpu": cpu, "os": platform.platform(), **provenance.environment()}


def _cell(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _markdown_table(t: Table) -> str:
    lines = ["| " + " | ".join(t.headers) + " |", "|" + "---|" * len(t.headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in t.rows]
    return ("\n".join(lines) + "\n") + (f"\n{t.caption}\n" if t.caption else "")


def _header(report: Report) -> list[str]:
    m = report.meta
    cpu = m["machine"]["cpu"]
    weights = m.get("weights") or {}
    return [f"# nst-jax studies ({', '.join(s.name for s in report.sections)})", "",
            f"- command: `{m['command']}`",
            f"- date: {m['date']}; total {report.seconds:.0f} s",
            f"- machine: {cpu.get('model')}, {cpu.get('cores')} cores, flags {' '.join(cpu.get('flags', [])) or '-'}; "
            f"JAX {m['machine']['jax']} on {m['machine']['backend']} ({m['machine']['device']})",
            "- weights: " + (", ".join(f"{k} {v}" for k, v in weights.items()) if isinstance(weights, dict)
                             else str(weights)),
            f"- image size {m['size']} px (long side); content `{m['content']}`, style `{m['style']}`", ""]


def markdown(report: Report) -> str:
    """``index.md``: the header (command, date, machine, weights), then each section."""
    lines = _header(report)
    for s in report.sections:
        seeds = f" (seed report{'s' if len(s.seeds) > 1 else ''} {', '.join(s.seeds)})" if s.seeds else ""
        lines += [f"## {s.title}", "", f"`{s.name}`{seeds}, {s.seconds:.0f} s.", "", s.text.strip(), ""]
        for t in s.tables:
            lines += [_markdown_table(t)]
        for f in s.figures:
            lines += [f"![{f.caption}]({f.path})", "", f"*{f.caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"


def _inline(text: str) -> str:
    """Escaped text with markdown's inline code, bold and italics as HTML."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)
    return re.sub(r"(?<![*\w])\*([^*]+)\*(?![*\w])", r"<i>\1</i>", out)


def _paragraphs(text: str) -> str:
    """Markdown paragraphs and ``-`` lists as HTML (what the studies' texts use)."""
    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.splitlines()
        if lines and all(line.lstrip().startswith("- ") for line in lines):
            out.append("<ul>" + "".join(f"<li>{_inline(line.lstrip()[2:])}</li>" for line in lines) + "</ul>")
        elif block.strip():
            out.append(f"<p>{_inline(' '.join(line.strip() for line in lines))}</p>")
    return "\n".join(out)


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{_inline(h)}</th>" for h in t.headers)
    rows = "".join("<tr>" + "".join(f"<td>{_inline(_cell(c))}</td>" for c in row) + "</tr>" for row in t.rows)
    caption = f"<caption>{_inline(t.caption)}</caption>" if t.caption else ""
    return f"<table>{caption}<tr>{head}</tr>{rows}</table>"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}"
        "th{background:#eee}caption{caption-side:bottom;font-size:smaller;text-align:left}"
        "figure{margin:1em 0}img{max-width:100%}figcaption{font-size:smaller;color:#333}"
        "code{background:#f3f3f3;padding:0 3px}")


def to_html(report: Report) -> str:
    """``index.html``: the content of ``index.md``, self-contained (pictures as data URIs, inline style)."""
    head = _header(report)
    body = [f"<h1>{_inline(head[0][2:])}</h1>", _paragraphs("\n".join(head[2:]))]
    for s in report.sections:
        seeds = f" (seed report{'s' if len(s.seeds) > 1 else ''} {', '.join(s.seeds)})" if s.seeds else ""
        body += [f"<h2 id='{html.escape(s.name)}'>{_inline(s.title)}</h2>",
                 f"<p><code>{html.escape(s.name)}</code>{html.escape(seeds)}, {s.seconds:.0f} s.</p>",
                 _paragraphs(s.text)]
        body += [_html_table(t) for t in s.tables]
        for f in s.figures:
            body.append(f"<figure><img src='{_data_uri(report.output_dir / f.path)}' alt='{html.escape(f.caption)}'/>"
                        f"<figcaption>{_inline(f.caption)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'/><title>nst-jax studies</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def check_outputs(output_dir: Path, inputs, overwrite: bool) -> dict[str, Path]:
    """The paths of :data:`FILES` in ``output_dir``, checked before any study runs (under the rules of every
    nst_jax output: never an input, an existing file only if nst_jax wrote it or with ``overwrite``)."""
    paths = {role: output_dir / name for role, name in FILES.items()}
    images.check_output_path(paths["markdown"].with_suffix(".png"))  # the directory: creatable, writable
    for path in paths.values():
        images.check_overwrite(path, inputs, overwrite=overwrite)
    return paths


def write(report: Report, paths: dict[str, Path]) -> dict[str, Path]:
    """Writes ``index.md``, ``index.html`` and ``study.json`` atomically; returns them by role."""
    from nst_jax import jobfiles

    report.files["markdown"] = images.save_text(markdown(report), paths["markdown"])
    report.files["html"] = images.save_text(to_html(report), paths["html"])
    jobfiles.write_json_atomic(paths["json"], report.to_dict())
    report.files["json"] = paths["json"]
    return report.files
