"""docs/operations.md and docs/grafana-dashboard.json stay true to the code: every metric and
label their PromQL names is in a real ``/metrics`` scrape (and every label value an outcome,
status class, reason or bucket the code can produce), the metrics table lists exactly what is
exported, and every limit in the tables is a TOML key with the default ``settings.py`` gives."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dispatcher import outcomes
from dispatcher.forwarding.upstream import UpstreamFailure
from dispatcher.metrics import _STATUS_LABELS, DURATION_BUCKETS, OVERHEAD_BUCKETS
from dispatcher.settings import _LIMIT_KEYS, _PROXY_KEYS, Limits, ProxySettings
from tests.forwarding.conftest import serve
from tests.forwarding.upstreams import RecordingUpstream, echo

from .conftest import get_admin

ROOT: Final = Path(__file__).resolve().parents[2]
OPERATIONS: Final = ROOT / "docs" / "operations.md"
DASHBOARD: Final = ROOT / "docs" / "grafana-dashboard.json"

Exported = Mapping[str, frozenset[str]]
"""Sample name (``dispatcher_requests_total``, ``..._bucket``) -> the labels it carries."""

TARGET_LABELS: Final = frozenset({"instance", "job"})
"""Added by Prometheus to every series it scrapes."""
GRAFANA_VARIABLES: Final = {"$__rate_interval": "5m", "$environment": "development"}
FUNCTIONS: Final = frozenset(
    {"sum", "avg", "min", "max", "count", "rate", "irate", "increase", "histogram_quantile",
     "clamp_min", "clamp_max", "abs", "vector", "scalar", "topk", "bottomk", "label_values"}
)  # fmt: skip
OPERATOR_WORDS: Final = frozenset({"and", "or", "unless", "bool", "offset"})
PROXY_SETTINGS_THAT_ARE_NOT_LIMITS: Final = frozenset({"forwarded_headers", "trusted_proxies"})

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)?\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_FILTER = re.compile(r"\b(?:and|unless)\b")
_RANGE = re.compile(r"\[[^\]]*\]")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NUMBER = re.compile(r"(?<![\w:])\d+(?:\.\d+)?(?:e[+-]?\d+)?")
_IDENTIFIER = re.compile(r"[a-zA-Z_:][\w:]*")
_CODE_SPAN = re.compile(r"`([^`\n]*dispatcher_\w+[^`\n]*)`")
_METRIC_WORD = re.compile(r"\bdispatcher_[a-z_]+\b")
_TABLE_ROW = re.compile(r"^\|(.+)\|\s*$", re.MULTILINE)
_DEFAULT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(KiB|MiB|bytes|s)?\b")
_UNITS: Final = {"KiB": 1024, "MiB": 1024 * 1024}
_CONFIG_KEY = re.compile(r"\b(limits|proxy)\.([a-z_]+)\b")


# --- What a running dispatcher exports -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family of the scrape, named as PromQL names it."""

    name: str
    kind: str
    labels: frozenset[str]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _scrape_after_traffic(tmp_path: Path) -> str:
    """``/metrics`` after a routed request, both 404s, a 502 and a health check: every family
    then has samples, so its labels can be read from them."""
    async with (
        RecordingUpstream.start(echo()) as db,
        serve(tmp_path, {"db": db.url, "gateway": f"http://127.0.0.1:{_closed_port()}"}) as gateway,
    ):
        assert (await gateway.request("/", host="db.do")).status == 200
        assert (await gateway.request("/", host="nowhere.example")).status == 404
        assert (await gateway.request("/", host="auth.do")).status == 404
        assert (await gateway.request("/", host="gateway.do")).status == 502
        assert (await gateway.request("/health", host="localhost")).status == 200
        response = await get_admin(gateway.running, "/metrics")
    assert response.status == 200, response.body
    return response.body.decode()


def _families(text: str) -> list[Family]:
    families = []
    for family in text_string_to_metric_families(text):
        assert family.samples, f"{family.name} has no sample: the traffic must produce one"
        labels = frozenset(key for s in family.samples for key in s.labels if key != "le")
        name = family.name + "_total" if family.type == "counter" else family.name
        families.append(Family(name, family.type, labels))
    return families


