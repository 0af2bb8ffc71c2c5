"""The indicator probe: targets, metrics, MLP/ridge fit, seeds, against sklearn and known signals."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import mean_absolute_error, r2_score

from configs.eval import ProbeConfig, urbanclip_probe
from eval.regression import fit_targets, metrics, probe_indicator, usable_rows


def _signal(n=400, dim=16, seed=0, noise=0.3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    log_y = x @ rng.normal(size=dim) * 0.5 + 5.0 + rng.normal(scale=noise, size=n)
    return x, np.exp(log_y)


def test_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    t, p = rng.normal(size=50), rng.normal(size=50)
    m = metrics(t, p)
    assert np.isclose(m["r2"], r2_score(t, p))
    assert np.isclose(m["mae"], mean_absolute_error(t, p))
    assert np.isclose(m["rmse"], np.sqrt(np.mean((t - p) ** 2)))


def test_zero_missing_and_negative_rows_are_dropped():
    assert usable_rows(np.array([1.0, 0.0, np.nan, -2.0, 3.0])).tolist() == [0, 4]


def test_refined_transform_shifts_by_train_minimum():
    shift, mean, std = fit_targets(np.log(np.array([2.0, 4.0, 8.0])), refined=True)
    assert np.isclose(shift, np.log(2.0)) and np.isclose(mean, np.log(2.0)) and std > 0
    assert fit_targets(np.log(np.array([2.0, 4.0, 8.0])), refined=False)[0] == 0.0


def test_probe_recovers_a_real_signal_and_not_noise():
    x, y = _signal()
    idx = np.arange(len(y))
    cfg = ProbeConfig(seeds=(0, 1), max_epochs=200)
    res = probe_indicator(x, y, idx[:300], idx[300:], cfg)
    assert res["mlp"]["r2"] > 0.7 and res["ridge"]["r2"] > 0.8
    assert len(res["mlp_per_seed"]) == 2 and res["n_test"] == 100
    noise = np.random.default_rng(5).normal(size=x.shape)
    res_noise = probe_indicator(noise, y, idx[:300], idx[300:], cfg)
    assert res_noise["ridge"]["r2"] < 0.2 and res_noise["mlp"]["r2"] < 0.3


def test_test_rows_never_influence_the_fit():
    x, y = _signal(seed=3)
    idx = np.arange(len(y))
    cfg = ProbeConfig(seeds=(0,), max_epochs=50)
    a = probe_indicator(x, y, idx[:300], idx[300:], cfg)
    y2 = y.copy()
    y2[300:] *= 10.0  # change only test targets: the fitted models (hence predictions) must not move
    b = probe_indicator(x, y2, idx[:300], idx[300:], cfg)
    assert np.allclose(a["predictions"]["ridge_log"], b["predictions"]["ridge_log"])


def test_urbanclip_preset_is_the_official_shape():
    cfg = urbanclip_probe()
    assert (cfg.hidden, cfg.dropout, cfg.lr, cfg.weight_decay, cfg.refined) == (256, 0.01, 3e-4, 0.01, True)
    assert (cfg.batch_size, cfg.max_epochs, cfg.patience, cfg.standardise_features) == (2, 100, 100, False)
