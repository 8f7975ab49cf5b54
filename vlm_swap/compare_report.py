"""The report of ``vlm-swap compare``: accuracies with intervals, forgetting, costs, and what is shown.

Every figure is computed here from the models' own outcomes on the rows (each model's
``scores.json``: one 0/1 per image question and per text question, the text perplexity), from
the training runs' own summaries (trainable parameters, rows kept) and the arms' clocks.

* image / text accuracy: the mean over rows; 95% interval: percentile bootstrap over rows.
* forgetting of an arm: ``(source - arm) / source`` on text accuracy (0: the text ability is kept).
* forgetting reduction of a perceiver arm against another arm ``V``: ``(F_V - F_perceiver) / F_V``
  (the DPA paper's "32.9% less forgetting"); defined when ``V`` forgets (``F_V > 0``), its interval
  over the resamples in which ``V`` forgets.

The bootstrap is paired: every resample draws the same rows for every model, so the ratios between
models get intervals too. It is written out with numpy (a few lines) because scipy, whose
``stats.bootstrap`` does it, is not a dependency. The findings say plainly when two intervals overlap:
then the difference between the two is not shown by these rows.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from .errors import VlmSwapError

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0
INDICES_PER_CHUNK = 2**22  # row indices drawn at a time: memory stays bounded for large eval sets


def image_outcomes(scores: dict) -> list[int]:
    """Every image row's 0/1 outcome: open-ended rows, then multiple-choice rows."""
    return list(scores.get("correct", [])) + list(scores.get("choice", {}).get("correct", []))


