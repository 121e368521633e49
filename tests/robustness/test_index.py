"""Where each remaining item of ``shared/ROBUSTNESS.md``'s checklist is tested (items 1 to 35
are in ``test_checklist.py``; 37's second half, 38, 39 and 48 are the server layer's own,
in ``tests/ops``).

An item whose whole wording an existing test already proves lists that test and nothing
new; where the existing tests prove part of it, the tests of this directory add the rest
and are listed after them. ``test_every_indexed_test_exists`` imports every name below, so
the index fails as soon as one is renamed or deleted.

Item 36. Slowloris: hundreds of dribbling heads cut at the header deadline; others served.
    tests/server/test_protocol.py
        test_slowloris_is_cut_at_the_header_deadline
    tests/robustness/test_slow_clients.py
        test_slowloris_connections_are_cut_at_the_header_deadline_while_others_are_served

Item 37. Slow body, first half: a byte every more than the body idle timeout is a 408.
    tests/server/test_protocol.py
        test_stalled_body_is_408
    tests/robustness/test_slow_clients.py
        test_a_body_byte_every_more_than_the_idle_timeout_is_a_408

Item 40. Refused connect: a 502 at once; at most one retry, on another URL, any method;
never a retry once the request went upstream.
    tests/forwarding/test_upstream_faults.py
        test_a_refused_upstream_is_a_502_at_once
        test_nothing_is_retried_once_the_request_was_sent
    tests/forwarding/test_upstream.py
        test_a_refusing_url_is_skipped_and_the_request_retried_on_the_other
    tests/robustness/test_upstream_faults.py
        test_a_refused_connect_is_a_502_without_waiting_on_any_timer
        test_a_refused_connect_is_retried_at_most_once
        test_a_patch_that_reached_the_upstream_is_never_sent_again

Item 41. Black-holed SYN: a 504 at the connect timeout (5 s by default) within 10 %.
    tests/forwarding/test_upstream_faults.py
        test_a_black_holed_connect_is_a_504_at_the_connect_timeout
    tests/robustness/test_upstream_faults.py
        test_a_black_holed_connect_is_a_504_at_the_connect_timeout_within_10_percent

Item 42. No answer: a 504 at the response-header timeout, the connection closed, not
pooled; a stall mid-stream cut at the stream idle timeout.
    tests/forwarding/test_upstream_faults.py
        test_an_upstream_that_never_answers_is_a_504_at_the_header_timeout
        test_an_upstream_stalling_mid_body_is_cut_at_the_stream_idle_timeout

Item 43. Garbage status line, invalid header, close before the head: exactly a 502, the
connection discarded.
    tests/forwarding/test_upstream_faults.py
        test_a_malformed_answer_is_a_502_or_an_abort_and_the_pool_stays_clean
        test_an_unacceptable_head_is_a_502
    tests/robustness/test_upstream_faults.py
        test_an_upstream_head_that_never_comes_whole_is_exactly_a_502

Item 44. A body cut after the 200: the client connection aborted, logged as a cut.
    tests/forwarding/test_upstream_faults.py
        test_an_upstream_closing_mid_response_aborts_the_client_connection
    tests/forwarding/test_upstream.py
        test_a_close_delimited_response_cut_by_a_reset_never_looks_complete
    tests/robustness/test_upstream_faults.py
        test_a_body_cut_after_the_200_aborts_the_client_and_is_logged

Item 45. An in-process app raising: a 500 before its response starts, an abort after; the
dispatcher serves on.
    tests/server/test_asgi.py
        test_app_failing_before_any_byte_is_500_with_an_error_id
        test_app_raising_mid_body_aborts_the_connection
    tests/test_dispatch.py
        test_raising_worker_leaves_the_dispatcher_serving

Item 46. A stale pooled connection: an idempotent request retried on a fresh one; a POST
gets a 502, never a duplicate.
    tests/forwarding/test_upstream_faults.py
        test_an_idempotent_request_on_a_stale_connection_is_retried
        test_a_post_on_a_stale_connection_is_a_502_never_a_duplicate
    tests/forwarding/test_upstream.py
        test_nginx_closing_idle_keep_alive_connections_is_not_an_error

Item 47. WebSocket: 1 MiB echo, ping/pong, close code 4001, an upstream 403 as it is;
h2c never forwarded.
    tests/forwarding/test_upstream.py
        test_websocket_messages_flow_both_ways
        test_a_close_code_from_the_upstream_reaches_the_client
        test_an_upstream_refusing_the_upgrade_reaches_the_client_as_is
        test_h2c_upgrade_is_served_as_plain_http_and_never_forwarded

Item 49. A client leaving a slow upstream: the upstream request cancelled within 1 s,
logged and counted as 499.
    tests/forwarding/test_upstream_faults.py
        test_a_client_that_disconnects_cancels_the_upstream_request
    tests/ops/test_metrics.py
        test_gauges_show_in_flight_requests_snapshot_and_upstream_pool
    tests/robustness/test_upstream_faults.py
        test_a_client_leaving_a_slow_upstream_cancels_it_and_is_a_499

Item 50. Admin auth: 401 with WWW-Authenticate, 403 for a read-only token on a write,
429 after 10 failures a minute, each audit-logged without the token.
    tests/admin/test_api.py
        test_a_missing_or_wrong_token_is_401
        test_a_token_without_the_scope_or_namespace_is_403
        test_too_many_failures_from_one_address_are_429
        test_no_token_value_reaches_a_log_line_or_an_error_body
    tests/admin/test_auth.py
        test_the_limiter_blocks_after_ten_failures_for_a_minute
    tests/robustness/test_admin_and_config.py
        test_an_admin_refusal_is_audit_logged_without_the_token

Item 51. Admin on loopback by default; no non-loopback bind without a token; a generated
256-bit token, mode 0600; constant-time comparison of fixed-length digests.
    tests/admin/test_auth.py
        test_admin_defaults_to_loopback_8788
        test_a_non_loopback_admin_listener_needs_a_token
        test_a_generated_token_file_is_private_and_reused
        test_a_token_file_others_can_read_is_refused
    tests/robustness/test_admin_and_config.py
        test_without_tokens_serve_binds_admin_to_loopback_with_a_generated_token
        test_a_non_loopback_admin_bind_without_a_token_does_not_start
        test_tokens_are_compared_as_fixed_length_digests

Item 52. The admin API through the public listener (Host, path tricks, forwarded
headers): 404/400, never reached.
    tests/robustness/test_checklist.py
        test_the_admin_api_is_not_reachable_on_the_public_listener
    tests/admin/test_end_to_end.py
        test_the_admin_api_is_not_reachable_through_the_main_listener
    tests/robustness/test_admin_and_config.py
        test_the_public_listener_never_reaches_the_admin_api

Item 53. Invalid deploys: a 4xx with the reason, nothing written, traffic unaffected;
duplicate routes refused when the table is built; an invalid config: no start, no
reload; ``check`` validates without serving.
    tests/admin/test_api.py
        test_bad_input_is_refused_and_writes_nothing
    tests/test_routing.py
        test_conflicting_routes_name_both
    tests/test_cli.py
        test_check_an_invalid_file_names_file_and_key
        test_unbound_environment_exits_2_before_serving
    tests/ops/test_processes.py
        test_sighup_reloads_the_routes_and_a_bad_file_keeps_the_old_ones
    tests/robustness/test_admin_and_config.py
        test_an_invalid_deploy_says_why_writes_nothing_and_traffic_goes_on
        test_every_spelling_of_the_metadata_address_is_refused
        test_an_unparseable_config_stops_serve_before_it_listens
        test_check_validates_without_opening_the_store_or_a_listener

Item S1. SQLite write lock held elsewhere: the deploy is a 503 past the store timeout;
routed requests served meanwhile, their latency unchanged.
    tests/test_faults.py
        test_a_write_to_a_locked_sqlite_store_is_503_past_the_bound
        test_a_write_waits_out_a_short_sqlite_lock
    tests/robustness/test_storage_faults.py
        test_a_held_sqlite_lock_leaves_routed_latency_alone

Item S2. A corrupted SQLite file: the start is refused with a clear error.
    tests/store/test_contract.py
        test_sqlite_refuses_a_damaged_file_at_open
    tests/robustness/test_storage_faults.py
        test_a_corrupted_registry_stops_the_start
        test_serve_on_a_corrupted_registry_exits_1_before_it_listens

Item S3. SIGKILL in the middle of a deploy: the registry wholly old or wholly new.
    tests/store/test_contract.py
        test_sqlite_keeps_an_acknowledged_deploy_after_kill_9
    tests/robustness/test_storage_faults.py
        test_sigkill_mid_deploy_leaves_the_registry_wholly_old_or_wholly_new

Item S4. A write the filesystem refuses: a 503, nothing written, traffic unaffected.
    tests/robustness/test_storage_faults.py
        test_a_write_the_filesystem_refuses_is_a_503_and_changes_nothing

Item S5. PostgreSQL down or a deploy's backend terminated: served from the snapshot,
/ready degraded, the deploy a 503 and rolled back, a retry succeeds; a start without
PostgreSQL fails fast.
    tests/test_faults.py
        test_postgres_unreachable_keeps_serving_degrades_and_recovers
    tests/store/test_contract.py
        test_postgres_a_deploy_killed_mid_transaction_writes_nothing
    tests/robustness/test_storage_faults.py
        test_a_deploy_whose_backend_is_terminated_is_a_503_then_a_retry_succeeds
        test_postgres_unreachable_at_startup_fails_fast

Item S6. Two nodes deploying the same worker at once: serialized, and both converge.
    tests/store/test_contract.py
        test_concurrent_deploys_of_one_worker_get_distinct_versions
    tests/admin/test_api.py
        test_twenty_concurrent_deploys_are_serialized
    tests/robustness/test_storage_faults.py
        test_two_nodes_deploying_one_worker_at_once_serialize_and_converge
"""

