"""The written schema of an eval report (RUN/eval/{checkpoint}/report.json), and the helpers its readers use.

report.json is a contract between one writer (eval/run.py builds it, eval/report.py writes it) and several
readers: report.html and the index in eval/report.py, the Prometheus/JSONL export in eval/metrics.py, the demo's
summary, the bench scripts. Its shape is written down once, here, as TypedDicts; readers go through the helpers
at the bottom (`probe_rows`, `mean_r2`, `margin_rows`, `best_baseline`, ...) instead of walking nested dicts
each their own way. Only the standard library is imported, so anything (a bench script, a notebook) can read
reports without torch.

`problems(report)` checks a report against the schema: every required key present, no key the schema does not
describe, values of the declared types. Reports written before the baselines, split-gap and provenance sections
still read: those sections are optional, and the helpers yield nothing for them.

No `from __future__ import annotations` in this file: on Python 3.11 postponed annotations hide `NotRequired`
from TypedDict, and every key would count as required.
"""

import math
import types
from collections.abc import Iterator
from typing import Any, Literal, NamedTuple, NotRequired, TypedDict, Union, get_args, get_origin, get_type_hints
from typing import is_typeddict

# ----------------------------------------------------------------------------- feature set names

HEADLINE = "image"  # the checkpoint's image embeddings: the headline number
URBANCLIP_SET = "image (UrbanCLIP probe)"  # the same embeddings under configs.eval.urbanclip_probe()
TEXT, IMAGE_TEXT = "text", "image+text"
RANDOM_INIT = "random_init"  # image embeddings of the same architecture with random weights
COLOR_HIST = "color_hist"  # per-channel colour histograms of the pixels
SIMCLR = "simclr"  # image embeddings of an image-only SimCLR twin (`loss.kind: simclr`), when configured
CAPTION_MINILM = "caption_minilm"  # a sentence encoder (all-MiniLM-L6-v2) on the tile's caption sentences
BASELINE_SETS = (RANDOM_INIT, COLOR_HIST, SIMCLR, CAPTION_MINILM)
FEATURE_SETS_ORDER = (HEADLINE, URBANCLIP_SET, TEXT, IMAGE_TEXT, *BASELINE_SETS)

# ----------------------------------------------------------------------------- sections


class Metrics(TypedDict):
    """Test metrics of one probe fit: R2, RMSE, MAE in natural-log units; MAPE (%) on the raw scale."""

    r2: float
    rmse: float
    mae: float
    mape: float


class SeedSpread(Metrics):
    """Mean over probe seeds of each metric, and its standard deviation (`r2_std`, ...)."""

    r2_std: float
    rmse_std: float
    mae_std: float
    mape_std: float


class RidgeMetrics(Metrics):
    alpha: float  # chosen by leave-one-out on train


class Predictions(TypedDict):
    """Test tiles of the headline probe (for the scatter plot and the maps): MLP mean over seeds."""

    true_log: list[float]
    ridge_log: list[float]
    mlp_log: list[float]
    keys: list[str]
    x: list[int]
    y: list[int]


class ProbeResult(TypedDict):
    n_train: int
    n_test: int
    mlp: SeedSpread
    mlp_per_seed: list[Metrics]  # in the order of `report.seeds`
    ridge: RidgeMetrics
    predictions: NotRequired[Predictions]  # headline feature set (every set with probe.keep_predictions: all)


class Skipped(TypedDict):
    skipped: str  # why this probe did not run (e.g. too few rows with a value)


ProbeOutcome = Union[ProbeResult, Skipped]
Regression = dict[str, dict[str, dict[str, ProbeOutcome]]]  # city -> indicator -> feature set -> result


class TransferResult(TypedDict):
    mlp_r2: float
    mlp_r2_std: float
    ridge_r2: float
    n_train: int
    n_test: int


Transfer = dict[str, dict[str, Union[TransferResult, Skipped]]]  # "A->B" (fit on A, test on B) -> indicator


class Margin(TypedDict):
    """The checkpoint's features against the best baseline of one city and indicator (MLP test R2)."""

    features: str  # the checkpoint's feature set compared (the headline image embeddings)
    r2: float  # its mean over probe seeds
    best: str  # the baseline feature set with the highest mean R2
    best_r2: float
    margin: float  # mean over probe seeds of (r2 - best_r2) of the same seed
    margin_std: float  # standard deviation of those per-seed differences
    per_seed: list[float]
    candidates: dict[str, float]  # every baseline that ran -> its mean R2


class CheckpointSource(TypedDict):
    name: str
    uri: str
    step: int | None


class Baselines(TypedDict):
    sets: list[str]  # baseline feature sets probed in this report
    margins: dict[str, dict[str, Margin]]  # city -> indicator
    simclr: NotRequired[CheckpointSource]  # the SimCLR twin probed (absent: not configured, see notes)
    caption_encoder: NotRequired[str]  # the sentence encoder of `caption_minilm`


