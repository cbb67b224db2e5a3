"""The HTML report: one self-contained file a person opens first (``shiftlab report DIR``).

It only reads saved results; it never runs a model. Everything is embedded (images as
base64 data URIs, inline CSS and JS, no network), so the file opens from disk anywhere.

The results folder it reads (every part optional; a section per thing found, and a
polite note for what is missing)::

    DIR/audit-NAME.json          AuditResult.to_json: one per audit (NAME labels it; one model
                                 may have several, e.g. audit-lenet-wolf-circular.json; its
                                 training record is found by the audit's provenance.model)
    DIR/models/NAME/train.json   training record of model NAME (its test accuracy)
    DIR/animation-NAME.gif       shiftlab.viz.animate output (Wolf's sliding digit)
    DIR/explorer-NAME.json       shiftlab.viz.explorer.save_explorer output (the slider)
    DIR/experiment-NAME.json     ExperimentResult.save: title, summary, table, claims,
                                 figures (PNG paths relative to DIR)

The report draws its figures from the audits into ``DIR/figures/`` (PNG, kept as artefacts) with :mod:`shiftlab.viz.plots`:

    report-model-bars            consistency / flip rate / accuracy per model
    report-layers-NAME           per-layer equivariance error against shift
    report-stability-PROTOCOL    true-class probability and accuracy against shift
    report-heatmap-PROTOCOL      accuracy over the 2-D shift grid
    report-sensitivity-PROTOCOL  translation-sensitivity maps and radial curves

Audits are compared on one plot only when they used the same shift protocol.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ShiftlabError
from .experiments.base import ExperimentResult
from .fmt import MISSING, cell, pct
from .io import write_text_atomic
from .result import AuditResult

__all__ = ["build_report", "find_results", "ResultsFolder"]


@dataclass
class ResultsFolder:
    """What :func:`find_results` found in a results folder."""

    root: Path
    audits: dict[str, AuditResult] = field(default_factory=dict)
    test_accuracy: dict[str, float] = field(default_factory=dict)
    animations: dict[str, Path] = field(default_factory=dict)
    explorers: dict[str, dict] = field(default_factory=dict)
    experiments: list[ExperimentResult] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.audits or self.test_accuracy or self.animations or self.explorers
                    or self.experiments)


def _name(path: Path, prefix: str) -> str:
    return path.stem[len(prefix):] or path.stem


def find_results(root: str | Path) -> ResultsFolder:
    """Read everything the report uses from ``root`` (layout: see the module doc)."""
    from .viz.explorer import load_explorer

    root = Path(root)
    if not root.is_dir():
        raise ShiftlabError(f"results folder {str(root)!r} does not exist; run `make demo` or "
                            "`shiftlab audit ... --out DIR/audit-NAME.json` first")
    found = ResultsFolder(root)
    for path in sorted(root.glob("audit-*.json")):
        try:
            found.audits[_name(path, "audit-")] = AuditResult.from_json(path)
        except ShiftlabError as err:                       # name the file the error is about
            raise ShiftlabError(str(err) if str(path) in str(err) else f"{path}: {err}") from None
    for path in sorted(root.glob("models/*/train.json")):
        try:
            accuracy = json.loads(path.read_text()).get("test_accuracy")
        except (OSError, ValueError, AttributeError):
            raise ShiftlabError(f"{path} is not a readable training record; re-run the training") from None
        if isinstance(accuracy, (int, float)):
            found.test_accuracy[path.parent.name] = float(accuracy)
    for path in sorted(root.glob("animation-*.gif")):
        found.animations[_name(path, "animation-")] = path
    for path in sorted(root.glob("explorer-*.json")):
        found.explorers[_name(path, "explorer-")] = load_explorer(path)
    for path in sorted(root.glob("experiment-*.json")):
        found.experiments.append(ExperimentResult.load(path))
    return found


# ----------------------------------------------------------------------------- helpers
MIME = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
        ".svg": "image/svg+xml"}


def _file_uri(path: Path) -> str:
    """An image file embedded as a data URI (type from its suffix)."""
    from .viz.explorer import data_uri
    return data_uri(path.read_bytes(), MIME.get(path.suffix.lower(), "application/octet-stream"))


def _sci(value) -> str:
    return MISSING if value is None else f"{value:.2e}"


def _inside(root: Path, name: str) -> Path | None:
    """``root/name`` if it is a file inside ``root`` (no absolute paths, no ``..`` escapes)."""
    base = root.resolve()
    path = (base / name).resolve()
    return path if path.is_relative_to(base) and path.is_file() else None


def _by_protocol(audits: dict[str, AuditResult]) -> dict[str, dict[str, AuditResult]]:
    groups: dict[str, dict[str, AuditResult]] = {}
    for name, result in audits.items():
        groups.setdefault(result.provenance.protocol, {})[name] = result
    return groups


def _figure(make, results, folder: Path, stem: str, caption: str) -> dict:
    """Draw one figure; a figure the data cannot support becomes a note instead."""
    try:
        png = make(results, folder, stem, formats=("png",))[0]
    except ShiftlabError as err:
        return {"note": f"{caption}: not drawn ({err})"}
    return {"src": _file_uri(png), "caption": caption, "alt": caption}


# ----------------------------------------------------------------------------- sections
def _overview(found: ResultsFolder, figures: Path) -> dict:
    from .viz.plots import plot_model_bars

    rows = []
    for name, result in found.audits.items():
        inv, p = result.invariance, result.provenance
        mean_acc = None if not inv.accuracy else float(np.mean(inv.accuracy))
        accuracy = found.test_accuracy.get(name, found.test_accuracy.get(p.model))
        rows.append([name, f"{p.protocol} {p.shifts}", pct(accuracy),
                     pct(inv.clean_accuracy), pct(mean_acc), pct(inv.worst_case_accuracy),
                     pct(inv.consistency), pct(inv.flip_rate)])
    audited = set(found.audits) | {r.provenance.model for r in found.audits.values()}
    for name, accuracy in found.test_accuracy.items():            # trained, not audited
        if name not in audited:
            rows.append([name, "not audited", pct(accuracy)] + [MISSING] * 5)
    notes = []
    if not found.audits:
        notes.append("No audit results were found (audit-NAME.json), so there are no stability "
                     "numbers yet; run `shiftlab audit --model NAME --out DIR/audit-NAME.json`.")
    if found.audits and not found.test_accuracy:
        notes.append("No training records were found (models/NAME/train.json), so the MNIST test "
                     "accuracy column is empty.")
    figure = _figure(plot_model_bars, found.audits, figures, "report-model-bars",
                     "Consistency, flip rate and accuracy per model") if found.audits else None
    return {"columns": ["model", "shifts", "test accuracy", "clean accuracy", "mean accuracy over shifts",
                        "worst-case accuracy", "consistency", "flip rate"],
            "rows": rows, "notes": notes, "figure": figure}


def _layers(found: ResultsFolder, figures: Path) -> list[dict]:
    from .viz.plots import plot_layer_errors

    blocks = []
    for name, result in found.audits.items():
        tol = result.provenance.tolerance
        rows = [[l.name, l.kind, "–" if l.comparison != "equivariance" else str(l.stride),
                 "×".join(map(str, l.shape)), _sci(l.error_exact), _sci(l.error_other), l.verdict(tol)]
                for l in result.layers]
        blocks.append({"name": name, "protocol": result.provenance.protocol, "rows": rows,
                       "figure": _figure(plot_layer_errors, result, figures, f"report-layers-{name}",
                                         f"{name}: per-layer error against shift")})
    return blocks


def _stability(found: ResultsFolder, figures: Path) -> list[dict]:
    from .viz.plots import plot_accuracy_heatmap, plot_sensitivity, plot_stability

    groups = []
    for protocol, audits in _by_protocol(found.audits).items():
        groups.append({"protocol": protocol, "figures": [
            _figure(plot_stability, audits, figures, f"report-stability-{protocol}",
                    f"True-class probability and accuracy against shift ({protocol})"),
            _figure(plot_accuracy_heatmap, audits, figures, f"report-heatmap-{protocol}",
                    f"Accuracy over the 2-D shift grid ({protocol})"),
            _figure(plot_sensitivity, audits, figures, f"report-sensitivity-{protocol}",
                    f"Translation-sensitivity maps and radial averages ({protocol})")]})
    return groups


def _experiments(found: ResultsFolder) -> list[dict]:
    out = []
    for exp in found.experiments:
        images, missing = [], []
        for name in exp.figures:
            path = _inside(found.root, name)
            if path is not None:
                images.append({"src": _file_uri(path), "caption": Path(name).stem, "alt": f"{exp.title}: {name}"})
            else:
                missing.append(name)
        out.append({"name": exp.name, "title": exp.title, "summary": exp.summary,
                    "columns": exp.columns, "rows": [[cell(v) for v in r] for r in exp.rows],
                    "claims": list(exp.claims.items()), "figures": images, "missing": missing})
    return out


def _explorer_json(data: dict) -> str:
    """The explorer data as text safe inside a ``<script type="application/json">``: no ``<``
    at all (``\\u003c`` in JSON strings), so neither ``</script`` nor ``<!--`` can end the block."""
    return json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")


def build_report(results_dir: str | Path, out_html: str | Path, *, title: str = "shiftlab report") -> Path:
    """Render the results in ``results_dir`` as one self-contained HTML file (atomic write).

    Figures are drawn into ``results_dir/figures``; returns the HTML path.
    """
    import jinja2

    found = find_results(results_dir)
    if found.empty:
        raise ShiftlabError(f"found nothing to report in {str(found.root)!r}: expected audit-*.json, "
                            "models/*/train.json, animation-*.gif, explorer-*.json or experiment-*.json")
    figures = found.root / "figures"
    context = {
        "title": title,
        "root": str(found.root),
        "overview": _overview(found, figures),
        "layers": _layers(found, figures),
        "stability": _stability(found, figures),
        "animations": [{"name": n, "src": _file_uri(p)} for n, p in found.animations.items()],
        "explorers": [{"name": n, "data": d, "json": _explorer_json(d)} for n, d in found.explorers.items()],
        "experiments": _experiments(found),
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
:root { --ink:#1f2328; --muted:#5d6670; --line:#d8dde3; --soft:#f5f7f9; --accent:#ee7733; --ok:#228833; --bad:#cc3344; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--ink); background:#fff; }
header { background:#23395b; color:#fff; padding:22px 32px 18px; }
header h1 { margin:0 0 4px; font-size:26px; }
header p { margin:0; color:#c9d4e3; }
nav { position:sticky; top:0; z-index:5; background:#fff; border-bottom:1px solid var(--line); padding:8px 32px; }
nav a { margin-right:18px; color:#23395b; text-decoration:none; font-weight:600; font-size:14px; }
nav a:hover { text-decoration:underline; }
main { max-width:1180px; margin:0 auto; padding:8px 32px 60px; }
section { border-bottom:1px solid var(--line); padding:18px 0 26px; }
h2 { font-size:21px; margin:10px 0 8px; }
h3 { font-size:16px; margin:22px 0 6px; }
p.lead { max-width:860px; margin:4px 0 12px; }
p.note { color:var(--muted); font-style:italic; margin:6px 0; }
table { border-collapse:collapse; margin:10px 0 14px; font-size:13.5px; }
th, td { padding:5px 10px; border-bottom:1px solid var(--line); text-align:left; white-space:nowrap; }
th { background:var(--soft); font-weight:600; }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
.scroll { overflow-x:auto; }
figure { margin:12px 0 18px; }
figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:4px; }
figcaption { color:var(--muted); font-size:13px; margin-top:4px; }
details summary { cursor:pointer; color:#23395b; font-weight:600; font-size:14px; }
.claims li { list-style:none; margin:3px 0; }
.claims .ok { color:var(--ok); font-weight:700; } .claims .bad { color:var(--bad); font-weight:700; }
.explorer { border:1px solid var(--line); border-radius:6px; padding:14px 18px; margin:14px 0; background:var(--soft); }
.controls { display:flex; gap:28px; flex-wrap:wrap; align-items:center; margin-bottom:10px; }
.controls label { font-weight:600; font-size:14px; }
.controls input[type=range] { width:220px; vertical-align:middle; }
.controls output { display:inline-block; min-width:2.6em; font-variant-numeric:tabular-nums; }
.readout { font-size:14px; }
.panels { display:flex; gap:14px; flex-wrap:wrap; align-items:flex-start; }
.panel { text-align:center; font-size:12.5px; color:var(--muted); }
.panel b { color:var(--ink); font-weight:600; }
.panel img { width:170px; height:170px; image-rendering:pixelated; border:1px solid var(--line); background:#000; display:block; margin-top:4px; }
.bars { min-width:230px; font-size:12.5px; }
.bar-row { display:flex; align-items:center; gap:6px; height:16px; margin:1px 0; }
.bar-row .cls { width:1.6em; text-align:right; }
.bar-row .track { flex:1; background:#e6e9ed; height:11px; border-radius:2px; position:relative; }
.bar-row .fill { background:#9aa3ad; height:100%; border-radius:2px; }
.bar-row.top .fill { background:var(--accent); }
.bar-row.true .cls { color:var(--ok); font-weight:700; }
.bar-row .val { width:3.2em; text-align:right; color:var(--muted); font-variant-numeric:tabular-nums; }
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
  <p>How these models respond when their input moves: layer by layer, at the output, and over a grid of shifts. Results read from <code>{{ root }}</code>.</p>
</header>
<nav>
  <a href="#overview">Overview</a><a href="#layers">Per-layer equivariance</a><a href="#stability">Stability</a>
  <a href="#animation">Animation</a><a href="#explorer">Shift explorer</a>{% if experiments %}<a href="#experiments">Experiments</a>{% endif %}
</nav>
<main>
{% macro fig(f) %}{% if f.src %}<figure><img src="{{ f.src }}" alt="{{ f.alt }}"><figcaption>{{ f.caption }}</figcaption></figure>{% else %}<p class="note">{{ f.note }}</p>{% endif %}{% endmacro %}
<section id="overview">
  <h2>Overview</h2>
  <p class="lead">shiftlab moved every test image over a grid of shifts and recorded each model's prediction at every shift.
  <em>Consistency</em> is how often two random shifts of the same image get the same label; the <em>flip rate</em> is how often
  the label changes after a one-pixel step; <em>worst-case accuracy</em> counts an image as correct only if it is correct at every shift.
  A model can be accurate on centred digits and still fail on most of them somewhere on the grid: that gap is what this report is about.</p>
  {% for note in overview.notes %}<p class="note">{{ note }}</p>{% endfor %}
  {% if overview.rows %}
  <div class="scroll"><table>
    <tr>{% for c in overview.columns %}<th>{{ c }}</th>{% endfor %}</tr>
    {% for row in overview.rows %}<tr><td>{{ row[0] }}</td><td>{{ row[1] }}</td>{% for v in row[2:] %}<td class="num">{{ v }}</td>{% endfor %}</tr>
    {% endfor %}
  </table></div>
  {% endif %}
  {% if overview.figure %}{{ fig(overview.figure) }}{% endif %}
</section>

<section id="layers">
  <h2>Per-layer equivariance</h2>
  <p class="lead">For each layer, the error is how far its feature map of the shifted image is from its feature map of the original image,
  shifted by the same amount divided by the layer's stride (relative L2 over the region both maps cover). Zero means the layer is exactly equivariant.
  A layer of stride S can only follow shifts that S divides, so after a stride or a pool the error comes and goes with period S: filled markers are exact comparisons,
  hollow ones the best integer alignment.</p>
  {% if not layers %}<p class="note">No audit results were found, so there are no per-layer errors to show.</p>{% endif %}
  {% for block in layers %}
  <h3>{{ block.name }} <small>({{ block.protocol }} shifts)</small></h3>
  {{ fig(block.figure) }}
  <details><summary>per-layer table</summary><div class="scroll"><table>
    <tr><th>layer</th><th>type</th><th>stride</th><th>shape</th><th>err exact</th><th>err other</th><th>verdict</th></tr>
    {% for r in block.rows %}<tr><td>{{ r[0] }}</td><td>{{ r[1] }}</td><td class="num">{{ r[2] }}</td><td>{{ r[3] }}</td><td class="num">{{ r[4] }}</td><td class="num">{{ r[5] }}</td><td>{{ r[6] }}</td></tr>
    {% endfor %}
  </table></div></details>
  {% endfor %}
</section>

<section id="stability">
  <h2>Stability of the prediction</h2>
  <p class="lead">The curves follow the probability of the true class as the image moves horizontally; the heatmaps show accuracy at every (dx, dy) of the grid,
  and the sensitivity maps how far the output moves away from the output for the unshifted image (Kauderer-Abrams 2017).
  A shift-invariant model has flat curves, a uniform heatmap and a sensitivity near zero; bumps with a period equal to the stride are aliasing.</p>
  {% if not stability %}<p class="note">No audit results were found, so there are no stability curves to show.</p>{% endif %}
  {% for group in stability %}
  {% if stability | length > 1 %}<h3>{{ group.protocol }} shifts</h3>{% endif %}
  {% for f in group.figures %}{{ fig(f) }}{% endfor %}
  {% endfor %}
</section>

<section id="animation">
  <h2>Feature maps of a sliding digit</h2>
  <p class="lead">A digit slides over a blank canvas. Each feature map is coloured by the k-means cluster of its channel vectors (the same colours in every frame)
  and lit by the activation strength. The <em>stabilised</em> row shifts each map back by the shift divided by the layer's stride:
  it stands still where the layer is equivariant and flickers where it is not.</p>
  {% if not animations %}<p class="note">No animation was found (animation-NAME.gif); make one with <code>shiftlab animate --model lenet-wolf --out DIR/animation-lenet-wolf.gif</code>.</p>{% endif %}
  {% for a in animations %}<figure><img src="{{ a.src }}" alt="sliding-digit animation of {{ a.name }}"><figcaption>{{ a.name }}</figcaption></figure>{% endfor %}
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
  <p class="lead">Each experiment checks one claim about convolutions and shifts by running code; the claims below are measured, not assumed.</p>
  {% for x in experiments %}
  <h3 id="experiment-{{ x.name }}">{{ x.title }}</h3>
  <p class="lead">{{ x.summary }}</p>
  {% if x.claims %}<ul class="claims">{% for text, holds in x.claims %}<li>{% if holds %}<span class="ok">✓ holds</span>{% else %}<span class="bad">✗ fails</span>{% endif %} {{ text }}</li>{% endfor %}</ul>{% endif %}
  {% if x.rows %}<div class="scroll"><table>
    <tr>{% for c in x.columns %}<th>{{ c }}</th>{% endfor %}</tr>
    {% for r in x.rows %}<tr>{% for v in r %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}
  </table></div>{% endif %}
  {% for f in x.figures %}{{ fig(f) }}{% endfor %}
  {% for m in x.missing %}<p class="note">Figure {{ m }} is listed but missing from the results folder.</p>{% endfor %}
  {% endfor %}
</section>
{% endif %}
</main>
<script>{{ script | safe }}</script>
</body>
</html>
"""
