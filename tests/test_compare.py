import math

import pytest

from vqalab import notebook
from vqalab.compare import combined_noise, compare_figure


def test_a_change_inside_the_noise_reads_no_change():
    # two identical weeks on a busy machine: throughput 3010 then 2370 samples/s, each ± its IQR
    result = compare_figure(3010.0, 2370.0, noise_before=450.0, noise_now=520.0)
    assert result["difference"] == -640.0
    assert result["noise"] == pytest.approx(math.hypot(450, 520))
    assert result["beyond_noise"] is False
    assert result["change"] == "no change beyond noise (-640 within ±688)"


def test_a_change_beyond_the_noise_is_reported_with_it():
    result = compare_figure(0.62, 0.81, noise_before=0.03, noise_now=0.04)
    assert result["beyond_noise"] is True
    assert result["change"] == "+0.19 (beyond noise ±0.05)"
    # only one week knows its noise: that noise alone judges the change
    one = compare_figure(100, 103, noise_now=5)
    assert one["noise"] == 5 and one["beyond_noise"] is False
    # a change exactly at the noise is not beyond it
    assert compare_figure(10.0, 13.0, noise_before=3.0)["beyond_noise"] is False


def test_figures_without_noise_compare_as_plain_differences():
    assert compare_figure(64, 256) == {"difference": 192, "noise": None, "beyond_noise": None, "change": "+192"}
    assert compare_figure("adam", "adam")["change"] == "same"
    assert compare_figure("adam", "sgd")["change"] == "changed"
    assert compare_figure(None, 3.0)["change"] == "new"
    assert compare_figure(3.0, None, noise_before=1.0)["change"] == "gone"
    assert compare_figure(None, None)["change"] == "–"
    assert compare_figure(True, False)["change"] == "changed"  # booleans are not numbers here


def test_noise_must_be_a_non_negative_number():
    with pytest.raises(ValueError, match=r"noise_now = -1: expected a non-negative number"):
        compare_figure(1.0, 2.0, noise_now=-1)
    with pytest.raises(ValueError, match=r"noise_before = 'wide'"):
        compare_figure(1.0, 2.0, noise_before="wide")
    assert combined_noise(None, None) is None
    assert combined_noise(3.0, 4.0) == pytest.approx(5.0)


def published(monkeypatch, **kwargs) -> dict:
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, raw=False: shown.append(obj))
    notebook.findings(**kwargs)
    assert len(shown) == 1
    return shown[0]


def test_findings_publish_the_noise_of_measured_figures(monkeypatch):
    out = published(monkeypatch, headline={"throughput (samples/s)": 2370.5, "best batch size": 64},
                    text=["Use batch size 64."], noise={"throughput (samples/s)": 520.0})
    payload = out[notebook.FINDINGS_MIME]
    assert payload["noise"] == {"throughput (samples/s)": 520.0}
    assert payload["headline"]["best batch size"] == 64
    assert "| throughput (samples/s) | 2370 ± 520 |" in out["text/markdown"]
    assert "| best batch size | 64 |" in out["text/markdown"]


def test_findings_reject_noise_for_unknown_figures(monkeypatch):
    with pytest.raises(KeyError, match="noise given for 'throughput', which are not headline figures"):
        published(monkeypatch, headline={"best val_acc": 0.8}, text=["x"], noise={"throughput": 1.0})
    with pytest.raises(TypeError, match="noise of 'best val_acc' must be a non-negative number"):
        published(monkeypatch, headline={"best val_acc": 0.8}, text=["x"], noise={"best val_acc": "±0.1"})
