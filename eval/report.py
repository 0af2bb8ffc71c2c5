"""Writing what a person reads: RUN/eval/{checkpoint}/report.json + report.html (+ PNG figures), and
RUN/eval/index.html across checkpoints. Sections of report.html follow report.json (schema:
eval/report_schema.py): indicator probes, the margin over the best baseline, the spatial-vs-random split gap,
transfer, retrieval with examples, and captioning (CoCa checkpoints only).

report.json is written LAST and atomically (temporary name, then move): its presence means the checkpoint is
reported, which is what a restarted worker checks to skip it. A failed evaluation also writes a report.json
(status "failed" and the reason), so a broken checkpoint is reported once and then skipped.

The index is rebuilt from every report.json under RUN/eval/ each time a worker writes a report, so it never
depends on which worker wrote what. It shows, per indicator, the image probe beside the best baseline (and the
random-init twin); reports older than the baselines section show a dash there.
"""

from __future__ import annotations

import base64
import json
from html import escape

import numpy as np

from data_shards.run_layout import EVAL_DIR
from data_shards.storage import join, url_to_fs, write_bytes_atomic
from eval.figures import residual_map, scatter, thumbnail_png, trend
from eval.report_schema import (FEATURE_SETS_ORDER, HEADLINE, RANDOM_INIT, Baselines, Report, SplitGap,
                                best_baseline, indicators, is_ok, mean_r2, probe_rows, recall)

