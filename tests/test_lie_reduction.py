"""The LEE's two reductions: Gruver et al.'s code averages |L p_c| (``mean_abs``, the default);
their paper squares it (``rms``: the root mean square over images and classes). Before, only
the code's was offered and the result did not say which it was."""
import json
import math

import pytest
import torch
from torch import nn

from shiftlab import ShiftlabError, lie_derivative
from shiftlab.result import AuditResult, LieResult


def _known_answer(n: int = 16, k: int = 3, amplitudes=(1.0, 3.0)):
    """A linear head on signals ``x_i = A_i cos(2π k t / n)`` whose three logits are
    ``(u, −u, 0)`` with ``u = Σ_t sin(2π k t / n) x[t]`` (0 for every image).

    The Fourier generator on the input (``n/2`` pixels per unit) gives ``L u_i = A_i π k n / 2``;
    at ``u = 0`` the softmax is uniform and ``L p = (1/3, −1/3, 0) · L u``. So per image the
    ``|L p_c|`` are ``(c_i, c_i, 0)`` with ``c_i = A_i π k n / 6``: ``mean_abs = (2/3) mean_i c_i``
    and ``rms = sqrt((2/3) mean_i c_i²)``."""
    t = torch.arange(n, dtype=torch.float64)
    w = torch.sin(2 * math.pi * k * t / n)
    head = nn.Linear(n, 3, bias=False).double()
    with torch.no_grad():
        head.weight.copy_(torch.stack([w, -w, torch.zeros(n, dtype=torch.float64)]))
    model = nn.Sequential(nn.Flatten(), head).eval()
    a = torch.tensor(amplitudes, dtype=torch.float64)
    x = a[:, None, None] * torch.cos(2 * math.pi * k * t / n)[None, None]
    c = a * math.pi * k * n / 6
    return model, x, float((2 / 3) * c.mean()), float(((2 / 3) * (c ** 2).mean()).sqrt())


def test_rms_and_mean_abs_differ_as_the_closed_form_says(tmp_path):
    """Guards both reductions against their closed form, and that they are named and recorded
    in the result, its JSON and its table."""
    model, x, mean_abs, rms = _known_answer()
    default = lie_derivative(model, x, generator="fourier")
    squared = lie_derivative(model, x, generator="fourier", reduction="rms")
    assert default.reduction == "mean_abs" and squared.reduction == "rms"
    assert default.lee["t"] == pytest.approx(mean_abs, rel=1e-9)
    assert squared.lee["t"] == pytest.approx(rms, rel=1e-9)
    # the same derivatives: only the reduction differs; total = mean over images of Σ_c (L p_c)²
    assert squared.total == default.total
    assert squared.lee["t"] == pytest.approx(math.sqrt(default.total["t"] / 3), rel=1e-12)
    assert "|L p_c|" in default.convention and "root mean square" in squared.convention
    from shiftlab import audit
    result = audit(model, x, shifts="0;1", pairs=0)
    result.lie = squared
    assert "(LEE, 2 images, fourier shifts, rms)" in result.table()
    path = result.to_json(tmp_path / "r.json")
    assert json.loads(path.read_text())["lie"]["reduction"] == "rms"
    assert AuditResult.from_json(path).lie.reduction == "rms"


def test_the_reduction_is_checked_and_read_back_from_json(tmp_path):
    """Guards a bad reduction (one line) and a JSON written without the field (the code's)."""
    model, x, _, _ = _known_answer()
    with pytest.raises(ShiftlabError, match="unknown LEE reduction 'l2'"):
        lie_derivative(model, x, reduction="l2")
    from shiftlab.typed_json import build
    old = {"axes": ["t"], "lee": {"t": 1.0}, "total": {"t": 1.0}, "unattributed": {"t": 0.0}}
    assert build(LieResult, old).reduction == "mean_abs"
    assert build(LieResult, old | {"reduction": "rms"}).reduction == "rms"


def test_the_cli_passes_the_reduction_through(tmp_path, capsys):
    """--lie-reduction rms reaches the JSON; mean_abs stays the default."""
    import json
    from shiftlab.cli import main
    for extra, want in (([], "mean_abs"), (["--lie-reduction", "rms"], "rms")):
        out = tmp_path / f"{want}.json"
        assert main(["audit", "--model", "conv-circular", "--data", "synthetic:4:1x12x12",
                     "--shifts=-1:1", "--pairs", "0", "--lie", "2", "--quiet", *extra,
                     "--out", str(out)]) == 0
        assert json.loads(out.read_text())["lie"]["reduction"] == want