class Gap(TypedDict):
    """R2(random re-split) - R2(spatial split) of one city and indicator, per probe seed and summarised."""

    spatial_r2: float
    random_r2: float
    random_r2_std: float
    gap: float
    gap_std: float
    per_seed: list[float]
    n_train: int
    n_val: int
    n_test: int


class SplitGap(TypedDict):
    features: str  # the feature set probed on both splits
    seed: int  # seed of the random tile-level re-split
    gaps: dict[str, dict[str, Union[Gap, Skipped]]]  # city -> indicator


# encoder ("checkpoint", "random_init") -> direction ("image_to_text", ...) -> r@k, mean_rank, median_rank, n
Retrieval = dict[str, dict[str, dict[str, float]]]


class ExampleMatch(TypedDict):
    caption: str
    correct: bool


class Example(TypedDict):
    row: int
    key: str
    caption: str
    top: list[ExampleMatch]


class CaptionExample(TypedDict):
    row: int | None
    key: str
    generated: str
    references: list[str]


class Captioning(TypedDict):
    metrics: dict[str, float]  # bleu1..4, rouge_l, cider
    tiles: int
    split: str
    method: str
    settings: dict[str, Any]
    skipped: dict[str, int]
    seconds: float
    examples: list[CaptionExample]


class TrainingData(TypedDict):
    """What the checkpoint was trained on, from its run's config.yaml (when the checkpoint sits in a run)."""

    shards: str  # the run's `run.shards`
    fingerprint: NotRequired[str]  # same formula as `data.fingerprint`: equal numbers = same bytes
    cities: NotRequired[list[str]]
    note: NotRequired[str]  # why fingerprint and cities are missing


class CheckpointInfo(TypedDict):
    name: str
    uri: str
    step: int | None
    published_at: float | None
    trained_on: NotRequired[TrainingData]


class DataInfo(TypedDict):
    """The shards probed."""

    uri: str
    fingerprint: NotRequired[str]
    indicators: NotRequired[list[str]]
    cities: NotRequired[list[str]]
    tiles: NotRequired[dict[str, int]]  # split -> tiles embedded
    skipped: NotRequired[dict[str, dict[str, int]]]  # split -> reason -> samples


class Timing(TypedDict, total=False):
    total_seconds: float
    embed_seconds: dict[str, float]
    caption_features_seconds: float  # the caption baseline's sentence embeddings (cached between reports)
    probe_seconds: float
    caption_seconds: float


class Report(TypedDict):
    status: Literal["running", "ok", "failed"]
    checkpoint: CheckpointInfo
    data: DataInfo
    seeds: list[int]
    protocol: str
    config: dict[str, Any]  # the EvalConfig used
    notes: list[str]
    timing: Timing
    finished_at: NotRequired[float]
    finished_at_utc: NotRequired[str]
    lag_seconds: NotRequired[float | None]  # checkpoint published -> report finished
    reason: NotRequired[str]  # status "failed" only
    worker: NotRequired[str]  # the eval worker that wrote it
    text_features: NotRequired[str]
    regression: NotRequired[Regression]
    transfer: NotRequired[Transfer]
    baselines: NotRequired[Baselines]
    split_gap: NotRequired[SplitGap]
    retrieval: NotRequired[Retrieval]
    examples: NotRequired[list[Example]]
    captioning: NotRequired[Captioning]


# ----------------------------------------------------------------------------- validation