REPORT_JSON, REPORT_HTML, INDEX_HTML, TREND_PNG = "report.json", "report.html", "index.html", "trend.png"
_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.4em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}.bad{color:#b00}
.note{color:#555;font-size:13px}img.fig{max-width:100%}img.thumb{image-rendering:pixelated;width:96px}
.hit{color:#080;font-weight:bold}"""
_METRIC_LABELS = {"bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4", "rouge_l": "ROUGE-L",
                  "cider": "CIDEr"}


def report_uri(eval_root: str, name: str) -> str:
    return join(eval_root, name, REPORT_JSON)


def read_json(uri: str) -> dict | None:
    """A JSON object from storage, or None when missing or not (yet) valid."""
    fs, path = url_to_fs(uri)
    try:
        data = json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def has_report(eval_root: str, name: str) -> bool:
    fs, path = url_to_fs(report_uri(eval_root, name))
    return fs.exists(path)


# ----------------------------------------------------------------------------- one checkpoint

def _fig(out: str, name: str, png: bytes) -> str:
    write_bytes_atomic(join(out, name), png)
    return name


def _figures(out: str, report: Report) -> list[tuple[str, str]]:
    """Write the scatter and map PNGs; (caption, file name) pairs for the page."""
    panels, made = [], []
    for row in probe_rows(report):
        if row.features != HEADLINE or "predictions" not in row.result:
            continue
        p, title = row.result["predictions"], f"{row.city} / {row.indicator}"
        panels.append({"title": title, "true": p["true_log"], "pred": p["mlp_log"], "r2": row.result["mlp"]["r2"]})
        made.append((f"{title}: test tiles on the grid (image MLP probe)",
                     _fig(out, f"map_{row.city}_{row.indicator}.png".replace(" ", "_"),
                          residual_map(title, p["x"], p["y"], p["true_log"], p["mlp_log"]))))
    if panels:
        made.insert(0, ("predicted vs true on the test split (image MLP probe, mean over seeds)",
                        _fig(out, "scatter.png", scatter(panels))))
    return made


def _num(v: float | None, fmt: str = ".3f") -> str:
    return "–" if v is None or not np.isfinite(v) else format(v, fmt)


def _probe_cell(r: dict) -> str:
    """MLP test R2 (mean ± std over seeds), with ridge R2, MLP RMSE and row counts below."""
    if not r:
        return "<td>–</td>"
    if "skipped" in r:
        return f"<td>{escape(r['skipped'])}</td>"
    m = r["mlp"]
    return (f"<td class=num>{_num(m['r2'])} ± {_num(m['r2_std'])}<br><span class=note>ridge {_num(r['ridge']['r2'])}, "
            f"RMSE {_num(m['rmse'])}, n={r['n_train']}/{r['n_test']}</span></td>")


def _regression_table(regression: dict) -> str:
    sets = [s for s in FEATURE_SETS_ORDER if any(s in r for c in regression.values() for r in c.values())]
    head = "".join(f"<th>{escape(s)}</th>" for s in sets)
    rows = [f"<tr><td>{escape(city)}</td><td>{escape(ind)}</td>"
            f"{''.join(_probe_cell(res.get(s, {})) for s in sets)}</tr>"
            for city, by_ind in regression.items() for ind, res in by_ind.items()]
    return (f"<table><tr><th>city</th><th>indicator</th>{head}</tr>{''.join(rows)}</table>"
            "<p class=note>Test R² of the MLP probe (mean ± std over seeds) on log values; below it the ridge "
            "baseline's R², the MLP's RMSE and rows train/test.</p>")


def _pm(mean: float, std: float) -> str:
    return f"{_num(mean, '+.3f')} ± {_num(std)}"


def _baselines_table(section: Baselines) -> str:
    """Per city and indicator: the image probe, the best baseline, the margin (per-seed spread), all baselines."""
    rows = [f"<tr><td>{escape(city)}</td><td>{escape(ind)}</td><td class=num>{_num(m['r2'])}</td>"
            f"<td>{escape(m['best'])}</td><td class=num>{_num(m['best_r2'])}</td>"
            f"<td class=num{' bad' if m['margin'] < 0 else ''}><b>{_pm(m['margin'], m['margin_std'])}</b></td>"
            f"<td class=note>{', '.join(f'{escape(k)} {_num(v)}' for k, v in m['candidates'].items())}</td></tr>"
            for city, by_ind in section["margins"].items() for ind, m in by_ind.items()]
    return ("<table><tr><th>city</th><th>indicator</th><th>image R²</th><th>best baseline</th><th>its R²</th>"
            f"<th>margin</th><th>every baseline's R²</th></tr>{''.join(rows)}</table><p class=note>Test R² of the "
            "MLP probe (mean over probe seeds). Margin: image R² minus the best baseline's R², per probe seed, as "
            "mean ± std over seeds (the spread of the probe fits only: one checkpoint, one test split). Baselines: "
            f"{escape(', '.join(section['sets']))}.</p>")


def _split_gap_table(section: SplitGap) -> str:
    rows = [f"<tr><td>{escape(city)}</td><td>{escape(ind)}</td>"
            + (f"<td colspan=4>{escape(g['skipped'])}</td>" if "skipped" in g else
               f"<td class=num>{_num(g['spatial_r2'])}</td><td class=num>{_num(g['random_r2'])} ± "
               f"{_num(g['random_r2_std'])}</td><td class=num><b>{_pm(g['gap'], g['gap_std'])}</b></td>"
               f"<td class=num>{g['n_train']}/{g['n_val']}/{g['n_test']}</td>") + "</tr>"
            for city, by_ind in section["gaps"].items() for ind, g in by_ind.items()]
    return ("<table><tr><th>city</th><th>indicator</th><th>spatial split R²</th><th>random split R²</th>"
            f"<th>gap (random − spatial)</th><th>rows train/val/test</th></tr>{''.join(rows)}</table>"
            f"<p class=note>The {escape(section['features'])} MLP probe on the shards' spatial-block split, and on "
            f"a random tile-level re-split of the same rows with the same sizes (seed {section['seed']}). A positive "
            "gap is what a random split would overstate: neighbouring tiles leak into test.</p>")


def _retrieval_table(retrieval: dict) -> str:
    rows = []
    for encoder, dirs in retrieval.items():
        for direction, m in dirs.items():
            ks = [k for k in m if k.startswith("r@")]
            cells = "".join(f"<td class=num>{_num(m[k])}</td>" for k in ks)
            rows.append(f"<tr><td>{escape(encoder)}</td><td>{escape(direction.replace('_', ' '))}</td>{cells}"
                        f"<td class=num>{_num(m['mean_rank'], '.1f')}</td><td class=num>{_num(m['median_rank'], '.0f')}"
                        f"</td><td class=num>{m['n']}</td></tr>")
    ks = [k for k in next(iter(next(iter(retrieval.values())).values())) if k.startswith("r@")] if retrieval else []
    head = "".join(f"<th>{escape(k.upper())}</th>" for k in ks)
    return (f"<table><tr><th>encoder</th><th>direction</th>{head}<th>mean rank</th><th>median rank</th>"
            f"<th>pool</th></tr>{''.join(rows)}</table>")


def _tile_cell(ex: dict, thumbs: dict[int, np.ndarray]) -> str:
    """The example's thumbnail (inline PNG) above its key."""
    img = thumbs.get(ex["row"])
    src = ("data:image/png;base64," + base64.b64encode(thumbnail_png(img)).decode()) if img is not None else ""
    return f"<td><img class=thumb src='{src}'><br><span class=note>{escape(ex['key'])}</span></td>"


def _examples(examples: list[dict], thumbs: dict[int, np.ndarray]) -> str:
    rows = []
    for ex in examples:
        top = "".join(f"<li{' class=hit' if t['correct'] else ''}>{escape(t['caption'])}</li>" for t in ex["top"])
        rows.append(f"<tr>{_tile_cell(ex, thumbs)}<td><ol>{top}</ol></td><td class=note>{escape(ex['caption'])}"
                    "</td></tr>")
    return ("<table><tr><th>tile (model input)</th><th>top captions of the test split (green = its own)</th>"
            f"<th>its own caption</th></tr>{''.join(rows)}</table>")


def _captioning(section: dict, thumbs: dict[int, np.ndarray]) -> str:
    """Caption metrics of the CoCa checkpoint, then example tiles: generated caption vs reference sentences."""
    metrics = section["metrics"]
    head = "".join(f"<th>{_METRIC_LABELS.get(m, escape(m))}</th>" for m in metrics)
    cells = "".join(f"<td class=num>{_num(v)}</td>" for v in metrics.values())
    settings = ", ".join(f"{k} {v}" for k, v in section["settings"].items())
    rows = "".join(f"<tr>{_tile_cell(ex, thumbs)}<td>{escape(ex['generated']) or '<i>(empty)</i>'}</td>"
                   f"<td class=note><ul>{''.join(f'<li>{escape(s)}</li>' for s in ex['references'])}</ul></td></tr>"
                   for ex in section["examples"])
    return (f"<table><tr>{head}<th>tiles</th></tr><tr>{cells}<td class=num>{section['tiles']}</td></tr></table>"
            f"<p class=note>{escape(section['method'])} ({escape(settings)}); scored against each tile's reference "
            "sentences with pycocoevalcap's BLEU, ROUGE-L and CIDEr on our own word tokenization "
            "(eval/caption_metrics.py).</p>"
            + (f"<table><tr><th>tile (model input)</th><th>generated</th><th>reference sentences</th></tr>{rows}"
               "</table>" if rows else ""))


def _transfer_table(transfer: dict) -> str:
    rows = [f"<tr><td>{escape(pair)}</td><td>{escape(ind)}</td>"
            + (f"<td colspan=3>{escape(r['skipped'])}</td>" if "skipped" in r else
               f"<td class=num>{_num(r['mlp_r2'])} ± {_num(r['mlp_r2_std'])}</td><td class=num>{_num(r['ridge_r2'])}"
               f"</td><td class=num>{r['n_train']}/{r['n_test']}</td>") + "</tr>"
            for pair, by_ind in transfer.items() for ind, r in by_ind.items()]
    return ("<table><tr><th>fit -> test</th><th>indicator</th><th>MLP R²</th><th>ridge R²</th><th>rows</th></tr>"
            f"{''.join(rows)}</table>")


def _trained_on(trained: dict | None) -> str | None:
    if trained is None:
        return None
    if "fingerprint" not in trained:
        return f"unknown ({trained.get('note', '')})"
    return f"{', '.join(trained.get('cities', []))} ({trained['shards']}, fingerprint {trained['fingerprint']})"


def _summary(report: Report) -> str:
    ck, data, timing = report["checkpoint"], report.get("data", {}), report.get("timing", {})
    tiles = ", ".join(f"{k} {v}" for k, v in data.get("tiles", {}).items()) or None
    items = [("checkpoint", ck["uri"]), ("step", ck.get("step")), ("status", report["status"]),
             ("evaluated", report.get("finished_at_utc")),
             ("publish → report lag", _num(report.get("lag_seconds"), ".1f") + " s"),
             ("eval time", _num(timing.get("total_seconds"), ".1f") + " s"),
             ("shards", data.get("uri")), ("data fingerprint", data.get("fingerprint")), ("tiles per split", tiles),
             ("trained on", _trained_on(ck.get("trained_on"))),
             ("seeds", report.get("seeds")), ("text features", report.get("text_features")),
             ("protocol", report.get("protocol"))]
    lines = "".join(f"<li><b>{escape(k)}</b>: {escape(str(v))}</li>" for k, v in items if v is not None)
    return f"<ul>{lines}</ul>"


def render_html(report: Report, figs: list[tuple[str, str]], thumbs: dict[int, np.ndarray]) -> str:
    parts = [f"<h1>cityscale eval: {escape(report['checkpoint']['name'])}</h1>", _summary(report)]
    if report["status"] != "ok":
        parts.append(f"<p class=bad><b>failed</b>: {escape(report.get('reason', ''))}</p>")
    parts += [f"<p class=note>{escape(n)}</p>" for n in report.get("notes", [])]
    if report.get("regression"):
        parts += ["<h2>Indicator probes (test split)</h2>", _regression_table(report["regression"])]
    if report.get("baselines", {}).get("margins"):
        parts += ["<h2>Against the best baseline (test split)</h2>", _baselines_table(report["baselines"])]
    if report.get("split_gap", {}).get("gaps"):
        parts += ["<h2>Spatial vs random split</h2>", _split_gap_table(report["split_gap"])]
    if report.get("transfer"):
        parts += ["<h2>Cross-city transfer (image features)</h2>", _transfer_table(report["transfer"])]
    parts += [f"<h3>{escape(cap)}</h3><img class=fig src='{escape(name)}'>" for cap, name in figs]
    if report.get("retrieval"):
        parts += ["<h2>Image ↔ text retrieval (test split)</h2>", _retrieval_table(report["retrieval"])]
    if report.get("examples"):
        parts += ["<h3>Examples</h3>", _examples(report["examples"], thumbs)]
    if report.get("captioning"):
        parts += [f"<h2>Captioning ({escape(report['captioning']['split'])} split)</h2>",
                  _captioning(report["captioning"], thumbs)]
    body = "\n".join(parts)
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{escape(report['checkpoint']['name'])}</title>"
            f"<style>{_STYLE}</style></head><body>{body}<p class=note><a href='../{INDEX_HTML}'>all checkpoints</a>"
            "</p></body></html>")


def write_report(out: str, report: Report, thumbs: dict[int, np.ndarray] | None = None) -> None:
    """Figures and report.html first, report.json last (its presence marks the checkpoint as reported)."""
    figs = _figures(out, report) if report["status"] == "ok" else []
    write_bytes_atomic(join(out, REPORT_HTML), render_html(report, figs, thumbs or {}).encode())
    write_bytes_atomic(join(out, REPORT_JSON), (json.dumps(report, indent=1) + "\n").encode())


# ----------------------------------------------------------------------------- index across checkpoints

def read_reports(eval_root: str) -> list[Report]:
    """Every report.json under RUN/eval/*/, by step (reports without a step last)."""
    fs, root = url_to_fs(eval_root)
    try:
        folders = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(root, detail=True)
                   if e.get("type") == "directory"]
    except FileNotFoundError:
        return []
    reports = [r for r in (read_json(report_uri(eval_root, f)) for f in folders) if r is not None]
    return sorted(reports, key=lambda r: (r["checkpoint"].get("step") is None, r["checkpoint"].get("step") or 0))


def _nan(v: float | None) -> float:
    return float("nan") if v is None else v


def _best_label(ok: list[Report], indicator: str) -> str:
    names = sorted({n for r in ok if (b := best_baseline(r, indicator)) for n in b.names.split("/")})
    return f"best baseline: {'/'.join(names)}" if names else "best baseline"


def _trend_series(ok: list[Report]) -> tuple[dict, dict, dict]:
    """Image R2 per indicator over steps; its references (best baseline, random init); retrieval R@k."""
    names = sorted({i for r in ok for i in indicators(r)})
    series = {i: [mean_r2(r, i, HEADLINE) for r in ok] for i in names}
    references = {i: {_best_label(ok, i): [_nan(b and b.r2) for b in (best_baseline(r, i) for r in ok)],
                      "random init": [mean_r2(r, i, RANDOM_INIT) for r in ok]} for i in names}
    retrieval = {f"{d.replace('_to_', '→')} R@{k}": [_nan(recall(r, "checkpoint", d, k)) for r in ok]
                 for d in ("image_to_text", "text_to_image") for k in (1, 5)}
    return series, references, retrieval


def _index_cell(r: Report, indicator: str) -> str:
    best = best_baseline(r, indicator)
    versus = (f"best {escape(best.names)} {_num(best.r2)}, margin {_pm(best.margin, best.margin_std)}"
              if best else "best baseline –")
    return (f"<td class=num>{_num(mean_r2(r, indicator, HEADLINE))}<br><span class=note>{versus}; random "
            f"{_num(mean_r2(r, indicator, RANDOM_INIT))}</span></td>")


def _index_row(r: Report, names: list[str]) -> str:
    ck = r["checkpoint"]
    link = f"<a href='{escape(ck['name'])}/{REPORT_HTML}'>{escape(ck['name'])}</a>"
    if not is_ok(r):
        return f"<tr><td>{link}</td><td>{ck.get('step')}</td><td colspan={len(names) + 3} class=bad>failed: " \
               f"{escape(r.get('reason', ''))}</td></tr>"
    cells = "".join(_index_cell(r, i) for i in names)
    return (f"<tr><td>{link}</td><td>{ck.get('step')}</td>{cells}"
            f"<td class=num>{_num(recall(r, 'checkpoint', 'image_to_text', 1))}</td>"
            f"<td class=num>{_num(recall(r, 'checkpoint', 'text_to_image', 1))}</td>"
            f"<td class=num>{_num(r.get('lag_seconds'), '.1f')}</td></tr>")


def write_index(eval_root: str) -> int:
    """Rebuild RUN/eval/index.html (+ trend.png) from every report; returns the number of reports listed."""
    reports = read_reports(eval_root)
    ok = [r for r in reports if is_ok(r) and r["checkpoint"].get("step") is not None]
    series, references, retrieval = _trend_series(ok)
    trend_img = ""
    if ok:
        png = trend([r["checkpoint"]["step"] for r in ok], series, references, retrieval)
        trend_img = f"<img class=fig src='{_fig(eval_root, TREND_PNG, png)}'>"
    names = list(series)
    head = "".join(f"<th>{escape(i)} R²</th>" for i in names)
    rows = "".join(_index_row(r, names) for r in reports)
    html = (f"<!doctype html><html><head><meta charset=utf-8><title>cityscale eval</title><style>{_STYLE}</style>"
            f"</head><body><h1>cityscale eval: {len(reports)} checkpoint reports</h1>{trend_img}"
            f"<table><tr><th>checkpoint</th><th>step</th>{head}<th>image→text R@1</th><th>text→image R@1</th>"
            f"<th>lag (s)</th></tr>{rows}</table><p class=note>R²: test split, image MLP probe, mean over cities. "
            "Below it the best baseline of that report (the highest R² among the random-init twin, colour "
            "histograms, the SimCLR twin and the caption-only encoder), the image probe's margin over it (mean ± "
            "std of the per-seed differences) and the random-init twin of the same architecture.</p></body></html>")
    write_bytes_atomic(join(eval_root, INDEX_HTML), html.encode())
    return len(reports)


__all__ = ["EVAL_DIR", "REPORT_JSON", "REPORT_HTML", "INDEX_HTML", "report_uri", "has_report", "render_html",
           "write_report", "read_reports", "write_index"]
