"""An offline index.html for a folder of rendered samples: scores, audio players, downloads.

Self-contained on purpose: no scripts, stylesheets, fonts or CDNs from elsewhere, so the folder
can be zipped, mailed or opened from a laptop without a network. Every text is escaped.
"""

from __future__ import annotations

import html
import json
import os
import urllib.parse

from jaxcomposer.core import atomic

# Keys of a `render.render_sample` dict that name files (or say how they were made), shown
# as images/players/links rather than in the facts table.
_FILE_KEYS = ("midi", "musicxml", "svg", "png", "wav", "roll")
_NOT_FACTS = {*_FILE_KEYS, "stem", "name", "title", "seconds", "errors"}
_DOWNLOADS = (
    ("midi", "MIDI"),
    ("musicxml", "MusicXML"),
    ("png", "score PNG"),
    ("roll", "piano roll PNG"),
)

_CSS = """
body { font-family: sans-serif; margin: 2em auto; max-width: 70em; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; font-weight: normal; color: #555; }
section { border-top: 2px solid #ddd; margin-top: 2em; padding-top: 0.5em; }
img.score { display: block; width: 100%; max-width: 60em; border: 1px solid #ddd; margin: 0.5em 0;
  background: white; }
img.roll { display: block; width: 100%; margin: 0.5em 0; }
audio { width: 100%; max-width: 40em; }
.error { color: #a00; }
.links a { margin-right: 1.2em; }
code { font-size: 0.85em; }
.wide { overflow-x: auto; }
td { overflow-wrap: anywhere; }
"""


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value, default=str)


def _e(value: object) -> str:
    return html.escape(_text(value), quote=True)


def _href(relative: str) -> str:
    """A relative file path as an escaped URL (spaces, '#', '?' and friends are percent-coded)."""
    return html.escape(urllib.parse.quote(relative.replace(os.sep, "/")), quote=True)


def _table(rows: dict) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows.items())
    return f'<div class="wide"><table>{body}</table></div>'  # scrolls sideways on a phone


def _existing(out_dir: str, relative: object) -> str | None:
    if isinstance(relative, str) and relative and os.path.isfile(os.path.join(out_dir, relative)):
        return relative
    return None


def _sample_html(out_dir: str, sample: dict) -> tuple[str, str]:
    """(anchor id, <section>) for one sample."""
    name = str(sample.get("name") or sample.get("stem") or "sample")
    anchor = "s-" + urllib.parse.quote(name, safe="")
    # One name per sample: its title when it has one (the file stem is in every file's name).
    heading = sample.get("title") or name
    parts = [f'<section id="{html.escape(anchor, quote=True)}"><h2>{_e(heading)}</h2>']
    facts = {k: v for k, v in sample.items() if k not in _NOT_FACTS and v is not None}
    errors = dict(sample.get("errors") or {})
    for key in _FILE_KEYS:
        wanted = sample.get(key)
        for relative in wanted if isinstance(wanted, list) else [wanted]:
            if relative and not _existing(out_dir, relative):
                errors.setdefault(key, f"file {relative} is missing")
    for stage, message in errors.items():
        parts.append(f'<p class="error">{_e(stage)} failed: {_e(message)}</p>')
    wav = _existing(out_dir, sample.get("wav"))
    if wav:
        synth = sample.get("synthesizer") or "unknown"
        parts.append(
            f'<p><audio controls preload="metadata" src="{_href(wav)}"></audio><br>'
            f'<small>audio: {_e(synth)} synthesiser, <a href="{_href(wav)}">WAV</a></small></p>'
        )
    links = [
        f'<a href="{_href(path)}">{_e(label)}</a>'
        for key, label in _DOWNLOADS
        if (path := _existing(out_dir, sample.get(key)))
    ]
    if links:
        parts.append(f'<p class="links">{"".join(links)}</p>')
    pages = [p for p in sample.get("svg") or [] if _existing(out_dir, p)]
    for number, page in enumerate(pages, start=1):
        alt = _e(f"{name}: score page {number} of {len(pages)}")
        parts.append(f'<img class="score" loading="lazy" src="{_href(page)}" alt="{alt}">')
    roll = _existing(out_dir, sample.get("roll"))
    if roll:
        alt = _e(f"{name}: piano roll")
        parts.append(f'<img class="roll" loading="lazy" src="{_href(roll)}" alt="{alt}">')
    parts.append(_table(facts))  # the music first (audio, score, roll), then the facts
    if sample.get("seconds"):
        timings = ", ".join(f"{_e(k)} {float(v):.2f} s" for k, v in sample["seconds"].items())
        parts.append(f"<p><small>render times: {timings}</small></p>")
    parts.append("</section>")
    return anchor, "\n".join(parts)


def _relative_paths(out_dir: str, settings: dict) -> dict:
    """`settings` with absolute paths (workdir, primer file) shown relative to the gallery's
    folder, so a shared gallery names no folder of the machine that wrote it."""
    return {
        k: os.path.relpath(v, out_dir) if isinstance(v, str) and os.path.isabs(v) else v
        for k, v in settings.items()
    }


GENERATOR_MARK = '<meta name="generator" content="jaxcomposer">'  # marks our index.html


def write_gallery(
    out_dir: str, samples: list[dict], *, title: str, settings: dict, home: str | None = None
) -> str:
    """Writes out_dir/index.html (atomically) for `render.render_sample` dicts (plus any extra
    scalar fields, shown as facts); returns its path. File paths are relative to out_dir;
    absolute paths of `settings` are shown relative to `home` (default out_dir: the folder
    the page will live in, when it is written into a staging folder first)."""
    sections = [_sample_html(out_dir, sample) for sample in samples]
    contents = "".join(
        f'<li><a href="#{html.escape(anchor, quote=True)}">'
        f"{_e(s.get('title') or s.get('name') or s.get('stem'))}</a>"
        f" ({_e(s.get('key') or '?')})</li>"
        for (anchor, _), s in zip(sections, samples, strict=True)
    )
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
{GENERATOR_MARK}
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{_e(title)}</h1>
<p>{len(samples)} sample(s). Each has its engraved score, audio, MIDI and MusicXML files.</p>
<ul>{contents}</ul>
{"".join(body for _, body in sections)}
<section><h3>Settings</h3>
{_table(_relative_paths(home or out_dir, settings))}</section>
</body>
</html>
"""
    path = os.path.join(out_dir, "index.html")
    atomic.write_text(path, page)
    return path