from __future__ import annotations

import importlib
import inspect
from typing import Final

import pytest

ITEMS: Final = (
    *(str(n) for n in (36, 37, 40, 41, 42, 43, 44, 45, 46, 47, 49, 50, 51, 52, 53)),
    *(f"S{n}" for n in range(1, 7)),
)
"""The checklist items this index covers."""

Entry = tuple[str, str, str]
"""(item, module path, test function name)."""


def parse_index(text: str) -> list[Entry]:
    """The (item, module, test) rows of the docstring above."""
    entries: list[Entry] = []
    item = module = ""
    for line in text.splitlines():
        if line.startswith("Item "):
            item = line.removeprefix("Item ").split(".", 1)[0]
        elif line.startswith("    tests/"):
            module = line.strip()
        elif line.startswith("        test_"):
            entries.append((item, module, line.strip()))
    return entries


INDEX: Final = parse_index(__doc__ or "")


def test_the_index_covers_every_item_once() -> None:
    indexed = [line.removeprefix("Item ").split(".", 1)[0] for line in (__doc__ or "").splitlines()]
    headings = [item for item in indexed if item in ITEMS]
    assert headings == list(ITEMS)  # each once, in the checklist's order
    assert {item for item, _, _ in INDEX} == set(ITEMS)


@pytest.mark.parametrize(("item", "module", "name"), INDEX, ids=[f"{i}-{n}" for i, _, n in INDEX])
def test_every_indexed_test_exists(item: str, module: str, name: str) -> None:
    dotted = module.removesuffix(".py").replace("/", ".")
    found = getattr(importlib.import_module(dotted), name, None)
    assert found is not None, f"item {item}: {module} has no {name} (renamed or deleted?)"
    assert inspect.isfunction(found) and found.__module__ == dotted, (item, module, name)