def problems(value: Any, tp: Any = Report, path: str = "report") -> list[str]:
    """Where `value` departs from the schema type `tp`, one line each; empty when it conforms."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return []
    if is_typeddict(tp):
        return _record_problems(value, tp, path)
    if origin in (Union, types.UnionType):
        tried = [problems(value, arg, path) for arg in args]
        return [] if any(not p for p in tried) else min(tried, key=len)
    if origin is Literal:
        return [] if value in args else [f"{path}: {value!r} is not one of {args}"]
    if origin in (dict, list):
        if not isinstance(value, origin):
            return [f"{path}: expected a {origin.__name__}, got {type(value).__name__}"]
        if origin is list:
            return [p for i, v in enumerate(value) for p in problems(v, args[0], f"{path}[{i}]")]
        return [p for k, v in value.items() for p in problems(k, args[0], f"{path} key") + problems(v, args[1],
                                                                                                    f"{path}.{k}")]
    wanted = (int, float) if tp is float else tp  # JSON writes 1.0 as 1.0 but a reader may hand us an int
    if isinstance(value, bool) and tp is not bool or not isinstance(value, wanted):
        return [f"{path}: expected {getattr(tp, '__name__', tp)}, got {type(value).__name__} {value!r:.40}"]
    return []


def _record_problems(value: Any, tp: Any, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({tp.__name__}), got {type(value).__name__}"]
    hints = get_type_hints(tp)
    out = [f"{path}.{k}: missing ({tp.__name__})" for k in sorted(tp.__required_keys__ - set(value))]
    out += [f"{path}.{k}: not in the schema ({tp.__name__})" for k in sorted(set(value) - set(hints))]
    return out + [p for k, v in value.items() if k in hints for p in problems(v, hints[k], f"{path}.{k}")]


# ----------------------------------------------------------------------------- reading

class ProbeRow(NamedTuple):
    city: str
    indicator: str
    features: str
    result: ProbeResult


def ran(result: ProbeOutcome | dict) -> bool:
    """True for a probe that ran (has MLP metrics), False for a skipped or absent one."""
    return "mlp" in result


def probe_rows(report: Report) -> Iterator[ProbeRow]:
    """Every indicator probe that ran: city, indicator, feature set, result."""
    for city, by_indicator in report.get("regression", {}).items():
        for indicator, sets in by_indicator.items():
            for features, result in sets.items():
                if ran(result):
                    yield ProbeRow(city, indicator, features, result)


def probe_result(report: Report, city: str, indicator: str, features: str) -> ProbeResult | None:
    result = report.get("regression", {}).get(city, {}).get(indicator, {}).get(features, {})
    return result if ran(result) else None


def mlp_r2(report: Report, city: str, indicator: str, features: str) -> float | None:
    """Mean MLP test R2 over probe seeds, or None when that probe did not run."""
    result = probe_result(report, city, indicator, features)
    return None if result is None else result["mlp"]["r2"]


def indicators(report: Report) -> list[str]:
    return sorted({i for by_indicator in report.get("regression", {}).values() for i in by_indicator})


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def mean_r2(report: Report, indicator: str, features: str) -> float:
    """MLP test R2 of a feature set averaged over the report's cities (NaN when it ran nowhere)."""
    return _mean([r.result["mlp"]["r2"] for r in probe_rows(report)
                  if r.indicator == indicator and r.features == features])


def margin_rows(report: Report) -> Iterator[tuple[str, str, Margin]]:
    """(city, indicator, margin over the best baseline); nothing for reports without the baselines section."""
    for city, by_indicator in report.get("baselines", {}).get("margins", {}).items():
        for indicator, margin in by_indicator.items():
            yield city, indicator, margin


class BestBaseline(NamedTuple):
    names: str  # the best baseline's name, or the names over several cities ("color_hist/simclr")
    r2: float  # its R2, mean over cities
    margin: float  # the checkpoint's margin over it, mean over cities
    margin_std: float  # the per-seed spread, mean over cities


def best_baseline(report: Report, indicator: str) -> BestBaseline | None:
    """The best baseline of an indicator over the report's cities (index and trend), or None."""
    margins = [m for _, i, m in margin_rows(report) if i == indicator]
    if not margins:
        return None
    names = "/".join(sorted({m["best"] for m in margins}))
    return BestBaseline(names, _mean([m["best_r2"] for m in margins]), _mean([m["margin"] for m in margins]),
                        _mean([m["margin_std"] for m in margins]))


def gap_rows(report: Report) -> Iterator[tuple[str, str, Gap]]:
    """(city, indicator, spatial-vs-random split gap) of every gap probe that ran."""
    for city, by_indicator in report.get("split_gap", {}).get("gaps", {}).items():
        for indicator, gap in by_indicator.items():
            if "gap" in gap:
                yield city, indicator, gap


def recall_rows(report: Report) -> Iterator[tuple[str, str, int, float]]:
    """(encoder, direction, k, recall) of the retrieval probe."""
    for encoder, directions in report.get("retrieval", {}).items():
        for direction, m in directions.items():
            yield from ((encoder, direction, int(k.removeprefix("r@")), v) for k, v in m.items() if k.startswith("r@"))


def recall(report: Report, encoder: str, direction: str, k: int) -> float | None:
    return report.get("retrieval", {}).get(encoder, {}).get(direction, {}).get(f"r@{k}")


def is_ok(report: Report) -> bool:
    return report.get("status") == "ok"


__all__ = ["HEADLINE", "URBANCLIP_SET", "TEXT", "IMAGE_TEXT", "RANDOM_INIT", "COLOR_HIST", "SIMCLR", "CAPTION_MINILM",
           "BASELINE_SETS", "FEATURE_SETS_ORDER", "Metrics", "SeedSpread", "RidgeMetrics", "Predictions",
           "ProbeResult", "Skipped", "ProbeOutcome", "Regression", "TransferResult", "Transfer", "Margin",
           "CheckpointSource", "Baselines", "Gap", "SplitGap", "Retrieval", "Example", "Captioning", "TrainingData",
           "CheckpointInfo", "DataInfo", "Timing", "Report", "problems", "ProbeRow", "ran", "probe_rows",
           "probe_result", "mlp_r2", "indicators", "mean_r2", "margin_rows", "BestBaseline", "best_baseline",
           "gap_rows", "recall_rows", "recall", "is_ok"]
