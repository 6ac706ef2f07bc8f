"""Every query of the shipped Grafana dashboard and alert rules names metrics (and labels)
that the gateway exports, read from the gateway's real metrics registry."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway import metrics as gm
from gateway.stats import StreamStats

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "gridtwin.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

#: series Prometheus makes itself for every target
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
            "or", "unless", "offset", "inf", "nan", "atan2"}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}")
_IDENT = re.compile(r"(?<![\w:$.])([a-zA-Z_:][\w:]*)(\s*\()?")


# --------------------------------------------------------------------------- exported


def _registry_exposition() -> str:
    """/metrics text of a gateway Metrics object with one stream and one of every label,
    and of the fleet's worker and sink (their collectors over real, unconnected objects)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from gateway.bus.conn import BusOptions
    from gateway.bus.metrics import SinkCollector, WorkerCollector
    from gateway.bus.sink import Sink
    from gateway.bus.worker import Worker

    m = gm.Metrics(streams=lambda: [StreamStats("pmu")])
    fleet = CollectorRegistry()
    fleet.register(WorkerCollector(Worker(BusOptions())))
    sink = Sink(BusOptions(), "sqlite:///:memory:")
    sink.last_state["feeder-01"] = 0.0
    fleet.register(SinkCollector(sink))
    return m.exposition().decode() + generate_latest(fleet).decode()


def exported() -> tuple[set[str], dict[str, set[str]]]:
    """(every series name the gateway exports, label names seen per series name)."""
    text = _registry_exposition()
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            name, kind = m[1], m[2]
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}{s}" for s in ("_bucket", "_sum", "_count"))
            elif kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})?\s", line)
        assert m, line
        names.add(m[1])
        found = set(re.findall(r"([a-zA-Z_]\w*)=\"", m[2] or ""))
        labels.setdefault(m[1], set()).update(found - {"le"})
    # labels a family declares but shows no sample of here (children made at run time)
    for name, kind, labs, _doc in getattr(gm, "METRICS", ()):
        series = [name] + ([f"{name}_bucket", f"{name}_sum", f"{name}_count"]
                           if kind == "histogram" else [])
        for s in series:
            if s in names:
                labels.setdefault(s, set()).update(labs)
    return names, labels


# --------------------------------------------------------------------------- PromQL


def metric_refs(expr: str) -> Iterator[tuple[str, set[str]]]:
    """(metric name, label names in its selector) of every series a PromQL expr reads.

    Enough PromQL for dashboards and rules: selectors ``name{...}``, grouping clauses,
    ranges and subqueries ``[...]``, functions (an identifier before ``(``), keywords.
    """
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values)
    sel: list[tuple[str, set[str]]] = []

    def _sel(m: re.Match[str]) -> str:
        lab = set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", m[2]))
        if m[1]:
            sel.append((m[1], lab))
        return " "

    e = _SELECTOR.sub(_sel, e)
    e = re.sub(r"\[[^\]]*\]", " ", e)  # ranges, subqueries
    e = _GROUPING.sub(" ", e)
    yield from sel
    for m in _IDENT.finditer(e):
        name, call = m[1], m[2]
        if call or name in KEYWORDS:
            continue
        yield name, set()


