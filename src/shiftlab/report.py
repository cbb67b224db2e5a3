"""The HTML report: one self-contained file a person opens first (``shiftlab report DIR``).

It only reads saved results; it never runs a model, and it writes nothing but the HTML file
(figures are drawn in memory and embedded), so a read-only results folder works. Everything
is embedded (images as base64 data URIs, inline CSS and JS, no network), so the file opens
from disk anywhere.

The results folder it reads (every part optional; a section per thing found, and a
polite note for what is missing)::

    DIR/audit-NAME.json          AuditResult.to_json: one per audit (NAME labels it; a model is
                                 its provenance.model, and the demo writes one per protocol,
                                 e.g. audit-lenet-wolf-circular.json)
    DIR/models/NAME/train.json   training record of model NAME (its test accuracy)
    DIR/animation-NAME.gif       shiftlab.viz.animate output (Wolf's sliding digit)
    DIR/explorer-NAME.json       shiftlab.viz.explorer.save_explorer output (the slider)
    DIR/experiment-NAME.json     ExperimentResult.save: title, summary, table, claims,
                                 figures (PNG paths relative to DIR)

Every file must lie inside DIR once symlinks are resolved (one check, :func:`inside`): one
that points elsewhere is left out with a note, and so is an image too large to embed
(:data:`MAX_EMBED_BYTES`) or not of the type its name says. A file the report needs but
cannot read (a folder, wrongly typed JSON, JSON nested too deeply) is a one-line
:class:`ShiftlabError` before anything is written.

The figures (:mod:`shiftlab.viz.plots`): the headline numbers as bars; per model, a
layer × shift heatmap of the equivariance error with one panel per protocol; accuracy and
true-class probability against the shift, accuracy over the 2-D grid and the
translation-sensitivity maps, a row per protocol (audits share an axis only when they used
the same protocol).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ShiftlabError
from .experiments.base import ExperimentResult
from .fmt import MISSING, cell, pct, points
from .io import write_text_atomic
from .protocols import capabilities, names_with
from .result import AuditResult
from .typed_json import read_json

__all__ = ["build_report", "find_results", "ResultsFolder", "inside", "MAX_EMBED_BYTES"]

MAX_EMBED_BYTES = 20_000_000          # the largest image or explorer file the page embeds
IMAGE_TYPES = {".png": ("image/png", b"\x89PNG\r\n\x1a\n"), ".gif": ("image/gif", b"GIF8"),
               ".jpg": ("image/jpeg", b"\xff\xd8\xff"), ".jpeg": ("image/jpeg", b"\xff\xd8\xff")}
SMALL_TABLE = (5, 5)                  # experiment tables up to this many rows, columns show open


@dataclass
class ResultsFolder:
    """What :func:`find_results` found in a results folder."""

    root: Path
    audits: dict[str, AuditResult] = field(default_factory=dict)
    test_accuracy: dict[str, float] = field(default_factory=dict)
    test_images: dict[str, int] = field(default_factory=dict)
    animations: dict[str, Path] = field(default_factory=dict)
    explorers: dict[str, dict] = field(default_factory=dict)
    experiments: list[ExperimentResult] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)      # files not shown, and why

    @property
    def empty(self) -> bool:
        return not (self.audits or self.test_accuracy or self.animations or self.explorers
                    or self.experiments)


def inside(root: Path, name: str | Path) -> Path | None:
    """``root/name`` resolved, if it stays inside ``root`` once ``..`` and symlinks are
    followed; else None. Every file the report reads or embeds passes this one check."""
    base = Path(root).resolve()
    path = (base / name).resolve()
    return path if path.is_relative_to(base) else None


def _name(path: Path, prefix: str) -> str:
    return path.stem[len(prefix):] or path.stem


def _files(found: ResultsFolder, pattern: str, what: str) -> list[Path]:
    """The files matching ``pattern`` that stay inside the folder (the rest are noted)."""
    kept = []
    for path in sorted(found.root.glob(pattern)):
        shown = path.relative_to(found.root)
        if inside(found.root, shown) is None:
            found.left_out.append(f"{shown} is not shown: it points outside the results folder")
        elif path.is_dir():
            raise ShiftlabError(f"{path} is a folder, not {what}; remove or rename it")
        else:
            kept.append(path)
    return kept


def _read_train_record(path: Path) -> tuple[float | None, int | None]:
    """``(test_accuracy, test_images)`` of a training record; None where it has none."""
    record = read_json(path, "training record")
    if not isinstance(record, dict):
        raise ShiftlabError(f"{path} is not a training record (expected a JSON object); re-run the training")
    accuracy, images = record.get("test_accuracy"), record.get("test_images")
    if accuracy is not None and (isinstance(accuracy, bool) or not isinstance(accuracy, (int, float))
                                 or not 0 <= accuracy <= 1):
        raise ShiftlabError(f"{path}: test_accuracy must be a number in [0, 1] or null, got "
                            f"{json.dumps(accuracy)[:40]}; re-run the training")
    if images is not None and (isinstance(images, bool) or not isinstance(images, int) or images < 0):
        raise ShiftlabError(f"{path}: test_images must be a non-negative integer, got "
                            f"{json.dumps(images)[:40]}; re-run the training")
    return (None if accuracy is None else float(accuracy)), images


def find_results(root: str | Path) -> ResultsFolder:
    """Read everything the report uses from ``root`` (layout: see the module doc)."""
    from .viz.explorer import load_explorer

    root = Path(root)
    if not root.is_dir():
        raise ShiftlabError(f"results folder {str(root)!r} does not exist; run `make demo` or "
                            "`shiftlab audit ... --out DIR/audit-NAME.json` first")
    found = ResultsFolder(root)
    for path in _files(found, "audit-*.json", "an audit result"):
        found.audits[_name(path, "audit-")] = AuditResult.from_json(path)
    for path in _files(found, "models/*/train.json", "a training record"):
        accuracy, images = _read_train_record(path)
        if accuracy is not None:
            found.test_accuracy[path.parent.name] = accuracy
            if images:
                found.test_images[path.parent.name] = images
    for path in _files(found, "animation-*.gif", "an animation"):
        if _embeddable(found, path):
            found.animations[_name(path, "animation-")] = path
    for path in _files(found, "explorer-*.json", "an explorer file"):
        if _embeddable(found, path, image=False):     # embedded whole: capped like an image
            read_json(path, "explorer file")          # not JSON, or nested too deeply: one line
            found.explorers[_name(path, "explorer-")] = load_explorer(path)
    for path in _files(found, "experiment-*.json", "an experiment result"):
        read_json(path, "experiment result")
        found.experiments.append(ExperimentResult.load(path))
    return found


def _embeddable(found: ResultsFolder, path: Path, *, image: bool = True) -> bool:
    """Whether ``path`` (inside the folder) may be embedded: a regular file of at most
    :data:`MAX_EMBED_BYTES` whose first bytes match its image type; notes why not."""
    shown = path.relative_to(found.root) if path.is_relative_to(found.root) else path
    reason = _embed_problem(path, image)
    if reason:
        found.left_out.append(f"{shown} is not shown: {reason}")
    return reason is None


def _embed_problem(path: Path, image: bool) -> str | None:
    if not path.is_file():
        return "it is missing" if not path.exists() else "it is not a regular file"
    size = path.stat().st_size
    if size > MAX_EMBED_BYTES:
        return f"it is {size / 1e6:.0f} MB, more than the report embeds ({MAX_EMBED_BYTES / 1e6:.0f} MB)"
    if image:
        kind = IMAGE_TYPES.get(path.suffix.lower())
        if kind is None:
            return f"{path.suffix or 'no suffix'} is not an image type the report embeds (PNG, GIF, JPEG)"
        with open(path, "rb") as handle:
            if not handle.read(len(kind[1])).startswith(kind[1]):
                return f"it is not a {path.suffix[1:].upper()} file"
    return None


# ----------------------------------------------------------------------------- helpers
def _file_uri(path: Path) -> str:
    """An image file embedded as a data URI (type from its suffix; checked by _embed_problem)."""
    from .viz.explorer import data_uri
    return data_uri(path.read_bytes(), IMAGE_TYPES[path.suffix.lower()][0])


def _sci(value) -> str:
    return MISSING if value is None else f"{value:.1e}"


def _figure(draw, results, caption: str) -> dict:
    """Draw one figure in memory; a figure the data cannot support becomes a note instead."""
    from .viz.explorer import data_uri
    from .viz.figure import figure_png
    try:
        png = figure_png(draw(results))
    except ShiftlabError as err:
        return {"src": None, "note": f"{caption}: not drawn ({err})", "caption": caption, "alt": caption}
    return {"src": data_uri(png, "image/png"), "note": None, "caption": caption, "alt": caption}


def _common(values) -> str | None:
    values = set(values)
    return values.pop() if len(values) == 1 else None


# ----------------------------------------------------------------------------- sections
def _gap(inv) -> str:
    """The worst-case gap in points: ``integer / half-pixel`` when both were measured."""
    if inv.gap_half_pixel is None:
        return points(inv.gap_integer)
    return f"{100 * inv.gap_integer:.1f} / {points(inv.gap_half_pixel)}"


HEADLINE = (("clean", lambda i: pct(i.clean_accuracy)), ("worst-case", lambda i: pct(i.worst_case_accuracy)),
            ("gap", _gap), ("consistency", lambda i: pct(i.consistency)),
            ("½-px consistency", lambda i: pct(i.half_pixel_consistency)),
            ("flip rate", lambda i: pct(i.flip_rate)),
            ("MAC", lambda i: MISSING if i.mean_abs_change is None else f"{i.mean_abs_change:.3f}"))
HALF_PIXEL_ONLY = ("½-px consistency",)     # columns of protocol groups with half-pixel shifts


def _has_half_pixel(protocol: str) -> bool:
    """Whether audits under ``protocol`` can pass half-pixel shifts (``--half-pixel``)."""
    declared = capabilities(protocol)
    return declared is not None and declared.has_half_pixel


def _overview(found: ResultsFolder) -> dict:
    """One headline row per model: test accuracy, then per protocol that ran the clean and
    worst-case accuracy, the worst-case gap over integer and half-pixel shifts (in points),
    consistency and half-pixel consistency, flip rate and MAC."""
    from .viz.plots import by_model, draw_model_bars

    table = by_model(found.audits) if found.audits else {}
    protocols = sorted({p for row in table.values() for p in row})
    groups = []
    for protocol in protocols:
        results = [row[protocol] for row in table.values() if protocol in row]
        spec = _common(r.provenance.shifts for r in results)
        images = _common(r.provenance.n_images for r in results)
        detail = ", ".join(filter(None, [spec and f"shifts {spec}", images and f"{images} images"]))
        half = any(r.invariance.gap_half_pixel is not None or r.invariance.half_pixel_consistency
                   is not None for r in results)
        metrics = [(name, show) for name, show in HEADLINE if half or name not in HALF_PIXEL_ONLY]
        groups.append({"protocol": protocol, "detail": detail, "metrics": metrics,
                       "labels": [("gap, points", "integer / ½ px" if half else "integer shifts")
                                  if name == "gap" else (name, None) for name, _ in metrics]})
    rows = []                          # one table per protocol: each fits a laptop's width
    for model in list(table) + [m for m in found.test_accuracy if m not in table]:  # trained, not audited
        per_group = []
        for protocol, group in zip(protocols, groups):
            inv = table[model][protocol].invariance if protocol in table.get(model, {}) else None
            per_group.append([MISSING if inv is None else show(inv) for _, show in group["metrics"]])
        rows.append({"model": model, "test": pct(found.test_accuracy.get(model)), "groups": per_group})
    notes = []
    if not found.audits:
        notes.append("No audit results were found (audit-NAME.json), so there are no stability "
                     "numbers yet; run `shiftlab audit --model NAME --out DIR/audit-NAME.json`.")
    elif any(r.invariance.clean_accuracy is None for r in found.audits.values()):
        notes.append("Accuracies are blank (–) for audits of unlabelled data, such as audit's "
                     "default synthetic:256; audit labelled data (e.g. --data mnist) to get them.")
    if any(r.invariance.gap_integer is not None and r.invariance.gap_half_pixel is None
           and _has_half_pixel(r.provenance.protocol) for r in found.audits.values()):
        notes.append(f"Some {' or '.join(names_with('has_half_pixel'))} audits ran without "
                     "half-pixel shifts: their gap is over integer shifts only; add --half-pixel "
                     "to the audit to get the half-pixel gap and consistency.")
    if found.audits and not found.test_accuracy:
        notes.append("No training records were found (models/NAME/train.json), so the test "
                     "accuracy column is empty.")
    images = _common(found.test_images.values())
    figure = _figure(draw_model_bars, found.audits, "Headline numbers per model and protocol") \
        if found.audits else None
    return {"groups": groups, "rows": rows, "notes": notes,
            "test_detail": f"{images:,} test images" if images else "", "figure": figure}


def _layer_notes(protocol: str, result: AuditResult) -> list[dict]:
    """Sentences on how the layers were compared under ``protocol``: each layer's note (layers
    with the same note share a sentence), not-comparable layers and shifts with nothing to
    compare."""
    by_note: dict[str, list[str]] = {}
    for layer in result.layers:
        text = layer.note
        if text is None and layer.comparison == "not comparable":
            text = "not comparable: no shift left a position to compare"
        elif text is None and any(e is None for e in layer.error):
            missing = sum(e is None for e in layer.error)
            text = f"{missing} of {len(layer.error)} shifts left nothing to compare (hatched cells)"
        if text:
            by_note.setdefault(text, []).append(layer.name)
    return [{"protocol": protocol, "layers": ", ".join(names), "text": text} for text, names in by_note.items()]


def _layers(found: ResultsFolder) -> list[dict]:
    """Per model: the layer × shift heatmap (a panel per protocol), the notes in words and
    the per-layer numbers."""
    from .viz.plots import by_model, draw_layer_errors

    blocks = []
    for model, protocols in (by_model(found.audits) if found.audits else {}).items():
        notes, tables = [], []
        for protocol, result in protocols.items():
            notes += _layer_notes(protocol, result)
            tol = result.provenance.tolerance
            tables.append({"protocol": protocol, "tolerance": f"{tol:g}", "rows": [
                [l.name, l.kind, str(l.stride) if l.comparison == "equivariance" else MISSING, "×".join(map(str, l.shape)),
                 _sci(l.error_exact), _sci(l.error_other), l.verdict(tol)] for l in result.layers]})
        blocks.append({"name": model, "protocols": list(protocols), "notes": notes, "tables": tables,
                       "figure": {**_figure(draw_layer_errors, protocols,
                                            f"{model}: relative error of every probed layer at every shift"),
                                  "caption": ""}})
    return blocks


def _stability(found: ResultsFolder) -> list[dict]:
    from .viz.plots import draw_accuracy_heatmap, draw_sensitivity, draw_stability

    if not found.audits:
        return []
    return [_figure(draw_stability, found.audits, "True-class probability and accuracy against the shift"),
            _figure(draw_accuracy_heatmap, found.audits, "Accuracy over the 2-D shift grid"),
            _figure(draw_sensitivity, found.audits, "Translation-sensitivity maps and radial averages "
                                                    "(Kauderer-Abrams 2017)")]


def _experiments(found: ResultsFolder) -> list[dict]:
    out = []
    for exp in found.experiments:
        images, missing = [], []
        for name in exp.figures:
            path = inside(found.root, name)
            problem = "it points outside the results folder" if path is None else _embed_problem(path, True)
            if problem:
                missing.append(f"Figure {name} is not shown: {problem}.")
            else:
                images.append({"src": _file_uri(path), "caption": "", "alt": f"{exp.title}: {name}"})
        rows = [[cell(v) for v in r] for r in exp.rows]
        small = len(rows) <= SMALL_TABLE[0] and len(exp.columns) <= SMALL_TABLE[1]
        held = sum(exp.claims.values())
        out.append({"name": exp.name, "title": exp.title, "summary": exp.summary,
                    "columns": exp.columns, "rows": rows, "small": small,
                    "claims": list(exp.claims.items()), "held": held, "figures": images, "missing": missing})
    return out


def _explorer_json(data: dict) -> str:
    """The explorer data as text safe inside a ``<script type="application/json">``: no ``<``
    at all (``\\u003c`` in JSON strings), so neither ``</script`` nor ``<!--`` can end the block."""
    return json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")


def build_report(results_dir: str | Path, out_html: str | Path, *, title: str = "shiftlab report") -> Path:
    """Render the results in ``results_dir`` as one self-contained HTML file (atomic write);
    return its path. Nothing else is written."""
    import jinja2

    found = find_results(results_dir)
    if found.empty:
        raise ShiftlabError(f"found nothing to report in {str(found.root)!r}: expected audit-*.json, "
                            "models/*/train.json, animation-*.gif, explorer-*.json or experiment-*.json")
    context = {
        "title": title,
        "root": str(found.root),
        "overview": _overview(found),
        "layers": _layers(found),
        "stability": _stability(found),
        "animations": [{"name": n, "src": _file_uri(p)} for n, p in found.animations.items()],
        "explorers": [{"name": n, "data": d, "json": _explorer_json(d)} for n, d in found.explorers.items()],
        "experiments": _experiments(found),
        "left_out": found.left_out,
    }
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    try:
        text = env.from_string(TEMPLATE).render(**context, css=CSS, script=SCRIPT)
    except jinja2.TemplateError as err:      # a results file the loaders let through
        raise ShiftlabError(f"cannot render the report of {str(found.root)!r}: {err}; "
                            "re-create the file it names") from None
    return write_text_atomic(out_html, text)


# ----------------------------------------------------------------------------- page
CSS = """
:root { --ink:#1f2328; --muted:#5d6670; --line:#d8dde3; --soft:#f5f7f9; --accent:#ee7733; --ok:#228833; --bad:#cc3344; --navy:#23395b; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--ink); background:#fff; }
header { background:var(--navy); color:#fff; padding:18px 32px 14px; }
header h1 { margin:0 0 2px; font-size:24px; }
header p { margin:0; color:#c9d4e3; font-size:14px; overflow-wrap:anywhere; }
nav { position:sticky; top:0; z-index:5; background:#fff; border-bottom:1px solid var(--line); padding:7px 32px;
      white-space:nowrap; overflow-x:auto; }
nav a { margin-right:18px; color:var(--navy); text-decoration:none; font-weight:600; font-size:14px; }
nav a:hover { text-decoration:underline; }
main { max-width:1180px; margin:0 auto; padding:4px 32px 40px; }
section { border-bottom:1px solid var(--line); padding:12px 0 18px; }
h2 { font-size:20px; margin:8px 0 6px; }
h3 { font-size:16px; margin:16px 0 4px; }
p.lead { max-width:900px; margin:2px 0 8px; }
p.note, li.note { color:var(--muted); font-style:italic; margin:4px 0; }
ul.notes { margin:4px 0 6px; padding-left:20px; font-size:13.5px; }
ul.notes li { margin:2px 0; }
table { border-collapse:collapse; margin:6px 0 8px; font-size:13.5px; }
th, td { padding:4px 8px; border-bottom:1px solid var(--line); text-align:left; white-space:nowrap; }
th { background:var(--soft); font-weight:600; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
th.group { text-align:center; border-left:2px solid #fff; }
td.first-of-group, th.first-of-group { border-left:2px solid var(--line); }
.scroll { overflow-x:auto; max-width:100%; }
.scroll th:first-child, .scroll td:first-child { position:sticky; left:0; background:#fff; z-index:1; }
.scroll th:first-child { background:var(--soft); }
table.headline th small { display:block; font-weight:400; color:var(--muted); }
table.headline th, table.headline td { padding:4px 5px; }
table.headline th.num { white-space:normal; min-width:3.6em; }
figure { margin:8px 0 12px; }
figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:4px; display:block; }
figcaption { color:var(--muted); font-size:13px; margin-top:3px; }
details { margin:4px 0 8px; }
details summary { cursor:pointer; color:var(--navy); font-weight:600; font-size:14px; }
.model { border-top:1px solid var(--line); margin-top:10px; }
.model:first-of-type { border-top:none; }
.gallery { display:grid; grid-template-columns:repeat(auto-fit, minmax(min(100%, 420px), 1fr)); gap:4px 18px; }
.cards { display:grid; grid-template-columns:repeat(auto-fill, minmax(min(100%, 470px), 1fr)); gap:4px 28px; align-items:start; }
.experiment { border-top:1px solid var(--line); padding-top:2px; }
.experiment.wide { grid-column:1 / -1; }
.experiment p { margin:2px 0 6px; font-size:14px; }
.experiment .figures img { cursor:zoom-in; max-height:340px; width:auto; }
.experiment.wide .figures img { max-height:none; cursor:zoom-out; }
.experiment .figures figure { margin:4px 0 6px; }
.claims { padding-left:0; margin:4px 0 6px; font-size:14px; }
.claims li { list-style:none; margin:2px 0; padding-left:1.3em; text-indent:-1.3em; }
.claims .ok { color:var(--ok); font-weight:700; } .claims .bad { color:var(--bad); font-weight:700; }
.tally { font-weight:400; color:var(--muted); font-size:14px; }
.explorer { border:1px solid var(--line); border-radius:6px; padding:10px 16px; margin:10px 0; background:var(--soft); }
.explorer h3 { margin-top:2px; }
.controls { display:flex; gap:24px; flex-wrap:wrap; align-items:center; margin-bottom:8px; }
.controls label { font-weight:600; font-size:14px; }
.controls input[type=range] { width:200px; max-width:45vw; vertical-align:middle; }
.controls output { display:inline-block; min-width:2.6em; font-variant-numeric:tabular-nums; }
.readout { font-size:14px; }
.panels { display:flex; gap:12px; flex-wrap:wrap; align-items:flex-start; }
.panel { text-align:center; font-size:12.5px; color:var(--muted); }
.panel b { color:var(--ink); font-weight:600; }
.panel img { width:132px; height:132px; image-rendering:pixelated; border:1px solid var(--line); background:#000; display:block; margin-top:4px; }
.bars { min-width:220px; font-size:12.5px; }
.bar-row { display:flex; align-items:center; gap:6px; height:16px; margin:1px 0; }
.bar-row .cls { width:1.6em; text-align:right; }
.bar-row .track { flex:1; background:#e6e9ed; height:11px; border-radius:2px; position:relative; }
.bar-row .fill { background:#9aa3ad; height:100%; border-radius:2px; }
.bar-row.top .fill { background:var(--accent); }
.bar-row.true .cls { color:var(--ok); font-weight:700; }
.bar-row .val { width:3.2em; text-align:right; color:var(--muted); font-variant-numeric:tabular-nums; }
@media (max-width: 600px) {
  header { padding:14px 14px 10px; } header h1 { font-size:20px; }
  nav { padding:6px 14px; } main { padding:4px 14px 30px; }
  .panel img { width:104px; height:104px; }
  .bars { min-width:0; width:100%; }
  figure.wide { overflow-x:auto; }
  figure.wide img { max-width:720px; }
}
"""

SCRIPT = """
(function () {
  function setup(box) {
    var data = JSON.parse(box.querySelector('script[type="application/json"]').textContent);
    var dy = box.querySelector('input.dy'), dx = box.querySelector('input.dx');
    var input = box.querySelector('img.input'), maps = box.querySelectorAll('img.map');
    var rows = box.querySelectorAll('.bar-row'), readout = box.querySelector('.readout');
    function show() {
      var iy = Number(dy.value), ix = Number(dx.value);
      var frame = data.frames[iy * data.dxs.length + ix];
      box.querySelector('output.dy').textContent = (frame.dy > 0 ? '+' : '') + frame.dy;
      box.querySelector('output.dx').textContent = (frame.dx > 0 ? '+' : '') + frame.dx;
      input.src = frame.input;
      for (var k = 0; k < maps.length; k++) { maps[k].src = frame.maps[k]; }
      var best = 0;
      for (var c = 0; c < frame.probs.length; c++) { if (frame.probs[c] > frame.probs[best]) { best = c; } }
      for (var r = 0; r < rows.length; r++) {
        var p = frame.probs[r];
        rows[r].querySelector('.fill').style.width = (100 * p).toFixed(1) + '%';
        rows[r].querySelector('.val').textContent = p.toFixed(2);
        rows[r].dataset.prob = p;
        rows[r].classList.toggle('top', r === best);
      }
      var verdict = data.label === null ? '' :
        (best === data.label ? ' (correct)' : ' (wrong: the digit is ' + data.classes[data.label] + ')');
      readout.textContent = 'shift dy ' + frame.dy + ', dx ' + frame.dx + ': predicted ' +
        data.classes[best] + ' with p = ' + frame.probs[best].toFixed(2) + verdict;
      box.dataset.frame = iy * data.dxs.length + ix;
    }
    dy.addEventListener('input', show);
    dx.addEventListener('input', show);
    show();
  }
  var boxes = document.querySelectorAll('.explorer');
  for (var i = 0; i < boxes.length; i++) { setup(boxes[i]); }
  var figures = document.querySelectorAll('.experiment .figures img');
  for (var j = 0; j < figures.length; j++) {          // click a figure: full width and back
    figures[j].addEventListener('click', function (event) {
      event.target.closest('.experiment').classList.toggle('wide');
    });
  }
})();
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>{{ css | safe }}</style>
</head>
<body>
<header>
  <h1>{{ title }}</h1>
  <p>How these models respond when their input moves: layer by layer, at the output, and over a grid of shifts. Read from <code>{{ root }}</code>.</p>
</header>
<nav>
  <a href="#overview">Overview</a><a href="#layers">Per layer</a><a href="#stability">Stability</a><a href="#animation">Animation</a><a href="#explorer">Explorer</a>{% if experiments %}<a href="#experiments">Experiments</a>{% endif %}
</nav>
<main>
{% macro fig(f, kind="") %}{% if f.src %}<figure{% if kind %} class="{{ kind }}"{% endif %}><img src="{{ f.src }}" alt="{{ f.alt }}">{% if f.caption %}<figcaption>{{ f.caption }}</figcaption>{% endif %}</figure>{% else %}<p class="note">{{ f.note }}</p>{% endif %}{% endmacro %}
{% macro table(x) %}<table><tr>{% for c in x.columns %}<th>{{ c }}</th>{% endfor %}</tr>{% for r in x.rows %}<tr>{% for v in r %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</table>{% endmacro %}
<section id="overview">
  <h2>Overview</h2>
  <p class="lead">Each model saw every test image at every shift of a grid. <em>Clean</em>: accuracy on the unshifted images;
  <em>worst-case</em>: an image counts as correct only if it is correct at every shift; <em>consistency</em>: how often two random shifts
  of an image get the same label; <em>flip rate</em>: how often the label changes after a one-pixel step; <em>MAC</em>: the mean absolute change
  of the probability of the earlier step's class over such a step (Azulay &amp; Weiss 2019). The gap between clean and worst-case accuracy is what this report is about:
  <em>gap</em> is clean minus worst-case accuracy in percentage points, over the integer shifts of the grid and over the half-pixel lattice around it
  (band-limited circular shifts by multiples of ½ pixel, integer ones included); <em>½-px consistency</em>: how often the unshifted image and the image shifted by
  a random whole number plus ½ pixel per axis get the same label (Michaeli, Michaeli &amp; Soudry 2023).</p>
  {% for note in overview.notes %}<p class="note">{{ note }}</p>{% endfor %}
  {% if overview.rows %}
  {% for g in overview.groups %}{% set k = loop.index0 %}
  <div class="scroll"><table class="headline">
    <tr><th rowspan="2">model</th><th rowspan="2" class="num">test accuracy{% if overview.test_detail %}<small>{{ overview.test_detail }}</small>{% endif %}</th>
      <th class="group first-of-group" colspan="{{ g.labels | length }}">{{ g.protocol }} shifts{% if g.detail %}<small>{{ g.detail }}</small>{% endif %}</th></tr>
    <tr>{% for m, sub in g.labels %}<th class="num{% if loop.first %} first-of-group{% endif %}">{{ m }}{% if sub %}<small>{{ sub }}</small>{% endif %}</th>{% endfor %}</tr>
    {% for row in overview.rows %}<tr><td>{{ row.model }}</td><td class="num">{{ row.test }}</td>{% for v in row.groups[k] %}<td class="num{% if loop.first %} first-of-group{% endif %}">{{ v }}</td>{% endfor %}</tr>
    {% endfor %}
  </table></div>
  {% endfor %}
  {% endif %}
  {% if overview.figure %}{{ fig(overview.figure, "wide") }}{% endif %}
  {% if left_out %}<ul class="notes">{% for n in left_out %}<li class="note">{{ n }}</li>{% endfor %}</ul>{% endif %}
</section>

<section id="layers">
  <h2>Per-layer equivariance</h2>
  <p class="lead">Each row is a layer, each column a shift of the input. The colour is the relative error between the layer's map of the shifted image
  and its map of the original shifted by the same amount divided by the layer's stride: dark is exact, bright is far off. A layer of stride S can only follow
  shifts that S divides (dotted cells); after a stride or a pool the error comes and goes with period S. Hatched grey cells had nothing to compare.
  On the right, each layer's verdict.</p>
  {% if not layers %}<p class="note">No audit results were found, so there are no per-layer errors to show.</p>{% endif %}
  {% for block in layers %}
  <div class="model">
  <h3>{{ block.name }} <small>({{ block.protocols | join(", ") }} shifts)</small></h3>
  {{ fig(block.figure, "wide") }}
  {% if block.notes %}<ul class="notes">{% for n in block.notes %}<li><b>{{ n.layers }}</b> ({{ n.protocol }} shifts): {{ n.text }}</li>{% endfor %}</ul>{% endif %}
  <details><summary>per-layer numbers</summary>
    {% for t in block.tables %}<div class="scroll"><table>
    <tr><th>layer ({{ t.protocol }})</th><th>type</th><th class="num">stride</th><th>shape</th><th class="num">error, exact shifts</th><th class="num">error, other shifts</th><th>verdict (tolerance {{ t.tolerance }})</th></tr>
    {% for r in t.rows %}<tr><td>{{ r[0] }}</td><td>{{ r[1] }}</td><td class="num">{{ r[2] }}</td><td>{{ r[3] }}</td><td class="num">{{ r[4] }}</td><td class="num">{{ r[5] }}</td><td>{{ r[6] }}</td></tr>
    {% endfor %}
    </table></div>{% endfor %}
  </details>
  </div>
  {% endfor %}
</section>

<section id="stability">
  <h2>Stability of the prediction</h2>
  <p class="lead">The curves follow the probability of the true class and the accuracy as the image moves along dx; the maps show accuracy at every (dx, dy)
  and how far the output moves from the output for the unshifted image (Kauderer-Abrams 2017).
  A shift-invariant model has flat curves, uniform accuracy maps and a sensitivity near zero; a pattern with the period of the stride is aliasing.</p>
  {% if not stability %}<p class="note">No audit results were found, so there are no stability curves to show.</p>{% endif %}
  {% if stability %}{{ fig(stability[0], "wide") }}
  <details><summary>2-D maps: accuracy and sensitivity at every (dx, dy)</summary>
  {% for f in stability[1:] %}{{ fig(f, "wide") }}{% endfor %}
  </details>{% endif %}
</section>

<section id="animation">
  <h2>Feature maps of a sliding digit</h2>
  <p class="lead">A digit slides over a blank canvas. Each feature map is coloured by the k-means cluster of its channel vectors (the same colours in every frame)
  and lit by the activation strength. The <em>stabilised</em> row shifts each map back by the shift divided by the layer's stride:
  it stands still where the layer is equivariant and flickers where it is not.</p>
  {% if not animations %}<p class="note">No animation was found (animation-NAME.gif); make one with <code>shiftlab animate --model lenet-wolf --out DIR/animation-lenet-wolf.gif</code>.</p>{% endif %}
  <div class="gallery">
  {% for a in animations %}<figure><img src="{{ a.src }}" alt="sliding-digit animation of {{ a.name }}"><figcaption>{{ a.name }}</figcaption></figure>{% endfor %}
  </div>
</section>

<section id="explorer">
  <h2>Shift explorer</h2>
  <p class="lead">Move the sliders to shift the digit on its canvas and watch the feature maps and the class probabilities respond.
  The frames were computed in advance, so this works without a server.</p>
  {% if not explorers %}<p class="note">No explorer data was found (explorer-NAME.json); create it with <code>shiftlab.viz.explorer.save_explorer</code>.</p>{% endif %}
  {% for e in explorers %}
  {% set outer = loop.index0 %}
  <div class="explorer" id="explorer-{{ outer }}">
    <h3>{{ e.name }}</h3>
    <div class="controls">
      <label>dx (right) <input type="range" class="dx" min="0" max="{{ e.data.dxs | length - 1 }}" step="1" value="{{ e.data.dxs.index(0) if 0 in e.data.dxs else 0 }}" aria-label="horizontal shift"> <output class="dx"></output></label>
      <label>dy (down) <input type="range" class="dy" min="0" max="{{ e.data.dys | length - 1 }}" step="1" value="{{ e.data.dys.index(0) if 0 in e.data.dys else 0 }}" aria-label="vertical shift"> <output class="dy"></output></label>
      <span class="readout"></span>
    </div>
    <div class="panels">
      <div class="panel"><b>input</b><br>{{ e.data.canvas }}×{{ e.data.canvas }} canvas<img class="input" alt="shifted input" src="{{ e.data.frames[0].input }}"></div>
      {% for layer in e.data.layers %}
      <div class="panel"><b>{{ layer.name }}</b><br>{{ layer.kind }}, stride {{ layer.stride }}<img class="map" alt="feature map {{ layer.name }}" src="{{ e.data.frames[0].maps[loop.index0] }}"></div>
      {% endfor %}
      <div class="bars"><b>class probability</b>
        {% for c in e.data.classes %}<div class="bar-row{% if e.data.label == loop.index0 %} true{% endif %}"><span class="cls">{{ c }}</span><span class="track"><span class="fill" style="display:block;width:0"></span></span><span class="val"></span></div>{% endfor %}
      </div>
    </div>
    <script type="application/json">{{ e.json | safe }}</script>
  </div>
  {% endfor %}
</section>

{% if experiments %}
<section id="experiments">
  <h2>Experiments</h2>
  <p class="lead">Each experiment checks a claim about convolutions and shifts by running code; ✓ marks a claim the measurement upholds.
  Click a figure to see it at full width.</p>
  <div class="cards">
  {% for x in experiments %}
  <div class="experiment" id="experiment-{{ x.name }}">
    <h3>{{ x.title }} {% if x.claims %}<span class="tally">· {{ x.held }} of {{ x.claims | length }} claims hold</span>{% endif %}</h3>
    <div class="figures">
      {% for f in x.figures %}{{ fig(f) }}{% endfor %}
      {% for m in x.missing %}<p class="note">{{ m }}</p>{% endfor %}
    </div>
    <p>{{ x.summary }}</p>
    {% if x.claims %}<ul class="claims">{% for text, holds in x.claims %}<li>{% if holds %}<span class="ok">✓</span>{% else %}<span class="bad">✗ fails:</span>{% endif %} {{ text }}</li>{% endfor %}</ul>{% endif %}
    {% if x.rows and x.small %}<div class="scroll">{{ table(x) }}</div>{% endif %}
    {% if x.rows and not x.small %}<details><summary>numbers ({{ x.rows | length }} rows)</summary><div class="scroll">{{ table(x) }}</div></details>{% endif %}
  </div>
  {% endfor %}
  </div>
</section>
{% endif %}
</main>
<script>{{ script | safe }}</script>
</body>
</html>
"""