def resampled_means(outcomes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """name -> [RESAMPLES] means over rows drawn with replacement, the same rows for every name."""
    names = list(outcomes)
    rows = {len(v) for v in outcomes.values()}
    if len(rows) != 1:
        raise VlmSwapError(f"the models were scored on different numbers of rows ({sorted(rows)}); cannot pair them")
    n = rows.pop()
    if n == 0:
        return {k: np.full(RESAMPLES, np.nan) for k in names}
    stacked = np.asarray([outcomes[k] for k in names], dtype=np.float64)  # [M, n]
    rng = np.random.default_rng(SEED)
    means = np.empty((len(names), RESAMPLES))  # [M, B]
    chunk = max(1, INDICES_PER_CHUNK // n)
    for a in range(0, RESAMPLES, chunk):
        b = min(a + chunk, RESAMPLES)
        idx = rng.integers(0, n, size=(b - a, n))  # [b - a, n]
        means[:, a:b] = stacked[:, idx].mean(-1)
    return dict(zip(names, means, strict=True))


def interval(samples: np.ndarray) -> list[float] | None:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return None
    tail = 100 * (1 - CONFIDENCE) / 2
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return [float(lo), float(hi)]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, num / den, np.nan)


def _forgetting(text: dict[str, np.ndarray], name: str) -> np.ndarray:
    """[RESAMPLES] forgetting of ``name`` against the source, on the same resampled rows."""
    return _ratio(text["source"] - text[name], text["source"])


def _stat(outcomes: list[int], samples: np.ndarray) -> dict[str, Any]:
    return {"accuracy": float(np.mean(outcomes)) if outcomes else None, "ci95": interval(samples), "n": len(outcomes)}


def build_report(exp, models: list[dict]) -> dict[str, Any]:
    """``models``: the source first, then the arms (``compare._model`` entries)."""
    source = models[0]
    image = resampled_means({m["name"]: image_outcomes(m["scores"]) for m in models})
    has_text = "text" in source["scores"]
    text = resampled_means({m["name"]: m["scores"]["text"]["correct"] for m in models}) if has_text else {}
    entries = []
    for m in models:
        e: dict[str, Any] = {"name": m["name"], "role": "arm" if "encoder" in m else "source", "path": m["path"]}
        e["image"] = _stat(image_outcomes(m["scores"]), image[m["name"]])
        if has_text:
            t = m["scores"]["text"]
            e["text"] = {**_stat(t["correct"], text[m["name"]]), "perplexity": t["perplexity"]}
        if "encoder" in m:
            e.update(_arm_facts(m))
            if has_text:
                src, arm = source["scores"]["text"], m["scores"]["text"]
                e["forgetting"] = {
                    "value": (src["accuracy"] - arm["accuracy"]) / src["accuracy"] if src["accuracy"] else None,
                    "ci95": interval(_forgetting(text, m["name"])),
                }
                e["perplexity_change"] = (arm["perplexity"] - src["perplexity"]) / src["perplexity"]
        if "lmms" in m:
            e["lmms"] = m["lmms"]
        e["eval_s"] = m["scores"].get("eval_s")
        entries.append(e)
    reductions = _reductions(entries, text) if has_text else []
    return {
        "experiment": asdict(exp),
        "confidence": CONFIDENCE,
        "resamples": RESAMPLES,
        "models": entries,
        "forgetting_reduction": reductions,
        "findings": _findings(entries, reductions),
    }


def _arm_facts(m: dict) -> dict[str, Any]:
    from .compare_clock import train_seconds

    stages = m["run_summary"].get("stages", [])
    upgrade_s, train_s = m["clock"].get("upgrade_s", 0.0), train_seconds(m["clock"])
    return {
        "encoder": m["encoder"],
        "upgraded": m["upgraded"],
        "trainable_params": {s["name"]: sum(s["trainable"].values()) for s in stages},
        "train_rows": m["run_summary"].get("data_report", {}).get("kept"),
        "resumed": any(s.get("resumed_from") or s.get("skipped") for s in stages),
        "wall_s": {"upgrade": upgrade_s, "train": train_s, "total": upgrade_s + train_s},
    }


def _reductions(entries: list[dict], text: dict[str, np.ndarray]) -> list[dict]:
    """Each perceiver arm against each other arm: how much less it forgets."""
    arms = [e for e in entries if e["role"] == "arm"]
    out = []
    for p in (a for a in arms if a["encoder"].startswith("perceiver:")):
        for v in (a for a in arms if not a["encoder"].startswith("perceiver:")):
            fp, fv = p["forgetting"]["value"], v["forgetting"]["value"]
            value = (fv - fp) / fv if fp is not None and fv is not None and fv > 0 else None
            fp_s, fv_s = _forgetting(text, p["name"]), _forgetting(text, v["name"])
            fv_s = np.where(fv_s > 0, fv_s, np.nan)  # a reduction is defined where the other arm forgets
            reduction = {"arm": p["name"], "against": v["name"], "value": value}
            out.append({**reduction, "ci95": interval((fv_s - fp_s) / fv_s) if value is not None else None})
    return out


def _fmt(stat: dict | None, key: str = "accuracy") -> str:
    if not stat or stat.get(key) is None:
        return "-"
    ci = stat.get("ci95")
    return f"{stat[key]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _overlap(what: str, a: dict, b: dict, key: str, field: str = "accuracy") -> str | None:
    """Whether the intervals of ``a[key]`` and ``b[key]`` overlap, said plainly."""
    stat_a, stat_b = a.get(key), b.get(key)
    if not stat_a or not stat_b or stat_a.get("ci95") is None or stat_b.get("ci95") is None:
        return None
    (lo_a, hi_a), (lo_b, hi_b) = stat_a["ci95"], stat_b["ci95"]
    head = f"{what}: {a['name']} {_fmt(stat_a, field)} vs {b['name']} {_fmt(stat_b, field)}"
    if lo_a <= hi_b and lo_b <= hi_a:
        return f"{head}: the intervals overlap, so the difference is not shown."
    higher = a if stat_a[field] > stat_b[field] else b
    return f"{head}: {higher['name']} is higher and the intervals do not overlap."


def _findings(entries: list[dict], reductions: list[dict]) -> list[str]:
    source, arms = entries[0], entries[1:]
    out = []
    for i, a in enumerate(arms):
        for b in arms[i + 1 :]:
            out.append(_overlap("image accuracy", a, b, "image"))
            out.append(_overlap("forgetting", a, b, "forgetting", "value"))
    for a in arms:
        out.append(_overlap("image accuracy", a, source, "image"))
    for r in reductions:
        head = f"forgetting reduction of {r['arm']} against {r['against']}"
        if r["value"] is None:
            out.append(f"{head}: undefined, {r['against']} did not forget (nothing to reduce).")
            continue
        ci = r["ci95"]
        shown = ci is not None and (ci[0] > 0 or ci[1] < 0)
        span = f" [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else ""
        tail = "." if shown else ": the interval includes 0, so the reduction is not shown."
        out.append(f"{head}: {r['value']:.1%}{span}{tail}")
    rows = {a["name"]: a["train_rows"] for a in arms}
    if len(set(rows.values())) > 1:
        out.append(f"the arms trained on different numbers of rows {rows}: samples too long for an arm were dropped.")
    return [f for f in out if f]


def _seconds(s: float) -> str:
    return f"{s:.1f}s" if s < 60 else f"{int(s // 60)}m{s % 60:02.0f}s"


def table(report: dict) -> tuple[list[str], list[list[str]]]:
    """The report's table: a header and one row per model (markdown and console render the same cells)."""
    header = ["model", "image acc. [95% CI]", "text acc. [95% CI]", "text ppl", "forgetting [95% CI]"]
    header += ["wall (upgrade + train)", "trainable params"]
    rows = []
    for e in report["models"]:
        text = e.get("text")
        wall = e.get("wall_s")
        params = " / ".join(f"{k} {v:,}" for k, v in e.get("trainable_params", {}).items())
        rows.append(
            [
                e["name"] + (" (resumed)" if e.get("resumed") else ""),
                _fmt(e["image"]),
                _fmt(text),
                f"{text['perplexity']:.3f}" if text else "-",
                _fmt(e.get("forgetting"), "value"),
                f"{_seconds(wall['total'])} ({_seconds(wall['upgrade'])} + {_seconds(wall['train'])})" if wall else "-",
                params or "-",
            ]
        )
    return header, rows


def lmms_table(report: dict) -> tuple[list[str], list[list[str]]] | None:
    """lmms-eval scores (task/metric columns), when the comparison ran any."""
    columns = list(dict.fromkeys((t, k) for e in report["models"] for t, ms in e.get("lmms", {}).items() for k in ms))
    if not columns:
        return None
    rows = []
    for e in report["models"]:
        scores = e.get("lmms", {})
        rows.append([e["name"], *(_number(scores.get(t, {}).get(k)) for t, k in columns)])
    return ["model", *(f"{t} {k}" for t, k in columns)], rows


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "-"


def markdown(report: dict) -> str:
    exp = report["experiment"]
    lines = [
        "# vlm-swap compare",
        "",
        f"Source `{exp['source']}`, recipe `{exp['recipe']}`"
        + (f" ({', '.join(exp['overrides'])})" if exp["overrides"] else "")
        + f", trained on `{exp['data']}`, scored on `{exp['eval_data']}`"
        + (f" and `{exp['text_data']}`" if exp["text_data"] else "")
        + f". Intervals: {report['confidence']:.0%} percentile bootstrap over rows ({report['resamples']} resamples).",
        "",
    ]
    for got in (table(report), lmms_table(report)):
        if got is None:
            continue
        header, rows = got
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
    lines += [f"- `{e['name']}`: `{e['encoder']}`, run `{e['path']}`" for e in report["models"] if "encoder" in e]
    lines += ["", *(f"- {f}" for f in report["findings"])]
    return "\n".join(lines) + "\n"


def print_report(report: dict, console) -> None:
    from rich.table import Table

    for got in (table(report), lmms_table(report)):
        if got is not None:
            header, rows = got
            t = Table(*header, title="vlm-swap compare")
            for r in rows:
                t.add_row(*r)
            console.print(t)
    for f in report["findings"]:
        console.print(f"- {f}", highlight=False)


def plot(report: dict):
    """Grouped bars: one group per metric (image, text accuracy), one bar per model, 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in ("image", "text") if all(m in e for e in report["models"])]
    models = report["models"]
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for i, e in enumerate(models):
        values = np.array([e[m]["accuracy"] or 0.0 for m in metrics])  # [metrics]
        ci = np.array([e[m]["ci95"] or [v, v] for m, v in zip(metrics, values, strict=True)])  # [metrics, 2]
        err = np.stack([values - ci[:, 0], ci[:, 1] - values])  # [2, metrics]: below, above
        xs = np.arange(len(metrics)) + (i - (len(models) - 1) / 2) * width
        ax.bar(xs, values, width, yerr=err, capsize=4, label=e["name"])
    ax.set_xticks(np.arange(len(metrics)), [f"{m} accuracy" for m in metrics])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"accuracy ({report['confidence']:.0%} interval)")
    ax.set_title(f"vlm-swap compare (recipe {report['experiment']['resolved_recipe']['name']})")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def write_report(out, report: dict) -> None:
    """``report.json``, ``report.md`` and ``compare.png``, each written atomically."""
    from .checkpoints.atomic import write_figure, write_json, write_text

    write_json(out / "report.json", report)
    write_text(out / "report.md", markdown(report))
    write_figure(plot(report), out / "compare.png")