def grouping_labels(expr: str) -> set[str]:
    return {lab.strip() for m in _GROUPING.finditer(expr) for lab in m[2].split(",")
            if lab.strip()}


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) of every panel target and templating query of the dashboard."""
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            for t in p.get("targets", []) or []:
                out.append((f"panel {p.get('title')!r} {t.get('refId')}", t["expr"]))
            walk(p.get("panels", []) or [])

    walk(dash["panels"])
    for v in dash["templating"]["list"]:
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            inner = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q)
            assert inner, q
            out.append((f"variable {v['name']}", inner[1]))
    return out


def alert_exprs() -> tuple[list[tuple[str, str]], set[str]]:
    """(where, expr) of every rule in alerts.yml, and the recording rules' names.

    alerts.yml is read as text (no YAML dependency): every ``expr:`` is a one-liner or a
    ``|`` block indented below it."""
    lines = ALERTS.read_text(encoding="utf-8").splitlines()
    exprs: list[tuple[str, str]] = []
    records: set[str] = set()
    name = "?"
    i = 0
    while i < len(lines):
        ln = lines[i]
        m = re.match(r"\s*- (?:alert|record): (\S+)", ln)
        if m:
            name = m[1]
            if "record:" in ln:
                records.add(name)
        m = re.match(r"(\s*)expr: (.*)$", ln)
        if m:
            body = m[2].strip()
            if body in ("|", ">", "|-", ">-"):
                indent = len(m[1])
                block = []
                i += 1
                while i < len(lines) and (not lines[i].strip()
                                          or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    block.append(lines[i].strip())
                    i += 1
                exprs.append((name, " ".join(block)))
                continue
            exprs.append((name, body))
        i += 1
    return exprs, records


# --------------------------------------------------------------------------- tests


def test_promql_reader_finds_metrics_not_functions_or_labels() -> None:
    refs = list(metric_refs(
        'histogram_quantile(0.99, sum by (le, stream) (rate(a_bucket{instance=~"$i", '
        'stream="x"}[$__rate_interval]))) / on (kind) group_left b * 3 > bool c offset 5m'))
    assert refs == [("a_bucket", {"instance", "stream"}), ("b", set()), ("c", set())]
    assert grouping_labels("sum by (le, stream) (x) / on (kind) y") == {"le", "stream",
                                                                         "kind"}


def test_dashboard_has_the_panels_the_issue_asks_for() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for want in ("per stage", "frame rate per stream", "frame loss per stream",
                 "bad data per meter kind", "deadline misses", "voltage profile band"):
        assert want in titles, want
    exprs = " ".join(e for _, e in dashboard_exprs())
    assert "gridtwin_state_vm_min_pu" in exprs and "gridtwin_state_vm_max_pu" in exprs
    for stage in ("decode", "quality", "handoff", "estimate", "e2e_latency"):
        assert f"gridtwin_{stage}_seconds_bucket" in exprs, stage


def test_every_dashboard_query_names_exported_metrics() -> None:
    names, labels = exported()
    problems = []
    for where, expr in dashboard_exprs():
        refs = list(metric_refs(expr))
        if not refs:
            problems.append(f"{where}: reads no metric: {expr}")
        for name, sel_labels in refs:
            if name not in names:
                problems.append(f"{where}: {name} is not exported by gateway.metrics")
                continue
            known = labels.get(name)
            missing = sel_labels - {"instance", "job"} - (known or set())
            if known is not None and missing:
                problems.append(f"{where}: {name} has no label(s) {sorted(missing)}")
    assert not problems, "\n".join(problems)


def test_dashboard_groups_by_labels_the_metrics_have() -> None:
    _names, labels = exported()
    problems = []
    for where, expr in dashboard_exprs():
        refs = [n for n, _ in metric_refs(expr) if n in labels]
        have = set().union(*(labels[n] for n in refs)) if refs else set()
        wanted = grouping_labels(expr) - {"le", "instance", "job"}
        if refs and wanted - have:
            problems.append(f"{where}: groups by {sorted(wanted - have)}, which none of "
                            f"{sorted(set(refs))} carries")
    assert not problems, "\n".join(problems)


def test_every_alert_rule_names_exported_metrics() -> None:
    names, _ = exported()
    exprs, records = alert_exprs()
    assert len(exprs) >= 10
    problems = [f"{where}: {name} is not exported by gateway.metrics"
                for where, expr in exprs for name, _ in metric_refs(expr)
                if name not in names | records | PROMETHEUS_SERIES]
    assert not problems, "\n".join(problems)


def test_dashboard_is_provisionable() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dash["uid"] == "gridtwin" and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]


def test_grafana_provisioning_finds_prometheus_and_the_dashboard() -> None:
    prov = ROOT / "deploy" / "grafana" / "provisioning"
    ds = (prov / "datasources" / "gridtwin.yml").read_text(encoding="utf-8")
    prom = (ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text(encoding="utf-8")
    assert "apiVersion: 1" in ds and "type: prometheus" in ds
    # the datasource URL is the address Prometheus scrapes itself on in prometheus.yml
    (prom_self,) = re.findall(r'job_name: prometheus\s+static_configs:\s+- targets: '
                              r'\["([^"]+)"\]', prom)
    assert f"url: http://{prom_self}" in ds
    # timeInterval = the gridtwin job's scrape interval, so $__rate_interval spans 4 scrapes
    (job_interval,) = re.findall(r"job_name: gridtwin\s+scrape_interval: (\S+)", prom)
    assert f"timeInterval: {job_interval}" in ds
    dash = (prov / "dashboards" / "gridtwin.yml").read_text(encoding="utf-8")
    (path,) = re.findall(r"path: (\S+)", dash)
    assert f"{path}/gridtwin.json" in dash  # the install line copies the JSON there