def _exported(text: str) -> Exported:
    exported: dict[str, frozenset[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exported[sample.name] = exported.get(sample.name, frozenset()) | frozenset(
                sample.labels
            )
    return exported


# --- Known label values ----------------------------------------------------------------------


def _upstream_reasons() -> frozenset[str]:
    def codes(cls: type[UpstreamFailure]) -> Iterator[str]:
        yield cls.code
        for subclass in cls.__subclasses__():
            yield from codes(subclass)

    return frozenset(codes(UpstreamFailure))


def _buckets(bounds: tuple[float, ...]) -> frozenset[str]:
    return frozenset(repr(bound) for bound in bounds) | {"+Inf"}


KNOWN_VALUES: Final[Mapping[tuple[str | None, str], frozenset[str]]] = {
    (None, "outcome"): frozenset(outcomes.NAMES),
    (None, "status_class"): frozenset(_STATUS_LABELS),
    (None, "reason"): _upstream_reasons(),
    (None, "state"): frozenset({"idle", "busy"}),
    ("dispatcher_overhead_seconds_bucket", "le"): _buckets(OVERHEAD_BUCKETS),
    ("dispatcher_request_duration_seconds_bucket", "le"): _buckets(DURATION_BUCKETS),
}


def _known_values(metric: str, label: str) -> frozenset[str] | None:
    return KNOWN_VALUES.get((metric, label), KNOWN_VALUES.get((None, label)))


# --- PromQL, read closely enough to name its metrics and labels -------------------------------


@dataclass(frozen=True, slots=True)
class Matcher:
    metric: str
    label: str
    operator: str
    value: str


@dataclass(frozen=True, slots=True)
class Grouping:
    """``by (labels)`` and the like, with the metrics whose labels it must find."""

    clause: str
    labels: tuple[str, ...]
    metrics: frozenset[str]


@dataclass(frozen=True, slots=True)
class Query:
    text: str
    metrics: frozenset[str]
    matchers: tuple[Matcher, ...]
    groupings: tuple[Grouping, ...]


def parse_query(text: str) -> Query:
    for variable, value in GRAFANA_VARIABLES.items():
        text = text.replace(variable, value)
    matchers = tuple(_matchers(text))
    # Keep each selector's metric name; its matchers are read already.
    plain = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", text)
    metrics = _metric_names(plain, text)
    groupings = tuple(_groupings(plain, text, metrics))
    assert metrics, f"no metric in {text!r}"
    return Query(text, metrics, matchers, groupings)


def _matchers(text: str) -> Iterator[Matcher]:
    for selector in _SELECTOR.finditer(text):
        metric, body = selector.group(1), selector.group(2)
        assert metric, f"a selector without a metric name in {text!r}"
        consumed = 0
        for found in _MATCHER.finditer(body):
            assert found.start() == consumed, f"cannot read {body!r} in {text!r}"
            consumed = found.end()
            yield Matcher(metric, found.group(1), found.group(2), found.group(3))
        assert consumed == len(body), f"cannot read {body!r} in {text!r}"


def _metric_names(plain: str, text: str) -> frozenset[str]:
    bare = _NUMBER.sub(" ", _STRING.sub(" ", _RANGE.sub(" ", _GROUPING.sub(" ", plain))))
    names = set()
    for word in _IDENTIFIER.finditer(bare):
        if bare[word.end() :].lstrip().startswith("("):
            assert word.group() in FUNCTIONS, f"unknown function {word.group()!r} in {text!r}"
        elif word.group() not in OPERATOR_WORDS:
            names.add(word.group())
    return frozenset(names)


def _groupings(plain: str, text: str, metrics: frozenset[str]) -> Iterator[Grouping]:
    for found in _GROUPING.finditer(plain):
        clause = found.group(1)
        labels = tuple(label.strip() for label in found.group(2).split(",") if label.strip())
        if clause in ("by", "without"):
            argument = _argument_after(plain, found.end(), text)
            # `a and on (instance) b` keeps a's series and labels: b only filters them.
            kept = _FILTER.split(argument, maxsplit=1)[0]
            yield Grouping(clause, labels, _metric_names(kept, text))
        else:
            yield Grouping(clause, labels, metrics)


def _argument_after(plain: str, start: int, text: str) -> str:
    """The parenthesized argument an aggregation's ``by (...)`` applies to."""
    rest = plain[start:].lstrip()
    assert rest.startswith("("), f"write `sum by (...) (...)`, the clause first, in {text!r}"
    depth = 0
    for index, char in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return rest[1:index]
    raise AssertionError(f"unbalanced parentheses in {text!r}")


def check_query(query: Query, exported: Exported) -> None:
    for metric in query.metrics:
        assert metric in exported, f"{metric} is not exported; in {query.text!r}"
    for matcher in query.matchers:
        _check_matcher(matcher, exported, query.text)
    for grouping in query.groupings:
        for label in grouping.labels:
            if label in TARGET_LABELS:
                continue
            for metric in grouping.metrics:
                assert label in exported[metric], (
                    f"{grouping.clause} ({label}): {metric} has no label {label!r} "
                    f"(it has {sorted(exported[metric])}); in {query.text!r}"
                )


def _check_matcher(matcher: Matcher, exported: Exported, text: str) -> None:
    metric, label = matcher.metric, matcher.label
    if label not in TARGET_LABELS:
        assert label in exported[metric], (
            f"{metric} has no label {label!r} (it has {sorted(exported[metric])}); in {text!r}"
        )
    known = _known_values(metric, label)
    if known is None:
        return
    values = matcher.value.split("|") if matcher.operator in ("=~", "!~") else [matcher.value]
    for value in values:
        assert value in known, f"{label}={value!r} never occurs (known: {sorted(known)}); {text!r}"


# --- Where the PromQL is ---------------------------------------------------------------------


def doc_queries(markdown: str) -> list[str]:
    """Every ```promql block, and the ``expr`` of every rule in a ```yaml block."""
    queries = []
    for language, body in _FENCE.findall(markdown):
        if language == "promql":
            queries.append(body.strip())
        elif language == "yaml":
            queries.extend(_rule_expressions(body))
    return queries


def _rule_expressions(yaml: str) -> Iterator[str]:
    lines = yaml.splitlines()
    for index, line in enumerate(lines):
        key, _, value = line.strip().partition(":")
        if key != "expr":
            continue
        if value.strip() not in ("|", "|-", ">", ">-"):
            yield value.strip()
            continue
        indent = len(line) - len(line.lstrip())
        block = []
        for following in lines[index + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            block.append(following)
        yield "\n".join(block).strip()


def dashboard_panels(dashboard: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    panels: list[Mapping[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", ()))  # inside a collapsed row
    return panels


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard_panels(dashboard) for target in panel["targets"]]


def _variable_sources(dashboard: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(metric, label) of every ``label_values(metric, label)`` template variable."""
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["definition"])
            assert found is not None, variable["definition"]
            yield found.group(1), found.group(2)


def _load_dashboard() -> Mapping[str, Any]:
    dashboard: Mapping[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


# --- The tests -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def markdown() -> str:
    return OPERATIONS.read_text()


async def test_promql_names_only_exported_metrics_and_their_labels(
    tmp_path: Path, markdown: str
) -> None:
    exported = _exported(await _scrape_after_traffic(tmp_path))
    in_doc = [parse_query(text) for text in doc_queries(markdown)]
    # Selectors in the prose (`dispatcher_upstream_connections{state="idle"}`) too.
    in_prose = [parse_query(span) for span in _CODE_SPAN.findall(markdown) if "{" in span]
    dashboard = _load_dashboard()
    in_dashboard = [parse_query(text) for text in dashboard_queries(dashboard)]
    for query in in_doc + in_prose + in_dashboard:
        check_query(query, exported)
    for metric, label in _variable_sources(dashboard):
        assert label in exported[metric], f"label_values({metric}, {label})"
    # The seed's four figures and the signs around them are all queried, in both places.
    needed = {
        "dispatcher_requests_total", "dispatcher_overhead_seconds_bucket",
        "dispatcher_request_duration_seconds_bucket", "dispatcher_requests_in_flight",
        "dispatcher_snapshot_age_seconds", "dispatcher_upstream_connections",
        "dispatcher_upstream_failures_total", "dispatcher_store_errors_total",
    }  # fmt: skip
    assert needed <= set().union(*(q.metrics for q in in_doc))
    assert needed <= set().union(*(q.metrics for q in in_dashboard))
    assert len(in_doc) >= 20, "the doc's queries were not found: did its code fences change?"


async def test_the_metrics_table_lists_exactly_what_is_exported(
    tmp_path: Path, markdown: str
) -> None:
    families = _families(await _scrape_after_traffic(tmp_path))
    documented = {}
    for row in _table_rows(markdown):
        name = row[0].strip("`")
        if name.startswith("dispatcher_"):
            labels = frozenset(re.findall(r"`(\w+)`", row[2]))
            documented[name] = Family(name, row[1], labels)
    assert documented == {family.name: family for family in families}
    # Any other metric named in the text is one of them, or one of a histogram's series.
    series = {f"{f.name}{suffix}" for f in families for suffix in ("", "_bucket", "_count", "_sum")}
    assert set(_METRIC_WORD.findall(markdown)) <= series


def test_the_dashboard_is_a_prometheus_dashboard_for_one_environment() -> None:
    dashboard = _load_dashboard()
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    datasource = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    environment = variables["environment"]
    assert environment["type"] == "query" and environment["datasource"] == datasource
    panels = dashboard_panels(dashboard)
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"] == datasource, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == datasource, panel["title"]
            assert re.search(r'environment=~?"\$environment"', target["expr"]), (
                f"{panel['title']}: {target['expr']} ignores the environment variable"
            )
    _assert_laid_out(panels)


def _assert_laid_out(panels: list[Mapping[str, Any]]) -> None:
    """Every panel inside the 24-column grid, none on top of another."""
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


@dataclass(frozen=True, slots=True)
class LimitRow:
    section: str
    key: str
    default: str
    exceeded: str
    anchor: str


def _table_rows(markdown: str) -> Iterator[list[str]]:
    for row in _TABLE_ROW.findall(markdown):
        yield [cell.strip() for cell in row.split("|")]


def _limit_rows(markdown: str) -> list[LimitRow]:
    rows = []
    for cells in _table_rows(markdown):
        found = re.fullmatch(r"`(limits|proxy)\.(\w+)`", cells[0])
        if found is not None:
            assert len(cells) == 4, cells
            rows.append(LimitRow(found.group(1), found.group(2), *cells[1:]))
    return rows


def _stated_default(text: str) -> float:
    found = _DEFAULT.match(text)
    assert found is not None, f"a default must start with its value: {text!r}"
    return float(found.group(1)) * _UNITS.get(found.group(2) or "", 1)


def test_every_limit_in_the_tables_has_the_default_settings_give_it(markdown: str) -> None:
    rows = _limit_rows(markdown)
    defaults = {"limits": Limits(), "proxy": ProxySettings()}
    keys = {"limits": _LIMIT_KEYS, "proxy": _PROXY_KEYS}
    for row in rows:
        assert row.key in keys[row.section], f"{row.section}.{row.key} is not a TOML key"
        actual = getattr(defaults[row.section], row.key)
        assert _stated_default(row.default) == actual, f"{row.section}.{row.key}: {row.default}"
        assert row.exceeded and row.anchor, f"{row.section}.{row.key} needs both columns"
    documented = {(row.section, row.key) for row in rows}
    assert len(documented) == len(rows), "a key is in the tables twice"
    # Every limit is there: a new one must be documented.
    assert {key for section, key in documented if section == "limits"} == set(_LIMIT_KEYS)
    assert {f.name for f in fields(Limits)} == set(_LIMIT_KEYS)
    proxy_limits = set(_PROXY_KEYS) - PROXY_SETTINGS_THAT_ARE_NOT_LIMITS
    assert {key for section, key in documented if section == "proxy"} == proxy_limits


def test_every_key_named_in_the_text_exists(markdown: str) -> None:
    keys = {"limits": _LIMIT_KEYS, "proxy": _PROXY_KEYS}
    for section, key in _CONFIG_KEY.findall(markdown):
        assert key in keys[section], f"{section}.{key} is not a TOML key"
