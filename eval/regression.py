"""Indicator regression probes on frozen embeddings: target transform, MLP and ridge, test-split metrics.

The UrbanCLIP protocol, done right:
- targets: rows with a zero or missing value are dropped, then natural log, then a z-score with TRAIN
  statistics (optionally UrbanCLIP's min-max "refined" transform first);
- the MLP (embed_dim -> hidden -> 1) early-stops on a validation split carved from train, never on test;
- metrics are computed on the TEST split, in natural-log units (R2, RMSE, MAE) plus MAPE on the raw scale;
- every probe runs over several seeds; the report keeps each seed and the mean and standard deviation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import RidgeCV

from configs.eval import ProbeConfig


@dataclass(frozen=True)
class Targets:
    """Log targets of the usable rows, with the train statistics used to standardise them."""

    rows: np.ndarray  # indices of usable rows (value > 0 and finite)
    log_values: np.ndarray
    shift: float  # refined transform's offset (0 when off)
    mean: float
    std: float

    def standardise(self, log_values: np.ndarray) -> np.ndarray:
        return (log_values - self.shift - self.mean) / self.std

    def restore(self, z: np.ndarray) -> np.ndarray:
        return z * self.std + self.mean + self.shift


def usable_rows(values: np.ndarray) -> np.ndarray:
    """Indices whose indicator is present, finite and strictly positive (zeros are dropped, as UrbanCLIP does)."""
    v = np.asarray(values, dtype=float)
    return np.flatnonzero(np.isfinite(v) & (v > 0))


def fit_targets(log_train: np.ndarray, refined: bool) -> tuple[float, float, float]:
    """(shift, mean, std) from train log values; `refined` shifts by the train minimum (UrbanCLIP's transform)."""
    shift = float(log_train.min()) if refined else 0.0
    centred = log_train - shift
    std = float(centred.std()) or 1.0
    return shift, float(centred.mean()), std


def metrics(true_log: np.ndarray, pred_log: np.ndarray) -> dict[str, float]:
    """R2, RMSE, MAE in log units; MAPE (%) on the raw scale."""
    err = pred_log - true_log
    ss_res = float(np.sum(err ** 2))
    ss_tot = float(np.sum((true_log - true_log.mean()) ** 2)) or 1e-12
    raw_true, raw_pred = np.exp(true_log), np.exp(pred_log)
    return {
        "r2": 1.0 - ss_res / ss_tot,
        "rmse": float(np.sqrt(np.mean(err ** 2))),
        "mae": float(np.mean(np.abs(err))),
        "mape": float(np.mean(np.abs(raw_pred - raw_true) / raw_true) * 100.0),
    }


def fit_ridge(x_train: np.ndarray, y_train: np.ndarray, alphas: tuple[float, ...]) -> RidgeCV:
    """Ridge baseline with its alpha chosen by efficient leave-one-out on train."""
    return RidgeCV(alphas=alphas).fit(x_train, y_train)


def fit_mlp(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
            cfg: ProbeConfig, seed: int) -> torch.nn.Module:
    """MLP probe trained with AdamW on MSE, early-stopped on validation MSE; returns the best weights."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    dim = x_train.shape[1]
    model = torch.nn.Sequential(torch.nn.Linear(dim, cfg.hidden), torch.nn.ReLU(),
                                torch.nn.Dropout(cfg.dropout), torch.nn.Linear(cfg.hidden, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    xt, yt = torch.as_tensor(x_train, dtype=torch.float32), torch.as_tensor(y_train, dtype=torch.float32)
    xv, yv = torch.as_tensor(x_val, dtype=torch.float32), torch.as_tensor(y_val, dtype=torch.float32)
    best, best_state, waited = float("inf"), None, 0
    for _ in range(cfg.max_epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(cfg.batch_size):
            loss = torch.nn.functional.mse_loss(model(xt[idx]).squeeze(-1), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val = float(torch.nn.functional.mse_loss(model(xv).squeeze(-1), yv))
        if val < best - 1e-6:
            best, waited = val, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    model.load_state_dict(best_state)
    return model.eval()


def _predict_mlp(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x, dtype=torch.float32)).squeeze(-1).numpy()


def _standardise_features(x_train: np.ndarray, *others: np.ndarray, active: bool = True) -> list[np.ndarray]:
    if not active:
        return [x_train, *others]
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    return [(x - mu) / sd for x in (x_train, *others)]


def _carve_val(n: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    k = max(1, int(round(n * share)))
    return perm[k:], perm[:k]


def probe_indicator(features: np.ndarray, values: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray,
                    cfg: ProbeConfig, val_idx: np.ndarray | None = None) -> dict:
    """Run MLP (every seed) and ridge for one indicator; returns per-seed and aggregated test metrics.

    `values` are raw indicator values (zeros/missing dropped here); index arrays refer to rows of `features`.
    Without `val_idx`, a share of train is held out for early stopping (per seed). `predictions` holds the test
    rows with true, ridge and MLP (mean over seeds) log values, for figures.
    """
    ok = set(usable_rows(values).tolist())
    train = np.array([i for i in train_idx if i in ok], dtype=int)
    test = np.array([i for i in test_idx if i in ok], dtype=int)
    val = None if val_idx is None else np.array([i for i in val_idx if i in ok], dtype=int)
    if len(train) < 10 or len(test) < 5:
        return {"skipped": f"too few rows with a value (train {len(train)}, test {len(test)})"}
    log_v = np.log(np.asarray(values, dtype=float).clip(min=1e-12))
    shift, mean, std = fit_targets(log_v[train], cfg.refined)
    tgt = Targets(rows=np.asarray(sorted(ok)), log_values=log_v, shift=shift, mean=mean, std=std)
    per_seed, mlp_preds = [], []
    for seed in cfg.seeds:
        fit_rows, val_rows = (train, val) if val is not None and len(val) >= 5 else \
            tuple(train[i] for i in _carve_val(len(train), cfg.val_share, seed))
        xf, xv, xt = _standardise_features(features[fit_rows], features[val_rows], features[test],
                                           active=cfg.standardise_features)
        model = fit_mlp(xf, tgt.standardise(log_v[fit_rows]), xv, tgt.standardise(log_v[val_rows]), cfg, seed)
        mlp_preds.append(tgt.restore(_predict_mlp(model, xt)))
        per_seed.append(metrics(log_v[test], mlp_preds[-1]))
    x_train, x_test = _standardise_features(features[train], features[test])
    ridge = fit_ridge(x_train, tgt.standardise(log_v[train]), cfg.ridge_alphas)
    ridge_pred = tgt.restore(ridge.predict(x_test))
    return {
        "n_train": int(len(train)), "n_test": int(len(test)),
        "mlp": aggregate(per_seed), "mlp_per_seed": per_seed,
        "ridge": metrics(log_v[test], ridge_pred) | {"alpha": float(ridge.alpha_)},
        "predictions": {"rows": test.tolist(), "true_log": log_v[test].tolist(), "ridge_log": ridge_pred.tolist(),
                        "mlp_log": np.mean(mlp_preds, axis=0).tolist()},  # mean over seeds
    }


def aggregate(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """Mean and standard deviation over seeds for every metric (`r2`, `r2_std`, ...)."""
    out: dict[str, float] = {}
    for name in per_seed[0]:
        vals = np.array([m[name] for m in per_seed])
        out[name], out[f"{name}_std"] = float(vals.mean()), float(vals.std())
    return out
